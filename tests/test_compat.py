"""Compatibility with the diffusers scripts' releases: fewer clips than processes, the seams' shapes,
the floors of diffusers and transformers (README, "Script versions"; benchmarks/compat.py runs the
whole matrix against the real scripts)."""

from __future__ import annotations

import pytest
from test_e2e import RECORDER, by_event, mixed_dataset, ok, script_args, training_shapes
from tests_support import HERE, read_events


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, plugins",
    [
        ("5b", "aspect_bucket,rope_rescale"),
        ("5b", "aspect_bucket,rope_rescale,latent_cache"),
        ("5b-I2V", "aspect_bucket,rope_rescale,posemb_adapt,latent_cache"),
    ],
)
def test_one_clip_trains_on_two_processes(
    tiny_models, t2v_trainer, i2v_trainer, train, tmp_path, kind, plugins
):
    # The v0.37+ T2V script (and the minimal one) splits its encoding loop across processes and
    # takes a shape from each process's first result: a process with no clip raised StopIteration.
    data = mixed_dataset(tmp_path / "data", [(256, 144, 17)])
    record, out = tmp_path / "events", tmp_path / "out"
    extra = ["--latent_cache_dir", tmp_path / "cache"] if "latent_cache" in plugins else []
    trainer = i2v_trainer if "I2V" in kind else t2v_trainer
    args = script_args(
        tiny_models[kind], data, out, "--plugins", f"{RECORDER},{plugins}", "--recorder_out", record,
        *extra, steps=2,
    )  # fmt: skip
    ok(train(trainer, args, nproc=2))
    ranks = read_events(record)
    assert sorted(ranks) == ["events-rank0.jsonl", "events-rank1.jsonl"]
    encoded = [e["path"] for events in ranks.values() for e in by_event(events, "encode_sample")]
    assert len(encoded) == 1  # one rank encoded the clip, the other none
    for name, events in ranks.items():
        assert training_shapes(events) == [[3, 12, 20]] * 2, name  # both processes train every step
    assert (out / "pytorch_lora_weights.safetensors").is_file()


# Each: a change a future script could make, made to a copy of the minimal T2V trainer; the plugins
# that need the seam; what the one line must say.
CHANGED_SEAMS = {
    "instance_videos no longer assigned": (
        [
            (
                "    train_dataset.instance_videos = encoded_videos\n",
                "    train_dataset.latents = encoded_videos\n",
            )
        ],
        "aspect_bucket,rope_rescale",
        "does not fit the seam the encoded clips (instance_videos, DataLoader) that aspect_bucket need(s): "
        "main() never assigns train_dataset.instance_videos (the encoded clips)",
    ),
    "DataLoader without collate_fn": (
        [("        collate_fn=collate_fn,\n", "")],
        "aspect_bucket,rope_rescale",
        "main() calls DataLoader(train_dataset, ...) without collate_fn=",
    ),
    "log_validation's pipeline_args renamed": (
        [("pipeline_args", "validation_kwargs")],
        "rope_rescale",
        "does not fit the seam log_validation(pipe, ..., pipeline_args) that cogvx-ext need(s): "
        "log_validation(pipe, args, accelerator, validation_kwargs, epoch, is_final_validation) "
        "has no parameter pipeline_args",
    ),
    "compute_prompt_embeddings' max_sequence_length renamed": (
        [
            (
                "prompt, max_sequence_length, device, dtype, requires_grad",
                "prompt, max_length, device, dtype, requires_grad",
            ),
            ("max_length=max_sequence_length", "max_length=max_length"),
        ],
        "latent_cache",
        "compute_prompt_embeddings(tokenizer, text_encoder, prompt, max_length, device, dtype, requires_grad) "
        "is not compute_prompt_embeddings(tokenizer, text_encoder, prompt, max_sequence_length, device, dtype, "
        "requires_grad)",
    ),
}


def changed_trainer(tmp_path, edits):
    from cogvx_ext.trainers import minimal_trainer

    source = minimal_trainer("t2v").read_text(encoding="utf-8")
    for old, new in edits:
        assert old in source, old  # the minimal trainer still has what the test changes
        source = source.replace(old, new)
    path = tmp_path / "train_cogvideox_lora.py"
    path.write_text(source, encoding="utf-8")
    return path


