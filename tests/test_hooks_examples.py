"""Every hook's example plugin (``examples/hooks/``, shown in hooks.md) runs and does what it says.

The examples are loaded with ``--plugins FILE`` as a user would, in a few runs: the echo trainer
for the set-up hooks (a second each), two training runs of the tiny trainer (or of the script in
COGVX_EXT_TRAINER: a bucketed run with validation and a checkpoint per step, then its resume),
one on clips saved as NumPy arrays, ``cogvx-ext plan`` for a stage schedule and ``cogvx-ext cache
prune``. ``tests/plugins/recorder.py`` rides along to report what the run did. Each hook has a
check in ``CHECKS`` of its example's effect in those runs; a hook without one fails
``test_every_hook_has_an_example_and_a_check``. A run is made when a check first needs it.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import _run_trainer
from tests_support import HERE, ok, read_events, training_args

from cogvx_ext.plugin import hookdoc
from cogvx_ext.testing import write_dataset

ROOT = HERE.parent
EXAMPLES = hookdoc.read_examples(ROOT / hookdoc.EXAMPLES)
ECHO = HERE / "trainers" / "echo_trainer.py"
RECORDER = f"{HERE / 'plugins' / 'recorder.py'}:Recorder"
LOG_SHAPES_EVERY = 3  # the flag of the cogvx_add_arguments example, as the general run sets it


def example(hook: str) -> hookdoc.Example:
    found = hookdoc.example_for(hook, EXAMPLES) if hook.startswith("cogvx_") else EXAMPLES[hook]
    assert found is not None, f"no example implements {hook}"
    return found


def plugins(*hooks: str, builtins: str = "aspect_bucket,rope_rescale", recorder: bool = False) -> str:
    items = [*filter(None, builtins.split(",")), *([RECORDER] if recorder else [])]
    for hook in hooks:
        if example(hook).plugin_item not in items:
            items.append(example(hook).plugin_item)
    return ",".join(items)


def example_module(hook: str):
    """The example file imported on its own, to ask it what it does."""
    path = example(hook).path
    spec = importlib.util.spec_from_file_location(f"hooks_example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_args = training_args


def latent_shape(target: list[int]) -> list[int]:
    width, height, frames = target
    return [(frames - 1) // 4 + 1, height // 8, width // 8]


class Runs:
    """The runs the checks look at, each made once, when first asked for."""

    def __init__(self, root: Path, models: dict[str, Path], trainer: Path):
        self.root = root
        self.model = models["5b"]
        self.trainer = trainer

    def echo(self, *args, env=None):
        return _run_trainer(ECHO, [*map(str, args)], env=env, timeout=120)

    # -- set-up hooks, on the echo trainer ---------------------------------------------------

    @functools.cached_property
    def help(self):
        return self.echo("--plugins", plugins("cogvx_add_arguments", builtins=""), "--help")

    @functools.cached_property
    def bad_flag(self):
        hooks = ("cogvx_add_arguments", "cogvx_configure")
        return self.echo("--plugins", plugins(*hooks, builtins=""), "--log_shapes_every", 0)

    @functools.cached_property
    def rope_needed(self):
        return self.echo(
            "--pretrained_model_name_or_path", self.model, "--plugins", plugins("cogvx_requires", builtins="")
        )

    @functools.cached_property
    def rope_provided(self):
        hooks = ("cogvx_requires", "cogvx_provides")
        return self.echo(
            "--pretrained_model_name_or_path", self.model, "--plugins", plugins(*hooks, builtins="")
        )

    @functools.cached_property
    def unknown_model(self):
        # No config on this machine and no download: setup (and model) come as None.
        env = {"HF_HOME": str(self.root / "empty_hf_home")}
        items = plugins("cogvx_memory_check", builtins="")
        return self.echo(
            "--pretrained_model_name_or_path", "someone/unknown-model", "--plugins", items, env=env
        )

    @functools.cached_property
    def too_big(self):
        # The released 5b's config ships with cogvx-ext: estimated before anything downloads or loads.
        data = write_dataset(self.root / "too_big_data", [(64, 48, 9)], prompts=["a"])
        args = train_args("THUDM/CogVideoX-5b", data, self.root / "too_big", height=480, width=720, frames=49)
        items = plugins("cogvx_memory_check", builtins="")
        env = {"HF_HOME": str(self.root / "empty_hf_home")}
        return _run_trainer(self.trainer, [*args, "--plugins", items], env=env)

    @functools.cached_property
    def failing(self):
        return self.echo("--plugins", plugins("cogvx_exception", builtins=""), "--fail")

    # -- training ----------------------------------------------------------------------------

    GENERAL = [
        "first_plugin.py", "cogvx_add_arguments", "cogvx_configure", "cogvx_memory_check",
        "cogvx_accelerator_ready", "cogvx_transformer_loaded", "cogvx_vae_loaded", "cogvx_encode_sample",
        "cogvx_batch_sampler", "cogvx_prompt_embeddings", "cogvx_transformer_forward",
        "cogvx_rotary_embedding", "cogvx_snr_shift", "cogvx_transformer_output", "cogvx_step_end", "cogvx_state_dict",
        "cogvx_pipeline_loaded", "cogvx_validation_args", "cogvx_lora_metadata", "cogvx_training_settings",
        "cogvx_train_end",
    ]  # fmt: skip

    @functools.cached_property
    def general_data(self) -> Path:
        # Two clips of 9 frames (landscape, portrait) and a shorter one: three sizes of sample.
        clips = [(256, 144, 17), (144, 256, 17), (256, 144, 5)]
        return write_dataset(self.root / "data", clips, prompts=["a", "b", "c"])

    def general_args(self, steps, *extra):
        out = self.root / "out"
        flags = ["--plugins", plugins(*self.GENERAL, recorder=True), "--recorder_out", out / f"events{steps}",
                 "--log_shapes_every", LOG_SHAPES_EVERY, "--checkpointing_steps", 1]  # fmt: skip
        return train_args(self.model, self.general_data, out, *flags, *extra, steps=steps)

    @functools.cached_property
    def general(self):
        validation = ["--validation_prompt", "a test", "--num_validation_videos", 1]
        return ok(_run_trainer(self.trainer, self.general_args(3, *validation)))

    @functools.cached_property
    def resumed(self):
        assert self.general.returncode == 0
        # Zero every latent the cogvx_encode_sample example kept: what the resumed run trains on
        # then says whether it read them.
        for path in self.latent_files():
            parameters = safetensors.torch.load_file(path)["parameters"]
            safetensors.torch.save_file({"parameters": torch.zeros_like(parameters)}, path)
        return ok(_run_trainer(self.trainer, self.general_args(4, "--resume_from_checkpoint", "latest")))

    @functools.cached_property
    def resumed_with_other_settings(self):
        assert self.general.returncode == 0
        return _run_trainer(
            self.trainer,
            self.general_args(4, "--resume_from_checkpoint", "checkpoint-2", "--caption_dropout", "0.5"),
        )

    def latent_files(self) -> list[Path]:
        return sorted((self.root / "out" / "latents").glob("*.safetensors"))

    def events(self, steps: int) -> list[dict]:
        (events,) = read_events(self.root / "out" / f"events{steps}").values()
        return events

    @functools.cached_property
    def npy(self):
        """Clips saved as ``[F, 3, H, W]`` arrays in [-1, 1], and one listed file that is missing."""
        data = self.root / "npy"
        (data / "videos").mkdir(parents=True)
        rng = np.random.default_rng(0)
        names = []
        for i, (height, width) in enumerate([(112, 208), (208, 112)]):
            names.append(f"videos/clip{i}.npy")
            np.save(data / names[-1], rng.uniform(-1, 1, size=(9, 3, height, width)).astype(np.float32))
        names.append("videos/missing.npy")
        (data / "videos.txt").write_text("\n".join(names) + "\n")
        (data / "prompts.txt").write_text("\n".join(f"clip {i}" for i in range(len(names))) + "\n")
        hooks = ("cogvx_probe", "cogvx_clip_targets", "cogvx_load_pixels", "cogvx_clips_skipped")
        out = self.root / "out_npy"
        flags = ["--plugins", plugins(*hooks, recorder=True), "--recorder_out", out / "events"]
        return ok(
            _run_trainer(self.trainer, train_args(self.model, data, out, *flags, height=128, width=128))
        )

    def npy_events(self) -> list[dict]:
        assert self.npy.returncode == 0
        (events,) = read_events(self.root / "out_npy" / "events").values()
        return events

    # -- the commands ------------------------------------------------------------------------

    def command(self, *args):
        import subprocess

        return subprocess.run(
            [sys.executable, "-m", "cogvx_ext", *map(str, args)], capture_output=True, text=True, timeout=300
        )

    @functools.cached_property
    def plan(self):
        data = write_dataset(self.root / "big", [(1024, 576, 9)], prompts=["a"])
        result = ok(self.command(
            "plan", "--instance_data_root", data, "--caption_column", "prompts.txt", "--video_column", "videos.txt",
            "--height", 96, "--width", 160, "--max_num_frames", 9, "--pretrained_model_name_or_path", self.model,
            "--plugins", plugins("cogvx_stages"), "--json", "-",
        ))  # fmt: skip
        return json.loads(result.stdout[result.stdout.index("{") :])

    def prune(self, *hooks):
        return self.command(
            "cache", "prune", "--instance_data_root", self.general_data, "--caption_column", "prompts.txt",
            "--video_column", "videos.txt", "--height", 96, "--width", 160, "--max_num_frames", 9,
            "--plugins", plugins(*hooks),
        )  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_models, t2v_trainer) -> Runs:
    return Runs(tmp_path_factory.mktemp("hook_examples"), tiny_models, t2v_trainer)


# ---------------------------------------------------------------------------------------------
# What each example does, seen in the runs


CHECKS = {}


def check(name):
    def register(function):
        CHECKS[name] = function
        return function

    return register


@check("first_plugin.py")
def _(runs):
    assert "training at 160x96" in runs.general.stdout


@check("cogvx_add_arguments")
def _(runs):
    assert runs.help.returncode == 0
    assert "shape_logger:" in runs.help.stdout and "--log_shapes_every" in runs.help.stdout


@check("cogvx_configure")
def _(runs):
    assert runs.bad_flag.returncode == 2
    assert runs.bad_flag.stderr.strip() == "cogvx-ext: --log_shapes_every must be at least 1"


@check("cogvx_provides")
def _(runs):
    assert runs.rope_needed.returncode == 2  # the requires example alone, on a RoPE model
    assert runs.rope_provided.returncode == 0, runs.rope_provided.stderr


@check("cogvx_requires")
def _(runs):
    assert runs.rope_needed.stderr.strip() == "cogvx-ext: 5b model: add rope_rescale to --plugins"


@check("cogvx_memory_check")
def _(runs):
    assert re.search(r"^estimated peak at 160x96: (\d+\.\d\d) GiB$", runs.general.stdout, flags=re.M)
    assert runs.unknown_model.returncode == 0, runs.unknown_model.stderr  # setup None is allowed
    assert runs.too_big.returncode == 2, runs.too_big.stderr[-3000:]
    last = runs.too_big.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"cogvx-ext: 720x480 needs about \d+\.\d GiB, more than 24 GiB: .*", last), last


@check("cogvx_accelerator_ready")
def _(runs):
    assert "training on 1 process(es)" in runs.general.stdout.splitlines()


@check("cogvx_transformer_loaded")
def _(runs):
    from diffusers import CogVideoXTransformer3DModel

    transformer = CogVideoXTransformer3DModel.from_pretrained(runs.model, subfolder="transformer")
    count = sum(p.numel() for p in transformer.parameters())  # without LoRA: it is not added yet
    line = f"transformer: {transformer.config.num_layers} layers, {count} parameters"
    assert line in runs.general.stdout.splitlines()


@check("cogvx_vae_loaded")
def _(runs):
    config = json.loads((runs.model / "vae" / "config.json").read_text())
    assert f"VAE scaling factor {config['scaling_factor']}" in runs.general.stdout.splitlines()


@check("cogvx_stages")
def _(runs):
    schedule = example_module("cogvx_stages").cogvx_stages(args=None)
    planned = [(stage["start_step"], stage["area"]) for stage in runs.plan["stages"]]
    assert planned == [(stage.start_step, stage.area) for stage in schedule]
    assert {bucket["stage"] for bucket in runs.plan["buckets"]} == set(range(len(schedule)))


@check("cogvx_probe")
def _(runs):
    sources = {e["path"]: e["source"] for e in runs.npy_events() if e["event"] == "clip_targets"}
    assert sources == {"clip0.npy": [208, 112], "clip1.npy": [112, 208]}  # the arrays' sizes


@check("cogvx_clip_targets")
def _(runs):
    targets = {e["path"]: e["targets"] for e in runs.npy_events() if e["event"] == "clip_targets"}
    assert targets == {"clip0.npy": [[160, 96, 9]], "clip1.npy": [[96, 160, 9]]}


@check("cogvx_load_pixels")
def _(runs):
    pixels = {e["path"]: e for e in runs.npy_events() if e["event"] == "load_pixels"}
    assert {path: e["shape"] for path, e in pixels.items()} == {
        "clip0.npy": [9, 3, 96, 160],
        "clip1.npy": [9, 3, 160, 96],
    }
    assert all(-1.05 <= e["low"] < e["high"] <= 1.05 for e in pixels.values())
    assert not (runs.root / "out_npy" / "skipped-decode.txt").exists()


@check("cogvx_clips_skipped")
def _(runs):
    assert runs.npy.returncode == 0
    lines = (runs.root / "out_npy" / "skipped-plan.txt").read_text().splitlines()
    assert len(lines) == 1 and lines[0].split("\t")[0].endswith("videos/missing.npy"), lines
    assert lines[0].split("\t")[1]  # with its reason


@check("cogvx_encode_sample")
def _(runs):
    assert runs.resumed.returncode == 0
    encoded = [e for e in runs.events(3) if e["event"] == "encode_sample"]
    stored = runs.latent_files()
    assert len(stored) == len(encoded) == 3
    assert sorted(list(safetensors.torch.load_file(p)["parameters"].shape) for p in stored) == sorted(
        e["shapes"][0] for e in encoded
    )
    # The resumed run was given the (zeroed) stored latents, not freshly encoded ones.
    resumed = [e for e in runs.events(4) if e["event"] == "encode_sample"]
    assert len(resumed) == 3 and all(e["checksum"][0][:2] == [0.0, 0.0] for e in resumed)


@check("cogvx_batch_sampler")
def _(runs):
    events = runs.events(3)
    targets = [e["targets"][0] for e in events if e["event"] == "clip_targets"]  # in dataset order
    largest_first = sorted(targets, key=lambda t: t[0] * t[1] * t[2], reverse=True)
    trained = [e["latent_shape"] for e in events if e["event"] == "transformer_forward" and e["grad"]]
    assert trained == [latent_shape(t) for t in largest_first]


@check("cogvx_prompt_embeddings")
def _(runs):
    line = "cogvx-ext: all 3 prompt embeddings are at hand; the text encoder stays on the CPU"
    assert line in runs.general.stderr


@check("cogvx_transformer_forward")
def _(runs):
    events = runs.events(3)
    trained = [tuple(e["latent_shape"]) for e in events if e["event"] == "transformer_forward" and e["grad"]]
    printed = re.findall(r"^training on (\(\d+, \d+, \d+\))$", runs.general.stdout, flags=re.M)
    assert printed == [str(shape) for shape in trained] and len(trained) == 3
    assert "generating at" in runs.general.stdout


@check("cogvx_rotary_embedding")
def _(runs):
    outputs = [e for e in runs.events(3) if e["event"] == "transformer_output"]
    assert outputs and all(e["rope_equals_pipeline"] is False for e in outputs)


@check("cogvx_snr_shift")
def _(runs):
    from cogvx_ext.model.facts import ModelInfo

    model = ModelInfo.from_pretrained(str(runs.model))
    printed = {shape: float(value) for value, shape in re.findall(
        r"^SNR shift (\d+\.\d+) at (\(\d+, \d+, \d+\))$", runs.general.stdout, flags=re.M)}  # fmt: skip
    trained = {
        tuple(e["latent_shape"]) for e in runs.events(3) if e["event"] == "transformer_forward" and e["grad"]
    }
    assert trained and {str(shape) for shape in trained} <= set(printed)
    for shape in trained:  # the 5b's own shift is 1.0, its native size 17,550 tokens
        assert printed[str(shape)] == pytest.approx((model.tokens(shape) / 17550) ** 0.5, abs=1e-4)
    # Validation denoised with the shift of its own shape too (printed by cogvx_transformer_forward's example).
    validated = set(re.findall(r"^generating at (\(\d+, \d+, \d+\))$", runs.general.stdout, flags=re.M))
    assert validated and validated <= set(printed)


def logged(runs, key: str) -> list:
    """What the trackers were given under ``key`` at each loop iteration of the general run."""
    return [e["logs"].get(key) for e in runs.events(3) if e["event"] == "step_end"]


@check("cogvx_transformer_output")
def _(runs):
    values = logged(runs, "prediction_rms")
    assert len(values) == 3 and all(isinstance(v, float) and v > 0 for v in values)


@check("cogvx_step_end")
def _(runs):
    values = logged(runs, "seconds_per_step")
    assert len(values) == 3 and values[0] is None and all(v > 0 for v in values[1:])


def saved_state(runs, step: int) -> dict:
    states = json.loads((runs.root / "out" / f"checkpoint-{step}" / "cogvx_ext_state.json").read_text())
    (state,) = (value for key, value in states["plugins"].items() if key.startswith("cogvx_state_dict:"))
    return state


@check("cogvx_state_dict")
def _(runs):
    assert runs.general.returncode == 0
    assert [saved_state(runs, step) for step in (1, 2)] == [{"forwards": 1}, {"forwards": 2}]


@check("cogvx_load_state_dict")
def _(runs):
    assert runs.resumed.returncode == 0  # from checkpoint-3, which held 3 forwards
    assert saved_state(runs, 4) == {"forwards": 4}


@check("cogvx_training_settings")
def _(runs):
    assert runs.general.returncode == 0
    record = json.loads((runs.root / "out" / "checkpoint-1" / "cogvx_ext_state.json").read_text())
    assert {"caption_dropout": 0.0} in [entry.get("settings") for entry in record["plugin_settings"]], record
    assert runs.resumed_with_other_settings.returncode == 2
    last = runs.resumed_with_other_settings.stderr.strip().splitlines()[-1]
    assert last.startswith("cogvx-ext: --resume_from_checkpoint: ") and "caption_dropout" in last, last


@check("cogvx_pipeline_loaded")
def _(runs):
    assert "CogVideoXPipeline: VAE tiling on" in runs.general.stdout.splitlines()


@check("cogvx_validation_args")
def _(runs):
    variant = {}
    example_module("cogvx_validation_args").cogvx_validation_args(variants=[variant])
    frames = (variant["num_frames"] - 1) // 4 + 1
    generated = re.findall(r"^generating at \((\d+), \d+, \d+\)$", runs.general.stdout, flags=re.M)
    assert generated and len(generated) % variant["num_inference_steps"] == 0
    assert set(generated) == {str(frames)}


@check("cogvx_lora_metadata")
def _(runs):
    record = json.loads((runs.root / "out" / "cogvx_ext.json").read_text())
    assert record["settings"]["log_shapes_every"] == LOG_SHAPES_EVERY


@check("cogvx_train_end")
def _(runs):
    out = runs.root / "out"
    lora = out / "pytorch_lora_weights.safetensors"
    trained = {
        tuple(e["latent_shape"]) for e in runs.events(3) if e["event"] == "transformer_forward" and e["grad"]
    }
    lines = runs.general.stdout.splitlines()
    assert f"trained 3 steps at {len(trained)} latent shapes: {lora} ({lora.stat().st_size} bytes)" in lines
    assert f"last checkpoint: {out / 'checkpoint-3'}" in lines


@check("cogvx_exception")
def _(runs):
    assert runs.failing.returncode == 1
    assert "training failed: RuntimeError" in runs.failing.stdout.splitlines()


@check("cogvx_cache_summary")
def _(runs):
    assert runs.prune("cogvx_cache_prune").returncode == 2  # no plugin answers for a cache
    assert runs.prune("cogvx_cache_summary", "cogvx_cache_prune").returncode == 0


@check("cogvx_cache_prune")
def _(runs):
    result = runs.prune("cogvx_cache_summary", "cogvx_cache_prune")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "3 clips still in use; dry run: False" in lines
    assert lines[-1] == (
        "cogvx-ext cache prune: 3 entries kept, removed 0 (0.0 MiB) and 0 temporary file(s); cache /tmp/my-cache"
    )


# ---------------------------------------------------------------------------------------------


def test_every_hook_has_an_example_and_a_check():
    hooks = set(hookdoc.specs())
    assert {name for name in CHECKS if name.startswith("cogvx_")} == hooks
    assert all(hookdoc.example_for(hook, EXAMPLES) is not None for hook in hooks)
    intro_examples = {name for name, e in EXAMPLES.items() if not e.path.stem.startswith("cogvx_")}
    assert intro_examples <= set(CHECKS)


@pytest.mark.slow
def test_the_state_example_counts_right_after_a_resume_on_two_processes(tiny_models, t2v_trainer, tmp_path):
    """The cogvx_state_dict example is saved by the main process alone, in the middle of a step,
    and read back by both: after a resume its count still holds every batch the process ran."""
    data = write_dataset(tmp_path / "data", [(256, 144, 17), (144, 256, 17)] * 2, prompts=list("abcd"))
    out = tmp_path / "out"
    flags = ["--plugins", plugins("cogvx_state_dict"), "--checkpointing_steps", 1]
    ok(_run_trainer(t2v_trainer, train_args(tiny_models["5b"], data, out, *flags, steps=2), nproc=2))
    resumed = train_args(tiny_models["5b"], data, out, *flags, "--resume_from_checkpoint", "latest", steps=4)
    ok(_run_trainer(t2v_trainer, resumed, nproc=2))
    states = json.loads((out / "checkpoint-4" / "cogvx_ext_state.json").read_text())["plugins"]
    (state,) = (value for key, value in states.items() if key.startswith("cogvx_state_dict:"))
    # Batch size 1, no gradient accumulation: one training forward per optimizer step on each process.
    assert state == {"forwards": 4}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_does_what_it_says(name, runs):
    CHECKS[name](runs)
