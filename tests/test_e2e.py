"""End to end: the training scripts with plugins, tiny real models, real mp4 files, real processes.

The scripts are our tiny trainers (tests/trainers), or the diffusers ones when COGVX_EXT_TRAINER /
COGVX_EXT_I2V_TRAINER point at them: the same tests, the same assertions.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import torch
from tests_support import HERE, ok, read_events, training_args

from cogvx_ext.testing import write_bad_clips, write_dataset

pytestmark = pytest.mark.slow

RECORDER = f"{HERE / 'plugins' / 'recorder.py'}:Recorder"
EXAMPLES = HERE.parent / "examples"

# One clip of each common aspect, 17 frames at 8 fps: every clip gets its own bucket, so the
# latent shape of a batch tells which clip it holds.
MIXED = [(256, 144, 17), (144, 256, 17), (192, 144, 17), (160, 160, 17), (336, 144, 17)]


def mixed_dataset(root: Path, clips=MIXED) -> Path:
    return write_dataset(root, clips, prompts=[f"clip {i}" for i in range(len(clips))])


script_args = functools.partial(training_args, steps=4)


def events_of(directory, rank=0) -> list[dict]:
    return read_events(directory)[f"events-rank{rank}.jsonl"]


def by_event(events, name) -> list[dict]:
    return [e for e in events if e["event"] == name]


def training_shapes(events) -> list[list[int]]:
    """Latent (F, H, W) of each training forward, in order."""
    return [e["latent_shape"] for e in by_event(events, "transformer_forward") if e["grad"]]


def test_every_hook_fires_in_a_bucketed_t2v_run(tiny_models, t2v_trainer, train, tmp_path):
    data = mixed_dataset(tmp_path / "data")
    out, record = tmp_path / "out", tmp_path / "events"
    args = script_args(
        tiny_models["5b"], data, out,
        "--checkpointing_steps", 2, "--validation_prompt", "a test", "--num_validation_videos", 1,
        "--plugins", f"{RECORDER},aspect_bucket,rope_rescale", "--recorder_out", record,
        "--recorder_fast_validation",
    )  # fmt: skip
    result = ok(train(t2v_trainer, args))
    events = events_of(record)
    seen = {"cogvx_" + e["event"] for e in events}
    hooks = {
        "cogvx_add_arguments", "cogvx_configure", "cogvx_provides", "cogvx_requires", "cogvx_accelerator_ready",
        "cogvx_transformer_loaded", "cogvx_vae_loaded", "cogvx_clip_targets", "cogvx_load_pixels",
        "cogvx_encode_sample", "cogvx_batch_sampler", "cogvx_transformer_forward", "cogvx_rotary_embedding",
        "cogvx_transformer_output", "cogvx_step_end", "cogvx_state_dict", "cogvx_pipeline_loaded",
        "cogvx_validation_args", "cogvx_lora_metadata",
    }  # fmt: skip
    assert hooks <= seen, hooks - seen
    assert "cogvx_exception" not in seen
    assert by_event(events, "requires")[0]["model"] == "5b"
    assert by_event(events, "transformer_loaded")[0]["has_adapter"] is False  # before LoRA

    # Every clip at its own aspect: the portrait clip stays portrait, nothing is stretched.
    targets = {e["path"]: e["targets"] for e in by_event(events, "clip_targets")}
    assert len(targets) == len(MIXED)
    portrait = next(t for p, t in targets.items() if "144x256" in p)[0]
    assert portrait[1] > portrait[0]
    pixels = by_event(events, "load_pixels")
    assert all(-1.0 <= e["low"] <= e["high"] <= 1.0 and e["shape"][1] == 3 for e in pixels)
    assert all(e["grad"] is False for e in by_event(events, "encode_sample"))
    assert by_event(events, "batch_sampler")[0]["sampler"] == "BucketBatchSampler"

    # Every training forward: one shape per batch, RoPE equal to the pipeline's at that shape.
    shapes = training_shapes(events)
    assert len(shapes) == 4 and len({tuple(s) for s in shapes}) > 1
    outputs = [e for e in by_event(events, "transformer_output") if "rope_equals_pipeline" in e]
    assert outputs and all(e["rope_equals_pipeline"] for e in outputs)
    assert all(e["tokens"] for e in by_event(events, "rotary_embedding"))

    # Validation ran at the largest trained size of each orientation (rope_rescale's default).
    sizes = by_event(events, "validation_args")[0]["sizes"]
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes) and any(w == h for w, h in sizes)

    # Checkpoints carry the plugins' state; the LoRA carries what inference needs.
    state = json.loads((out / "checkpoint-2" / "cogvx_ext_state.json").read_text())["plugins"]
    assert state["recorder:Recorder"] == {"steps_seen": 1}
    assert state["cogvx_ext_plugins.aspect_bucket.plugin:AspectBucket"]["global_step"] == 2
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    meta = json.loads((out / "cogvx_ext.json").read_text())
    assert meta["plugins"] == ["recorder:Recorder", "aspect_bucket", "rope_rescale"]
    assert meta["settings"]["rope_mode"] == "pipeline" and meta["settings"]["recorder"] is True
    assert len(meta["settings"]["trained_shapes"]) == len(MIXED)
    assert "cogvx-ext: skipped" not in result.stderr


def test_resume_continues_at_the_exact_batch(tiny_models, t2v_trainer, train, tmp_path):
    data = mixed_dataset(tmp_path / "data")
    plugins = ["--plugins", f"{RECORDER},aspect_bucket,rope_rescale"]
    whole = tmp_path / "whole"
    ok(
        train(
            t2v_trainer,
            script_args(tiny_models["5b"], data, whole, *plugins, "--recorder_out", whole / "ev", steps=7),
        )
    )
    part = tmp_path / "part"
    first = [*plugins, "--recorder_out", part / "ev1", "--checkpointing_steps", 3]
    ok(train(t2v_trainer, script_args(tiny_models["5b"], data, part, *first, steps=3)))
    second = [*plugins, "--recorder_out", part / "ev2", "--resume_from_checkpoint", "latest"]
    ok(train(t2v_trainer, script_args(tiny_models["5b"], data, part, *second, steps=7)))
    expected = training_shapes(events_of(whole / "ev"))
    resumed = training_shapes(events_of(part / "ev1")) + training_shapes(events_of(part / "ev2"))
    assert len(expected) == 7
    assert resumed == expected
    assert by_event(events_of(part / "ev2"), "load_state_dict")[0]["state"] == {"steps_seen": 2}


def test_two_ranks_train_mixed_shapes_correctly(tiny_models, t2v_trainer, train, tmp_path):
    # The stock script's broadcast crashes or silently reshapes here (tests/test_tiny_trainers.py).
    data = mixed_dataset(tmp_path / "data", [*MIXED, (256, 144, 17)])
    record = tmp_path / "events"
    args = script_args(
        tiny_models["5b"], data, tmp_path / "out", "--plugins", f"{RECORDER},aspect_bucket,rope_rescale",
        "--recorder_out", record, steps=3,
    )  # fmt: skip
    ok(train(t2v_trainer, args, nproc=2))
    ranks = read_events(record)
    assert sorted(ranks) == ["events-rank0.jsonl", "events-rank1.jsonl"]
    # Each sample's latent shape, as planned (the same on both ranks) and as encoded (own share).
    planned = {}
    for events in ranks.values():
        for e in by_event(events, "clip_targets"):
            w, h, f = e["targets"][0]
            planned[e["path"]] = [(f - 1) // 4 + 1, h // 8, w // 8]
        for e in by_event(events, "encode_sample"):
            assert e["shapes"][0][2:] == planned[e["path"]]
    encoded = [e["path"] for events in ranks.values() for e in by_event(events, "encode_sample")]
    assert sorted(encoded) == sorted(planned)  # each clip encoded once, by one rank
    steps = {name: training_shapes(events) for name, events in ranks.items()}
    assert len(steps["events-rank0.jsonl"]) == len(steps["events-rank1.jsonl"]) == 3  # no rank waits
    for name, shapes in steps.items():
        assert all(s in planned.values() for s in shapes)
        outputs = [e for e in by_event(ranks[name], "transformer_output") if e["grad"]]
        assert len(outputs) == 3 and all(e.get("rope_equals_pipeline") for e in outputs), name
    assert steps["events-rank0.jsonl"] != steps["events-rank1.jsonl"]  # different batches per rank
    # Every rank trains on the very numbers the owning rank encoded, for every clip.
    encoded = {
        e["path"]: e["checksum"] for events in ranks.values() for e in by_event(events, "encode_sample")
    }
    for name, events in ranks.items():
        [held] = by_event(events, "dataset_latents")
        assert held["latents"] == {path: encoded[path] for path in held["latents"]}, name
        assert sorted(held["latents"]) == sorted(encoded)


@pytest.mark.parametrize(
    "kind, plugins",
    [
        ("2b", "aspect_bucket"),  # sin-cos regenerated per shape by diffusers: no RoPE plugin needed
        ("1.5-5B", "aspect_bucket,rope_rescale"),
    ],
)
def test_other_t2v_models_train_on_mixed_aspects(tiny_models, t2v_trainer, train, tmp_path, kind, plugins):
    data = mixed_dataset(tmp_path / "data")
    record = tmp_path / "events"
    args = script_args(tiny_models[kind], data, tmp_path / "out", "--plugins", f"{RECORDER},{plugins}",
                       "--recorder_out", record, steps=3)  # fmt: skip
    ok(train(t2v_trainer, args))
    events = events_of(record)
    assert len({tuple(s) for s in training_shapes(events)}) > 1
    outputs = [e for e in by_event(events, "transformer_output") if e["grad"]]
    # The model answers for every frame and pixel it was given (before any padded frame is cut).
    assert all(
        e["shape"][:2] == e["input_shape"][:2] and e["shape"][3:] == e["input_shape"][3:] for e in outputs
    )
    if kind.startswith("1.5"):
        assert all(e["rope_equals_pipeline"] for e in outputs)
        assert all(e["input_shape"][1] % 2 == 0 for e in outputs)  # even latent frames reach the model
    else:
        assert all("rope_equals_pipeline" not in e for e in outputs)


@pytest.mark.parametrize(
    "kind, plugins",
    [
        ("5b-I2V", "aspect_bucket,rope_rescale,posemb_adapt"),
        ("1.5-5B-I2V", "aspect_bucket,rope_rescale"),
    ],
)
def test_i2v_models_train_on_mixed_aspects(tiny_models, i2v_trainer, train, tmp_path, kind, plugins):
    data = mixed_dataset(tmp_path / "data")
    record = tmp_path / "events"
    args = script_args(tiny_models[kind], data, tmp_path / "out", "--plugins", f"{RECORDER},{plugins}",
                       "--recorder_out", record, steps=3)  # fmt: skip
    ok(train(i2v_trainer, args))
    events = events_of(record)
    shapes = training_shapes(events)
    assert len(shapes) == 3 and len({tuple(s) for s in shapes}) > 1
    assert all(len(e["shapes"]) == 2 for e in by_event(events, "encode_sample"))  # video and image
    outputs = [e for e in by_event(events, "transformer_output") if e["grad"]]
    assert all(e["rope_equals_pipeline"] for e in outputs)
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()


def test_a_rope_model_without_rope_rescale_stops_at_start(tiny_models, t2v_trainer, train, tmp_path):
    data = mixed_dataset(tmp_path / "data")
    result = train(
        t2v_trainer, script_args(tiny_models["5b"], data, tmp_path / "out", "--plugins", "aspect_bucket")
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "cogvx-ext: 5b model: add rope_rescale to --plugins"
    assert not (tmp_path / "out").exists()  # stopped before main made anything


def test_unknown_plugin_is_one_line(tiny_models, t2v_trainer, train, tmp_path):
    result = train(
        t2v_trainer, script_args(tiny_models["5b"], tmp_path, tmp_path / "out", "--plugins", "nosuchplugin")
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("cogvx-ext: unknown plugin 'nosuchplugin'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_single_file_user_plugin_logs_shapes(tiny_models, t2v_trainer, train, tmp_path):
    data = mixed_dataset(tmp_path / "data")
    args = script_args(tiny_models["5b"], data, tmp_path / "out", "--plugins",
                       f"aspect_bucket,rope_rescale,{EXAMPLES / 'log_shapes.py'}", "--log_shapes_every", 1, steps=3)  # fmt: skip
    result = ok(train(t2v_trainer, args))
    assert "log_shapes: transformer has" in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("log_shapes: step")]
    assert len(lines) == 3 and all("tokens per sample" in line for line in lines)
    bad = train(t2v_trainer, script_args(tiny_models["5b"], data, tmp_path / "out2", "--plugins",
                                         str(EXAMPLES / "log_shapes.py"), "--log_shapes_every", 0))  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip() == "cogvx-ext: --log_shapes_every must be at least 1"


def test_bad_clips_are_named_and_training_goes_on(tiny_models, t2v_trainer, train, tmp_path):
    data = mixed_dataset(tmp_path / "data", MIXED[:3])
    bad = write_bad_clips(data / "bad")
    with open(data / "videos.txt", "a") as v, open(data / "prompts.txt", "a") as p:
        for name, path in bad.items():
            v.write(f"{path.relative_to(data)}\n")
            p.write(f"bad {name}\n")
        v.write("videos/does_not_exist.mp4\n")
        p.write("missing\n")
    args = script_args(
        tiny_models["5b"], data, tmp_path / "out", "--plugins", "aspect_bucket,rope_rescale", steps=2
    )
    result = ok(train(t2v_trainer, args))
    skipped = [line for line in result.stderr.splitlines() if line.startswith("cogvx-ext: skipped")]
    for name in bad:
        assert any(str(bad[name]) in line for line in skipped), name
    assert any("does_not_exist.mp4: file does not exist" in line for line in skipped)
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()
    strict = train(t2v_trainer, [*args, "--bucket_strict", "--output_dir", tmp_path / "strict"])
    assert strict.returncode == 2 and strict.stderr.strip().splitlines()[-1].startswith(
        "cogvx-ext: --bucket_strict"
    )


def test_exception_hook_sees_the_failure(tiny_models, t2v_trainer, train, tmp_path):
    """cogvx_exception fires once with the exception escaping the script's main."""
    data = mixed_dataset(tmp_path / "data", MIXED[:2])
    record = tmp_path / "events"
    args = script_args(tiny_models["5b"], data, tmp_path / "out", "--plugins", f"{RECORDER},aspect_bucket,rope_rescale",
                       "--recorder_out", record, "--recorder_fail_at_step", 1)  # fmt: skip
    result = train(t2v_trainer, args)
    assert result.returncode != 0 and "failing on purpose at step 1" in result.stderr
    [exc] = by_event(events_of(record), "exception")
    assert exc["type"] == "RuntimeError"