@pytest.mark.parametrize("change", list(CHANGED_SEAMS))
def test_a_seam_of_another_shape_stops_the_run_with_one_line(tiny_models, train, tmp_path, change):
    edits, plugins, expected = CHANGED_SEAMS[change]
    trainer = changed_trainer(tmp_path, edits)
    data = mixed_dataset(tmp_path / "data", [(256, 144, 17)])
    out = tmp_path / "out"
    args = script_args(
        tiny_models["5b"], data, out, "--plugins", plugins, "--latent_cache_dir", tmp_path / "cache", steps=1
    )
    if "latent_cache" not in plugins:
        args = args[:-2]
    result = train(trainer, args)
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("cogvx-ext: train_cogvideox_lora.py (a script without check_min_version) ")
    assert expected in line
    assert line.endswith(
        'cogvx-ext knows the diffusers scripts of v0.31.0 to main (README, "Script versions"): '
        "use one of those"
        + ("" if "cogvx-ext need" in line else f", or leave {plugins.split(',')[0]} out of --plugins")
    )
    assert not out.exists()  # before main made anything, before any model loaded


def test_every_trainer_fits_every_seam(t2v_trainer, i2v_trainer):
    # The minimal trainers, or the real scripts when COGVX_EXT_TRAINER / COGVX_EXT_I2V_TRAINER name them.
    import importlib.util
    import sys

    from cogvx_ext.plugin import hookspecs
    from cogvx_ext.script.seams.shapes import SEAMS, mismatches

    every_hook = {name for name in dir(hookspecs) if name.startswith("cogvx_")}
    for i, path in enumerate((t2v_trainer, i2v_trainer)):
        name = f"compat_trainer_{i}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
            assert all(seam.present in module.__dict__ for seam in SEAMS), path
            assert mismatches(module, every_hook) == [], path
        finally:
            del sys.modules[name]


@pytest.mark.slow
def test_final_lora_reload_works_offline_with_the_pre_0_40_file_guess(
    tiny_models, t2v_trainer, train, tmp_path
):
    # The scripts reload their output folder at the end without weight_name; diffusers < 0.40 refuses
    # that offline (the train fixture runs with HF_HUB_OFFLINE=1).
    rule = HERE / "plugins" / "offline_lora_rule_before_0_40.py"
    data = mixed_dataset(tmp_path / "data", [(256, 144, 17)])
    out = tmp_path / "out"
    args = script_args(
        tiny_models["5b"], data, out, "--plugins", f"{rule},aspect_bucket,rope_rescale", steps=1
    )
    result = ok(train(t2v_trainer, args))
    assert "must specify a `weight_name`" not in result.stderr
    assert (out / "pytorch_lora_weights.safetensors").is_file()


# What a script's imports meet with a diffusers / transformers it cannot run with: the line that
# says what to install, on the start-up hook's path and the runner's, exit status 2, no traceback.
IMPORT_FLOORS = {
    "check_min_version": (
        'from diffusers.utils import check_min_version\n\ncheck_min_version("99.0.0")\n',
        "cogvx-ext: train_cogvideox_lora.py needs diffusers >= 99.0.0 (its check_min_version) and diffusers "
        "{diffusers} is installed: pip install -U 'diffusers>=99.0.0', or use the train_cogvideox_lora.py of "
        "diffusers v{diffusers} (examples/cogvideo at that tag)",
    ),
    # diffusers <= 0.35.1 imports this from transformers at `from diffusers import CogVideoX...`; the
    # installed transformers (> 4.56.2) raises the very ImportError those diffusers meet.
    "FLAX_WEIGHTS_NAME": (
        "from transformers.utils import FLAX_WEIGHTS_NAME\n",
        "cogvx-ext: diffusers {diffusers} cannot import CogVideoX with transformers {transformers} (diffusers "
        "up to 0.35.1 imports FLAX_WEIGHTS_NAME, which transformers after 4.56.2 does not have): pip install "
        "'transformers<=4.56.2', or pip install -U diffusers",
    ),
}


@pytest.mark.parametrize("how", ["start-up hook", "runner"])
@pytest.mark.parametrize("floor", list(IMPORT_FLOORS))
def test_a_diffusers_the_script_cannot_import_with_is_one_line(train, tmp_path, floor, how):
    import importlib.metadata
    import os
    import shutil
    import subprocess
    import sys

    import transformers.utils

    if floor == "FLAX_WEIGHTS_NAME" and hasattr(transformers.utils, "FLAX_WEIGHTS_NAME"):
        pytest.skip("the installed transformers still has FLAX_WEIGHTS_NAME")
    line, expected = IMPORT_FLOORS[floor]
    trainer = changed_trainer(tmp_path, [("import argparse\n", f"import argparse\n{line}")])
    argv = [trainer, "--plugins", "aspect_bucket", "--output_dir", tmp_path / "out"]
    if how == "start-up hook":
        result = train(argv[0], argv[1:])
    else:
        cogvx_ext = shutil.which("cogvx-ext", path=os.path.dirname(sys.executable))
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        command = [cogvx_ext, "run", *map(str, argv)]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    versions = {p: importlib.metadata.version(p) for p in ("diffusers", "transformers")}
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [expected.format(**versions)]
