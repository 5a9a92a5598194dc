"""DeepSpeed ZeRO-2 / ZeRO-3 through accelerate's built-in plugin, with the built-in plugins.

Runs where deepspeed is installed (the test extra installs it; it is no dependency of cogvx-ext).
One process and two ranks over gloo: the ranks run with tests/deepspeed_on_cpu on their
PYTHONPATH, which gives accelerate the process-group backend it does not pick on a machine without
an accelerator (README, "DeepSpeed"). benchmarks/deepspeed_check.py runs the same on GPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_e2e import MIXED, RECORDER, by_event, events_of, mixed_dataset, ok, script_args, training_shapes

pytest.importorskip("deepspeed")
CPU_SHIM = Path(__file__).parent / "deepspeed_on_cpu"
pytestmark = pytest.mark.slow


def accelerate_config(path, stage: int, processes: int = 1):
    if stage == 3:
        # The README's config, written as a DeepSpeed file for one setting: real LoRA weights (rank
        # 64 x 3072) are above ZeRO-3's persistence threshold and partitioned, the tiny model's are
        # below it and would stay whole on every rank; a threshold of 0 partitions them as at size.
        zero = {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,
            "stage3_gather_16bit_weights_on_model_save": True,
        }
        settings = {
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": 1,
            "zero_optimization": zero,
        }
        ds_file = path.with_suffix(".json")
        ds_file.write_text(json.dumps(settings), encoding="utf-8")
        deepspeed = f"  deepspeed_config_file: {ds_file}\n  zero3_init_flag: true\n"
    else:
        deepspeed = (
            f"  zero_stage: {stage}\n"
            "  gradient_accumulation_steps: 1\n"
            "  offload_optimizer_device: none\n"
            "  offload_param_device: none\n"
            "  zero3_init_flag: false\n"
            "mixed_precision: 'no'\n"
        )
    path.write_text(
        "compute_environment: LOCAL_MACHINE\n"
        "distributed_type: DEEPSPEED\n"
        "deepspeed_config:\n"
        f"{deepspeed}"
        "num_machines: 1\n"
        f"num_processes: {processes}\n"
        "machine_rank: 0\n"
        "use_cpu: false\n",
        encoding="utf-8",
    )
    return path


def launch(config, script, args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COGVX_EXT", "ACCELERATE_"))}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    # accelerate on a CPU-only machine gives DeepSpeed's ranks no process group (see the shim).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CPU_SHIM), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), str(script)]
    return subprocess.run([*command, *map(str, args)], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_trains_saves_resumes_at_the_exact_batch(stage, processes, tiny_models, t2v_trainer, tmp_path):
    import torch
    from diffusers import CogVideoXPipeline
    from safetensors.torch import load_file

    from cogvx_ext.inference import prepare_pipeline

    config = accelerate_config(tmp_path / f"zero{stage}.yaml", stage, processes)
    data = mixed_dataset(tmp_path / "data")
    plugins = ["--plugins", f"{RECORDER},aspect_bucket,rope_rescale"]
    whole = tmp_path / "whole"
    # Every rank prunes old checkpoints under DeepSpeed: two ranks remove the same one at once.
    pruned = ["--checkpointing_steps", 1, "--checkpoints_total_limit", 1]
    ok(launch(config, t2v_trainer, script_args(tiny_models["5b"], data, whole, *plugins, *pruned,
                                               "--recorder_out", whole / "ev", steps=5)))  # fmt: skip
    assert sorted(p.name for p in whole.glob("checkpoint-*")) == ["checkpoint-5"]
    part = tmp_path / "part"
    first = [*plugins, "--recorder_out", part / "ev1", "--checkpointing_steps", 3]
    ok(launch(config, t2v_trainer, script_args(tiny_models["5b"], data, part, *first, steps=3)))
    assert (part / "checkpoint-3" / "pytorch_model").is_dir()  # DeepSpeed's own checkpoint
    second = [*plugins, "--recorder_out", part / "ev2", "--resume_from_checkpoint", "latest"]
    ok(launch(config, t2v_trainer, script_args(tiny_models["5b"], data, part, *second, steps=5)))
    trained = set()
    for rank in range(processes):
        expected = training_shapes(events_of(whole / "ev", rank))
        resumed = training_shapes(events_of(part / "ev1", rank)) + training_shapes(
            events_of(part / "ev2", rank)
        )
        assert len(expected) == 5 and resumed == expected, f"rank {rank}"
        assert by_event(events_of(part / "ev2", rank), "load_state_dict")[0]["state"] == {"steps_seen": 2}
        trained |= {tuple(shape) for shape in expected}
    # Every rank trains its own clips at their own shapes: together, every clip of the data.
    assert len(trained) == len(MIXED)

    # The LoRA is whole (ZeRO-3 partitions parameters) and loads with prepare_pipeline.
    for lora_file in (
        whole / "pytorch_lora_weights.safetensors",
        part / "checkpoint-3" / "pytorch_lora_weights.safetensors",
    ):
        lora = load_file(lora_file)
        assert lora and all(t.numel() > 0 for t in lora.values()), lora_file
        assert any(t.abs().sum() > 0 for name, t in lora.items() if "lora_B" in name), lora_file  # trained
    pipe = prepare_pipeline(CogVideoXPipeline.from_pretrained(tiny_models["5b"]), whole)
    loaded = {n: p for n, p in pipe.transformer.named_parameters() if "lora_B" in n}
    assert loaded and any(p.abs().sum() > 0 for p in loaded.values())
    assert torch.is_tensor(next(iter(loaded.values())))


def test_zero3_two_ranks_validate_after_training_and_refuse_to_wait_during_it(
    tiny_models, t2v_trainer, tmp_path
):
    config = accelerate_config(tmp_path / "zero3.yaml", 3, processes=2)
    data = mixed_dataset(tmp_path / "data")
    plugins = ["--plugins", f"{RECORDER},aspect_bucket,rope_rescale", "--recorder_fast_validation"]
    validation = ["--validation_prompt", "a test", "--num_validation_videos", 1]

    # During training the main process alone would run the partitioned transformer: one line.
    during = tmp_path / "during"
    result = launch(config, t2v_trainer, script_args(tiny_models["5b"], data, during, *plugins, *validation,
                                                     "--validation_epochs", 1, "--recorder_out", during / "ev"))  # fmt: skip
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "would wait forever" in line]
    assert len(lines) == 1 and lines[0].startswith(
        "cogvx-ext: validation during training under DeepSpeed ZeRO-3"
    )
    assert "with 2 processes" in lines[0]

    # After training the final validation loads the LoRA into a whole model (its T5 whole too).
    after = tmp_path / "after"
    ok(launch(config, t2v_trainer, script_args(tiny_models["5b"], data, after, *plugins, *validation,
                                               "--validation_epochs", 100, "--recorder_out", after / "ev")))  # fmt: skip
    assert len(by_event(events_of(after / "ev"), "validation_args")) == 1


@pytest.mark.parametrize("stage", [2, 3])
def test_i2v_zero_two_ranks_train_resume_and_save_a_whole_lora(stage, tiny_models, i2v_trainer, tmp_path):
    from safetensors.torch import load_file

    config = accelerate_config(tmp_path / f"zero{stage}.yaml", stage, processes=2)
    data = mixed_dataset(tmp_path / "data")
    plugins = ["--plugins", f"{RECORDER},aspect_bucket,rope_rescale,posemb_adapt"]
    model, out = tiny_models["5b-I2V"], tmp_path / "out"
    first = [*plugins, "--recorder_out", out / "ev1", "--checkpointing_steps", 2]
    ok(launch(config, i2v_trainer, script_args(model, data, out, *first, steps=2)))
    second = [*plugins, "--recorder_out", out / "ev2", "--resume_from_checkpoint", "latest"]
    ok(launch(config, i2v_trainer, script_args(model, data, out, *second, steps=4)))
    for rank in (0, 1):
        shapes = training_shapes(events_of(out / "ev1", rank)) + training_shapes(events_of(out / "ev2", rank))
        assert len(shapes) == 4 and len({tuple(s) for s in shapes}) > 1, f"rank {rank}: {shapes}"
    lora = load_file(out / "pytorch_lora_weights.safetensors")
    assert lora and all(t.numel() > 0 for t in lora.values())
    assert any(t.abs().sum() > 0 for name, t in lora.items() if "lora_B" in name)