def test_default_targets_through_the_data_hooks(tiny_models, t2v_trainer, train, tmp_path):
    # Only the recorder's wrappers: the core's defaults plan, decode and encode at the stock size.
    data = mixed_dataset(tmp_path / "data", MIXED[:3])
    record = tmp_path / "events"
    args = script_args(
        tiny_models["2b"], data, tmp_path / "out", "--plugins", RECORDER, "--recorder_out", record, steps=2
    )
    ok(train(t2v_trainer, args))
    events = events_of(record)
    assert {tuple(t[0]) for e in by_event(events, "clip_targets") for t in [e["targets"]]} == {(160, 96, 9)}
    assert by_event(events, "batch_sampler")[0]["sampler"] is None  # one shape: the script's own DataLoader
    assert training_shapes(events) == [[3, 12, 20]] * 2


def test_lora_trained_at_16_9_generates_16_9_with_prepare_pipeline(tiny_models, t2v_trainer, train, tmp_path):
    from diffusers import CogVideoXPipeline

    from cogvx_ext.inference import prepare_pipeline

    data = mixed_dataset(tmp_path / "data", [(256, 144, 17), (320, 176, 17)])
    out = tmp_path / "out"
    ok(
        train(
            t2v_trainer,
            script_args(tiny_models["5b"], data, out, "--plugins", "aspect_bucket,rope_rescale", steps=2),
        )
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pipe = prepare_pipeline(CogVideoXPipeline.from_pretrained(tiny_models["5b"]), out)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a test", height=96, width=160, num_frames=9, num_inference_steps=2, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    assert tuple(frames.shape[-2:]) == (96, 160) and frames.shape[1] == 9


def test_latent_cache_second_launch_decodes_and_encodes_nothing(tiny_models, t2v_trainer, train, tmp_path):
    data = mixed_dataset(tmp_path / "data")
    plugins = f"{RECORDER},aspect_bucket,rope_rescale,latent_cache"

    def launch(name):
        args = script_args(tiny_models["5b"], data, tmp_path / name, "--plugins", plugins,
                           "--latent_cache_dir", tmp_path / "cache", "--recorder_out", tmp_path / name / "ev", steps=3)  # fmt: skip
        return ok(train(t2v_trainer, args)), events_of(tmp_path / name / "ev")

    cold, cold_events = launch("cold")
    # A warm launch demuxes no clip (headers from the cache) and decodes none.
    warm, warm_events = launch("warm")
    assert "cogvx-ext: skipped" not in warm.stderr
    assert f"{len(MIXED)} clip header(s) from the cache" in warm.stdout + warm.stderr
    assert len(by_event(cold_events, "load_pixels")) == len(MIXED)
    assert by_event(warm_events, "load_pixels") == []  # nothing decoded, so nothing VAE-encoded
    assert training_shapes(warm_events) == training_shapes(cold_events)  # same plan, same batches
    for result in (cold, warm):  # every prompt is at hand after the first pass: T5 leaves the device
        assert "prompt embeddings are at hand; the text encoder stays on the CPU" in result.stderr
    assert (tmp_path / "cache" / "prompts").is_dir()
    # One clip replaced by other bytes of the same size and time: it gets neither the old file's
    # header nor its latents (blank, it is skipped); the others still come from the cache.
    replaced = sorted((data / "videos").iterdir())[0]
    stat = replaced.stat()
    replaced.write_bytes(bytes(stat.st_size))
    os.utime(replaced, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again, again_events = launch("again")
    assert f"cogvx-ext: skipped {replaced}: " in again.stderr
    assert f"{len(MIXED) - 1} clip header(s) from the cache" in again.stdout + again.stderr
    assert by_event(again_events, "load_pixels") == []


def test_a_rope_plugin_answering_none_leaves_the_default_rope(tiny_models, t2v_trainer, train, tmp_path):
    # The seam has taken the script's RoPE away; a None answer must mean the batch's default, never none.
    data = mixed_dataset(tmp_path / "data", MIXED[:3])
    record = tmp_path / "events"
    rope_off = f"{HERE / 'plugins' / 'rope_off.py'}:RopeOff"
    args = script_args(tiny_models["5b"], data, tmp_path / "out", "--plugins", f"{RECORDER},aspect_bucket,{rope_off}",
                       "--recorder_out", record, steps=3)  # fmt: skip
    ok(train(t2v_trainer, args))
    outputs = [e for e in by_event(events_of(record), "transformer_output") if e["grad"]]
    assert len(outputs) == 3 and len({tuple(e["input_shape"]) for e in outputs}) > 1
    assert all(e.get("rope_equals_pipeline") for e in outputs)


def test_files_the_run_writes_are_readable_by_teammates(tiny_models, t2v_trainer, train, tmp_path):
    # umask 022: a shared latent cache, the LoRA and its record, and every file of a checkpoint
    # must be 0644 like every other file the run writes, not the private 0600 of mkstemp or of
    # safetensors (which saves through a private temporary file: the LoRA weights, model weights).
    data = mixed_dataset(tmp_path / "data", MIXED[:2])
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = script_args(tiny_models["5b"], data, out, "--plugins", "aspect_bucket,rope_rescale,latent_cache",
                       "--latent_cache_dir", cache, "--checkpointing_steps", 2, steps=2)  # fmt: skip
    previous = os.umask(0o022)
    try:
        ok(train(t2v_trainer, args))
    finally:
        os.umask(previous)
    entries = [p for p in cache.rglob("*") if p.is_file()]
    checkpoint = [p for p in (out / "checkpoint-2").rglob("*") if p.is_file()]
    lora = [out / "pytorch_lora_weights.safetensors", out / "cogvx_ext.json"]
    written = [*entries, *checkpoint, *lora]
    assert entries and all(p.is_file() for p in written)
    assert {"cogvx_ext_state.json", "pytorch_lora_weights.safetensors"} <= {p.name for p in checkpoint}
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in written}
    assert modes == {name: "0o644" for name in modes}


BAD_TARGETS = f"{HERE / 'plugins' / 'bad_targets.py'}:BadTargets"


@pytest.mark.parametrize(
    "plugins, rule, message",
    [
        (
            f"{BAD_TARGETS},rope_rescale",
            "size",
            "a target that cannot train: width 168 is not a multiple of 16",
        ),
        (f"{BAD_TARGETS},rope_rescale", "frames", "a target that cannot train: 8 frames: the VAE takes 4k+1"),
        (
            f"{BAD_TARGETS},rope_rescale",
            "past_end",
            "a target that cannot train: frame index 17 is past the clip's end: it has 17 frames (0 to 16)",
        ),
        (BAD_TARGETS, "transposed", "trains at 96x160x9, not --width x --height 160x96: add rope_rescale"),
    ],
)
def test_a_bad_target_stops_the_run_before_anything_is_decoded(
    tiny_models, t2v_trainer, train, tmp_path, plugins, rule, message
):
    data = mixed_dataset(tmp_path / "data", MIXED[:2])
    record = tmp_path / "events"
    args = script_args(tiny_models["5b"], data, tmp_path / "out", "--plugins", f"{RECORDER},{plugins}",
                       "--recorder_out", record, "--bad_target", rule, steps=2)  # fmt: skip
    result = train(t2v_trainer, args)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cogvx-ext: ") and message in last and "Traceback" not in result.stderr
    if rule != "transposed":
        assert "plugin 'bad_targets:BadTargets' gave " in last
    assert not by_event(events_of(record), "load_pixels")


def test_plan_and_training_give_the_same_verdict_on_a_1_5_schedule(tiny_models, t2v_trainer, train, tmp_path):
    from cogvx_ext.base.errors import UsageError
    from cogvx_ext.cli.plan.command import run_plan

    data = mixed_dataset(tmp_path / "data", MIXED[:2])
    flags = [
        "--plugins",
        "aspect_bucket,rope_rescale,progressive_resize",
        "--progressive_stages",
        "160x160:0:frames=9",
    ]
    with pytest.raises(UsageError) as info:
        run_plan([*map(str, script_args(tiny_models["1.5-5B"], data, tmp_path / "plan")[:16]), *flags])
    assert "cannot take 9 frames" in str(info.value)
    result = train(t2v_trainer, script_args(tiny_models["1.5-5B"], data, tmp_path / "out", *flags, steps=2))
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == f"cogvx-ext: {info.value}"


ASPECT_BUCKET_BY_CLASS = "cogvx_ext_plugins.aspect_bucket:AspectBucket"


@pytest.mark.parametrize("resume_name", ["aspect_bucket", ASPECT_BUCKET_BY_CLASS])
def test_resume_with_gradient_accumulation_continues_at_the_exact_batch(
    tiny_models, t2v_trainer, train, tmp_path, resume_name
):
    # 5 one-clip buckets, accumulation 2: 3 optimizer steps an epoch, the third takes one batch.
    # Checkpoint at step 2 (4 batches taken); the resumed run must take batch 5, then epoch 1.
    # It is resumed under another name for the same plugin: its state must be found all the same.
    data = mixed_dataset(tmp_path / "data")

    def launch(out, name, *extra, steps):
        # A plugin that wraps the state hooks must not break the checkpoint.
        wrapper = f"{HERE / 'plugins' / 'state_wrapper.py'}:StateWrapper"
        plugins = [
            "--plugins",
            f"{RECORDER},{name},rope_rescale,{wrapper}",
            "--gradient_accumulation_steps",
            2,
        ]
        return ok(
            train(t2v_trainer, script_args(tiny_models["5b"], data, out, *plugins, *extra, steps=steps))
        )

    whole, part = tmp_path / "whole", tmp_path / "part"
    launch(whole, "aspect_bucket", "--recorder_out", whole / "ev", steps=5)
    launch(part, "aspect_bucket", "--recorder_out", part / "ev1", "--checkpointing_steps", 2, steps=2)
    launch(part, resume_name, "--recorder_out", part / "ev2", "--resume_from_checkpoint", "latest", steps=5)
    expected = training_shapes(events_of(whole / "ev"))
    first, second = training_shapes(events_of(part / "ev1")), training_shapes(events_of(part / "ev2"))
    assert len(expected) == 9 and len(first) == 4  # 3 + 3 + ... micro-batches: 5 + 4
    assert first + second == expected
    assert by_event(events_of(part / "ev2"), "load_state_dict")  # the recorder's state came back too


def test_ranks_that_see_different_files_stop_within_seconds(tiny_models, t2v_trainer, train, tmp_path):
    # Node-local copies of the data where rank 1's third clip differs (a file replaced on one node):
    # every rank stops before encoding with the same line, no rank waits for the other.
    import time

    clips = MIXED[:3]
    mixed_dataset(tmp_path / "data_rank0", clips)
    mixed_dataset(tmp_path / "data_rank1", clips)
    other = mixed_dataset(tmp_path / "other", [(144, 256, 17)] * 3)
    third = sorted((tmp_path / "data_rank1" / "videos").iterdir())[2]
    third.write_bytes(sorted((other / "videos").iterdir())[2].read_bytes())
    node_local = f"{HERE / 'plugins' / 'node_local_data.py'}:NodeLocalData"
    args = script_args(tiny_models["5b"], tmp_path / "data", tmp_path / "out", "--node_local_data",
                       "--plugins", f"aspect_bucket,rope_rescale,{node_local}", steps=2)  # fmt: skip
    started = time.monotonic()
    result = train(t2v_trainer, args, nproc=2, timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("cogvx-ext: the ranks planned")]
    assert lines, result.stderr[-3000:]
    # Both ranks stop on the same line; the launcher shows it once, last (cogvx_ext.base.launchers).
    assert len(lines) == 1 and result.stderr.strip().splitlines()[-1] == lines[0]
    assert f"first difference at sample 2: rank 0: videos/{third.name} " in lines[0]
    assert f"; rank 1: videos/{third.name} " in lines[0]
    assert "decoding and encoding" not in result.stderr  # stopped before encoding
    assert elapsed < 120, elapsed
