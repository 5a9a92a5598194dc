"""The run's context (the hooks' ``run``), the order ``--plugins`` registers in, and
``cogvx_train_end``: through real training runs and the real ``cogvx-ext plan``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tests_support import HERE, ok, training_args

from cogvx_ext.cli.plan.command import run_plan
from cogvx_ext.testing import write_dataset

PROBE = f"{HERE / 'plugins' / 'run_probe.py'}:RunProbe"
RECORDER = f"{HERE / 'plugins' / 'recorder.py'}:Recorder"
CLIPS = [(256, 144, 17), (144, 256, 17)]


def probed(directory: Path, rank: int = 0) -> list[dict]:
    path = directory / f"probe-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def calls(lines: list[dict], hook: str) -> list[dict]:
    return [line for line in lines if line["hook"] == hook]


script_args = training_args


# Hooks a bucketed run with checkpoints and a final validation fires (every one takes `run`).
TRAINING_HOOKS = {
    "cogvx_configure", "cogvx_provides", "cogvx_requires", "cogvx_memory_check", "cogvx_accelerator_ready",
    "cogvx_transformer_loaded", "cogvx_vae_loaded", "cogvx_probe", "cogvx_clip_targets", "cogvx_load_pixels",
    "cogvx_encode_sample", "cogvx_batch_sampler", "cogvx_prompt_embeddings", "cogvx_transformer_forward",
    "cogvx_rotary_embedding", "cogvx_transformer_output", "cogvx_step_end", "cogvx_state_dict",
    "cogvx_pipeline_loaded", "cogvx_validation_args", "cogvx_lora_metadata", "cogvx_train_end",
}  # fmt: skip


@pytest.mark.slow
def test_every_hook_gets_the_one_run_and_the_schedule_is_asked_once(
    tiny_models, t2v_trainer, train, tmp_path
):
    data = write_dataset(tmp_path / "data", CLIPS, prompts=["a", "b"])
    out = tmp_path / "out"
    common = [
        "--plugins", f"aspect_bucket,rope_rescale,{PROBE}", "--checkpointing_steps", 1,
        "--validation_prompt", "a test", "--num_validation_videos", 1, "--run_probe_fast_validation",
    ]  # fmt: skip
    ok(
        train(
            t2v_trainer,
            script_args(tiny_models["5b"], data, out, *common, "--run_probe_out", tmp_path / "first"),
        )
    )
    resumed = ["--resume_from_checkpoint", "latest", "--run_probe_out", tmp_path / "second"]
    ok(train(t2v_trainer, script_args(tiny_models["5b"], data, out, *common, *resumed, steps=3)))

    for probe, hooks, step in (
        ("first", TRAINING_HOOKS, 2),
        ("second", TRAINING_HOOKS | {"cogvx_load_state_dict"}, 3),
    ):
        lines = probed(tmp_path / probe)
        with_run = [line for line in lines if "run" in line]
        assert {line["hook"] for line in with_run} >= hooks, hooks - {line["hook"] for line in with_run}
        # One RunContext for the whole run, in every hook.
        assert {(line["run"], line["is_context"], line["command"], line["rank"]) for line in with_run} == {
            (with_run[0]["run"], True, "train", 0)
        }
        assert len(calls(lines, "cogvx_stages")) == 1  # asked once, kept as run.stages
        assert all(line["stages_as_kept"] for line in calls(lines, "cogvx_batch_sampler"))
        (end,) = calls(lines, "cogvx_train_end")
        assert end["lora"] == str(out / "pytorch_lora_weights.safetensors") and end["lora_saved"]
        assert end["record_saved"] and end["same_args"] and end["output_dir"] == str(out)
        assert (end["step"], end["checkpoint"]) == (step, str(out / f"checkpoint-{step}"))


@pytest.mark.slow
def test_a_failed_run_ends_without_train_end(tiny_models, t2v_trainer, train, tmp_path):
    data = write_dataset(tmp_path / "data", CLIPS, prompts=["a", "b"])
    args = script_args(
        tiny_models["5b"], data, tmp_path / "out", "--plugins", f"aspect_bucket,rope_rescale,{RECORDER},{PROBE}",
        "--recorder_fail_at_step", 1, "--run_probe_out", tmp_path / "probe",
    )  # fmt: skip
    result = train(t2v_trainer, args)
    assert result.returncode != 0 and "failing on purpose" in result.stderr
    lines = probed(tmp_path / "probe")
    assert calls(lines, "cogvx_exception") and not calls(lines, "cogvx_train_end")


@pytest.mark.slow
def test_train_end_fires_on_every_process_after_the_final_save(tiny_models, t2v_trainer, train, tmp_path):
    data = write_dataset(tmp_path / "data", CLIPS * 2, prompts=["a", "b", "c", "d"])
    out = tmp_path / "out"
    # The main process's final save takes 2 s more (its cogvx_lora_metadata): a process that
    # ended without waiting for it would find the record beside the LoRA missing.
    args = script_args(
        tiny_models["5b"], data, out, "--plugins", f"aspect_bucket,rope_rescale,{PROBE}",
        "--run_probe_out", tmp_path / "probe", "--run_probe_slow_metadata",
    )  # fmt: skip
    ok(train(t2v_trainer, args, nproc=2))
    for rank in (0, 1):
        lines = probed(tmp_path / "probe", rank)
        (end,) = calls(lines, "cogvx_train_end")
        assert (end["rank"], end["command"], end["step"], end["checkpoint"]) == (rank, "train", 2, None)
        assert end["lora_saved"] and end["record_saved"], (rank, end)
        assert len(calls(lines, "cogvx_stages")) == 1


def plan_args(data, *extra):
    return [
        "--instance_data_root", str(data), "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--height", "96", "--width", "160", "--max_num_frames", "9", *extra,
    ]  # fmt: skip


def test_plan_asks_the_schedule_once_and_hands_every_hook_its_run(tmp_path):
    data = write_dataset(tmp_path / "data", CLIPS, prompts=["a", "b"])
    probe = tmp_path / "probe"
    code = run_plan(
        plan_args(
            data,
            "--model",
            "5b",
            "--plugins",
            f"aspect_bucket,rope_rescale,{PROBE}",
            "--run_probe_out",
            str(probe),
        )
    )
    assert code == 0
    lines = probed(probe)
    assert len(calls(lines, "cogvx_stages")) == 1
    assert {line["command"] for line in lines if "run" in line} == {"plan"}
    assert len({line["run"] for line in lines if "run" in line}) == 1
    assert calls(lines, "cogvx_batch_sampler")[0]["stages_as_kept"]


SCHEDULE = """
from cogvx_ext.api import Stage, hookimpl


@hookimpl
def cogvx_stages():
    return [Stage(start_step=0, area={area})]
"""


@pytest.mark.parametrize(
    "env,flags,winner",
    [
        ("", ["order_a.py,order_b.py"], "b"),
        ("", ["order_b.py,order_a.py"], "a"),
        ("", ["order_b.py", "order_a.py"], "a"),  # several flags: in turn
        ("order_b.py", ["order_a.py"], "a"),  # the environment comes first
        ("", ["order_a.py,order_b.py,order_a.py"], "b"),  # a name given twice counts where it first appears
    ],
)
def test_of_two_plugins_answering_a_firstresult_hook_the_one_named_last_wins(
    tmp_path, monkeypatch, env, flags, winner
):
    areas = {"a": 96 * 160, "b": 64 * 112}
    # Plugin files are imported as modules by their name: a name of their own for each case.
    case = re.sub(r"\W", "_", tmp_path.name)
    for name, area in areas.items():
        (tmp_path / f"order_{name}_{case}.py").write_text(SCHEDULE.format(area=area))

    def item(text):
        return ",".join(f"./{name.removesuffix('.py')}_{case}.py" for name in text.split(","))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COGVX_EXT_PLUGINS", item(env) if env else "")
    data = write_dataset(tmp_path / "data", CLIPS[:1], prompts=["a"])
    plugins = [x for flag in flags for x in ("--plugins", item(flag))]
    assert run_plan(plan_args(data, "--model", "2b", *plugins, "--json", "plan.json")) == 0
    (stage,) = json.loads((tmp_path / "plan.json").read_text())["stages"]
    assert stage["area"] == areas[winner]
