"""The aspect_bucket plugin through a pluggy manager: flags, checks, targets, sampler, resume, plan."""

from __future__ import annotations

import argparse
import json
import math

import pluggy
import pytest
from accelerate.data_loader import BatchSamplerShard
from tests_support import run_context

from cogvx_ext.base.errors import SkipClip, UsageError
from cogvx_ext.cli.plan.report import build_report
from cogvx_ext.cli.plan.text import format_report
from cogvx_ext.cli.plan.to_json import report_to_json
from cogvx_ext.data.clips import Clip, ListingEntry, Sample, Skipped, Target, VideoInfo
from cogvx_ext.data.planning import plan_samples
from cogvx_ext.data.video import probe
from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.plugin import hookspecs
from cogvx_ext.testing import tiny_transformer_config, write_bad_clips, write_clip
from cogvx_ext_plugins.aspect_bucket import AspectBucket, BucketBatchSampler
from cogvx_ext_plugins.rope_rescale import RopeRescale

MODELS = {
    kind: ModelInfo.from_config(tiny_transformer_config(kind)) for kind in ("2b", "5b", "5b-I2V", "1.5-5B")
}
V10 = MODELS["5b"]


def script_parser() -> argparse.ArgumentParser:
    """The training script's flags that the plugin reads, with the script's defaults."""
    parser = argparse.ArgumentParser(prog="train_cogvideox_lora.py")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--max_num_frames", type=int, default=49)
    parser.add_argument("--skip_frames_start", type=int, default=0)
    parser.add_argument("--skip_frames_end", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--train_batch_size", type=int, default=1)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--video_reshape_mode", type=str, default="center")
    return parser


def make_pm() -> tuple[pluggy.PluginManager, AspectBucket]:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    plugin = AspectBucket()
    pm.register(plugin, "aspect_bucket")
    pm.register(RopeRescale(), "rope_rescale")  # buckets of other shapes than --height/--width need it
    pm.check_pending()
    return pm, plugin


def configured(argv: list[str], model: ModelInfo = V10):
    pm, plugin = make_pm()
    parser = script_parser()
    pm.hook.cogvx_add_arguments(parser=parser)
    args = parser.parse_args(argv)
    pm.hook.cogvx_configure(args=args)
    pm.hook.cogvx_requires(args=args, model=model)
    return pm, plugin, args


# Small settings keep clips small: buckets around 512x288 (the run's --width x --height).
SMALL = ["--height", "288", "--width", "512", "--max_num_frames", "17"]


def test_add_arguments_puts_every_flag_in_its_own_group():
    pm, _ = make_pm()
    parser = script_parser()
    pm.hook.cogvx_add_arguments(parser=parser)
    (group,) = [g for g in parser._action_groups if g.title == "aspect_bucket"]
    flags = {a.option_strings[0] for a in group._group_actions}
    assert flags == {
        "--bucket_area", "--buckets", "--bucket_min_side", "--bucket_max_side", "--bucket_max_aspect",
        "--bucket_spacing", "--bucket_max_crop", "--bucket_upscale_limit", "--bucket_crop", "--bucket_frames",
        "--bucket_token_budget", "--bucket_max_batch", "--bucket_remainder", "--bucket_strict", "--bucket_seed",
        "--bucket_memory_budget", "--bucket_memory_margin",
    }  # fmt: skip
    assert "--bucket_token_budget" in parser.format_help()
    args = parser.parse_args([])
    assert (args.bucket_max_aspect, args.bucket_remainder, args.bucket_crop, args.bucket_frames) == (
        2.4,
        "fill",
        None,
        "auto",
    )


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--buckets", "1000x576"], r"--buckets: 1000x576 has a side \(1000\)"),
        (["--bucket_max_crop", "1.5"], "--bucket_max_crop is a fraction of the picture"),
        (["--bucket_spacing", "-0.1"], "--bucket_spacing is a fraction"),
        (["--bucket_max_aspect", "0.5"], "--bucket_max_aspect must be at least 1"),
        (["--bucket_min_side", "512", "--bucket_max_side", "256"], "--bucket_max_side 256 is below"),
        (["--bucket_upscale_limit", "0"], "--bucket_upscale_limit must be positive"),
        (["--bucket_token_budget", "0"], "--bucket_token_budget must be at least 1"),
        (["--bucket_frames", "48"], r"--bucket_frames: 48 is not 4k\+1"),
        (["--bucket_area", "100"], "--bucket_area must be at least 256"),
        (
            ["--bucket_min_side", "1500", "--bucket_max_side", "1600"],
            "no bucket of 345600 pixels fits sides 1500..1600",
        ),
    ],
)
def test_configure_rejects_bad_flags_in_one_line(argv, message):
    pm, _ = make_pm()
    parser = script_parser()
    pm.hook.cogvx_add_arguments(parser=parser)
    with pytest.raises(UsageError, match=message) as caught:
        pm.hook.cogvx_configure(args=parser.parse_args(argv))
    assert "\n" not in str(caught.value)


def test_configure_resolves_the_seed():
    assert configured([])[2].bucket_seed == 0
    assert configured(["--seed", "42"])[2].bucket_seed == 42
    assert configured(["--seed", "42", "--bucket_seed", "7"])[2].bucket_seed == 7


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("2b", []),
        ("5b", [("batch_rope", "add rope_rescale to --plugins")]),
        (
            "5b-I2V",
            [
                ("batch_rope", "add rope_rescale to --plugins"),
                ("learned_posemb", "add posemb_adapt to --plugins"),
            ],
        ),
        ("1.5-5B", [("batch_rope", "add rope_rescale to --plugins")]),
    ],
)
def test_requires_follows_the_model(kind, expected):
    pm, _, args = configured([], MODELS[kind])
    assert [
        item for result in pm.hook.cogvx_requires(args=args, model=MODELS[kind]) for item in result
    ] == expected


def test_model_dependent_checks_stop_at_start():
    with pytest.raises(UsageError, match="cannot take 49 frames"):
        configured(["--bucket_frames", "49"], MODELS["1.5-5B"])
    with pytest.raises(UsageError, match="larger than CogVideoX 1.5's rotary positions reach"):
        configured(["--buckets", "2560x1440"], MODELS["1.5-5B"])
    configured(["--buckets", "2560x1440"], V10)  # 1.0 RoPE has no such limit


# -- targets from real clips -------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    sizes = {"16x9": (512, 288), "9x16": (288, 512), "4x3": (400, 300), "1x1": (320, 320), "21x9": (672, 288)}
    made = {
        name: write_clip(root / f"{name}.mp4", w, h, 40, fps=24, seed=i)
        for i, (name, (w, h)) in enumerate(sizes.items())
    }
    made.update(write_bad_clips(root / "bad"))
    return made


def clip_of(path, index: int = 0) -> Clip:
    return Clip(index=index, path=str(path), prompt="a clip", info=probe(path))


@pytest.mark.parametrize(
    "name,bucket",
    [
        ("16x9", (288, 512)),
        ("9x16", (512, 288)),
        ("4x3", (336, 448)),
        ("1x1", (384, 384)),
        ("21x9", (256, 592)),
    ],
)
def test_clip_targets_for_common_aspects(clips, name, bucket):
    pm, plugin, args = configured(SMALL)
    clip = clip_of(clips[name])
    (target,) = pm.hook.cogvx_clip_targets(clip=clip, args=args, model=V10, stages=None)
    assert (target.height, target.width) == bucket
    assert target.tag("bucket") == f"{bucket[1]}x{bucket[0]}"
    top, left, crop_h, crop_w = target.crop
    assert 0 <= top and top + crop_h <= clip.info.height and 0 <= left and left + crop_w <= clip.info.width
    assert 1 - crop_h * crop_w / (clip.info.height * clip.info.width) <= 0.03 + 1e-9
    assert max(target.height / crop_h, target.width / crop_w) <= 1.25
    # 40 frames at 24 fps give 14 at --fps 8: the 13-frame rung, every third frame.
    assert target.frame_indices == tuple(range(0, 37, 3))
    assert V10.valid_frame_count(target.num_frames)


def test_16_9_clip_trains_at_exactly_the_run_size(clips):
    pm, _, args = configured(SMALL)
    (target,) = pm.hook.cogvx_clip_targets(clip=clip_of(clips["16x9"]), args=args, model=V10, stages=None)
    assert (target.width, target.height, target.crop) == (512, 288, (0, 0, 288, 512))


@pytest.mark.parametrize(
    "name,reason",
    [
        ("tiny_32x32", r"too small: 32x32 would be enlarged"),
        ("wide_8x1", r"aspect 8.00:1 \(256x32\) is too far from every bucket"),
        ("tall_1x8", r"aspect 1:8.00 \(32x256\) is too far from every bucket"),
        ("three_frames", r"too small: 64x64 .*; too short: 3 frames"),
    ],
)
def test_bad_clips_are_skipped_with_their_reasons(clips, name, reason):
    pm, _, args = configured(SMALL)
    with pytest.raises(SkipClip, match=reason):
        pm.hook.cogvx_clip_targets(clip=clip_of(clips[name]), args=args, model=V10, stages=None)


def test_random_crop_is_fixed_per_clip_by_the_seed(clips):
    def crop(seed: int, path) -> tuple:
        argv = [
            "--bucket_crop",
            "random",
            "--bucket_seed",
            str(seed),
            "--buckets",
            "256x256",
            "--bucket_max_crop",
            "0.5",
        ]
        pm, _, args = configured([*SMALL, *argv])
        return pm.hook.cogvx_clip_targets(clip=clip_of(path), args=args, model=V10, stages=None)[0].crop

    assert crop(1, clips["16x9"]) == crop(1, clips["16x9"])
    assert len({crop(seed, clips["16x9"]) for seed in range(8)}) > 1


def test_video_reshape_mode_sets_the_crop_position(clips):
    """The script's --video_reshape_mode: random crops as --bucket_crop random does, none keeps
    the whole picture in a bucket of its aspect, or skips the clip saying why."""
    wide = ["--buckets", "256x256", "--bucket_max_crop", "0.5"]

    def target(path, *argv):
        pm, _, args = configured([*SMALL, *argv])
        return pm.hook.cogvx_clip_targets(clip=clip_of(path), args=args, model=V10, stages=None)[0]

    randoms = {
        target(clips["16x9"], *wide, "--video_reshape_mode", "random", "--bucket_seed", str(s)).crop
        for s in range(6)
    }
    assert len(randoms) > 1
    assert target(clips["16x9"], *wide).crop == (0, 112, 288, 288)  # center
    assert target(clips["16x9"], *wide, "--video_reshape_mode", "random", "--bucket_crop", "center").crop == (
        0,
        112,
        288,
        288,
    )
    whole = target(clips["16x9"], "--video_reshape_mode", "none")
    assert (whole.width, whole.height, whole.crop) == (512, 288, (0, 0, 288, 512))
    with pytest.raises(SkipClip, match=r"no crop \(--video_reshape_mode none\): aspect 1.78:1 .* too far"):
        target(clips["16x9"], *wide, "--video_reshape_mode", "none")
    with pytest.raises(UsageError, match="--video_reshape_mode must be one of center, random, none"):
        configured([*SMALL, "--video_reshape_mode", "stretch"])


def test_explicit_frame_counts_and_fps(clips):
    pm, _, args = configured([*SMALL, "--bucket_frames", "9", "--fps", "24"])
    (target,) = pm.hook.cogvx_clip_targets(clip=clip_of(clips["4x3"]), args=args, model=V10, stages=None)
    assert target.frame_indices == tuple(range(9))


# -- the batch sampler -------------------------------------------------------------------------


def sample(index: int, width: int, height: int, frames: int) -> Sample:
    info = VideoInfo(width=width, height=height, num_frames=100, fps=8.0)
    target = Target(
        height=height, width=width, frame_indices=tuple(range(frames)), crop=(0, 0, height, width)
    )
    return Sample(Clip(index=index, path=f"clip{index}.mp4", prompt="p", info=info), target)


SAMPLES = (
    [sample(i, 512, 288, 13) for i in range(7)]
    + [sample(7 + i, 288, 512, 13) for i in range(4)]
    + [sample(11 + i, 512, 288, 5) for i in range(5)]
    + [sample(16 + i, 384, 384, 13) for i in range(2)]
)


def test_batch_sampler_groups_by_latent_shape():
    pm, plugin, args = configured([*SMALL, "--train_batch_size", "2"])
    sampler = pm.hook.cogvx_batch_sampler(
        samples=SAMPLES, batch_size=2, num_replicas=2, args=args, model=V10, stages=None
    )
    assert isinstance(sampler, BucketBatchSampler) and plugin.sampler is sampler
    assert len(sampler) % 2 == 0
    for batch in sampler:
        assert len({V10.latent_shape(SAMPLES[i].target.num_frames, SAMPLES[i].target.height, SAMPLES[i].target.width) for i in batch}) == 1  # fmt: skip


def test_token_budget_sizes_batches_per_shape():
    budget = 3 * (V10.tokens((4, 36, 64)) + 226)
    pm, _, args = configured([*SMALL, "--bucket_token_budget", str(budget)])
    sampler = pm.hook.cogvx_batch_sampler(
        samples=SAMPLES, batch_size=1, num_replicas=1, args=args, model=V10, stages=None
    )
    sizes = {row.latent: row.batch_size for row in sampler.describe(SAMPLES, V10).rows}
    assert sizes[(4, 36, 64)] == 3
    assert sizes[(2, 36, 64)] == 5  # budget allows 6, the bucket has 5 clips
    assert sizes[(4, 48, 48)] == 2  # budget allows 3, the bucket has 2


@pytest.mark.parametrize(
    "argv,replicas,samples,message",
    [
        ([], 1, [], "no clip can be used"),
        (["--bucket_remainder", "drop"], 1, SAMPLES[:3], "drop leaves no batch"),
        (["--bucket_remainder", "partial"], 2, SAMPLES, "partial' needs a single process"),
    ],
)
def test_batch_sampler_refuses_clearly(argv, replicas, samples, message):
    pm, _, args = configured([*SMALL, *argv])
    with pytest.raises(UsageError, match=message):
        pm.hook.cogvx_batch_sampler(
            samples=samples, batch_size=4, num_replicas=replicas, args=args, model=V10, stages=None
        )


# -- resuming through the script's loop ---------------------------------------------------------


def train(
    replicas: int, accumulation: int, epochs: int, stop_after: int | None = None, state: dict | None = None
):
    """The stock script's loop around the plugin, one manager per rank, every rank in step.

    Returns the batches each rank trained on and, with ``stop_after``, the state saved at that
    optimizer step (the run then dies right after the checkpoint).
    """
    argv = [*SMALL, "--train_batch_size", "2", "--gradient_accumulation_steps", str(accumulation)]
    ranks = []
    for rank in range(replicas):
        pm, plugin, args = configured(argv)
        sampler = pm.hook.cogvx_batch_sampler(
            samples=SAMPLES, batch_size=2, num_replicas=replicas, args=args, model=V10, stages=None
        )
        ranks.append((pm, BatchSamplerShard(sampler, replicas, rank) if replicas > 1 else sampler))
    per_process = len(ranks[0][1])
    steps_per_epoch = math.ceil(per_process / accumulation)
    global_step, first_epoch, micro = 0, 0, 0
    if state is not None:  # accelerator.load_state, after the DataLoader exists
        for pm, _ in ranks:
            pm.hook.cogvx_load_state_dict(state=state["aspect_bucket"])
        global_step = state["global_step"]
        first_epoch = global_step // steps_per_epoch
        micro = state["accelerator_step"]  # accelerate restores its micro-step counter
    trained = [[] for _ in ranks]
    for _epoch in range(first_epoch, epochs):
        epoch_batches = [list(loader) for _, loader in ranks]
        for i in range(len(epoch_batches[0])):
            for rank, batches in enumerate(epoch_batches):
                trained[rank].append(batches[i])
            micro += 1
            end = i == len(epoch_batches[0]) - 1
            if micro % accumulation == 0 or end:  # accelerate syncs at the end of the data too
                global_step += 1
                if global_step == stop_after:
                    (saved,) = [
                        s for s in ranks[0][0].hook.cogvx_state_dict(step=global_step) if s is not None
                    ]
                    checkpoint = {"aspect_bucket": json.loads(json.dumps(saved)), "global_step": global_step}
                    checkpoint["accelerator_step"] = 0 if end else micro
                    return trained, checkpoint
            if end:
                micro = 0
            for pm, _ in ranks:
                pm.hook.cogvx_step_end(step=global_step, logs={}, accelerator=None)
            if global_step >= epochs * steps_per_epoch:
                break
    return trained, None


@pytest.mark.parametrize("replicas,accumulation", [(1, 1), (1, 3), (2, 1), (2, 2)])
def test_resume_continues_at_the_exact_batch(replicas, accumulation):
    epochs = 3
    uninterrupted, _ = train(replicas, accumulation, epochs)
    steps = epochs * math.ceil(len(uninterrupted[0]) / epochs / accumulation)
    for stop_after in sorted({1, 2, steps // 3, steps // 2, steps - 1}):
        before, checkpoint = train(replicas, accumulation, epochs, stop_after=stop_after)
        after, _ = train(replicas, accumulation, epochs, state=checkpoint)
        for rank in range(replicas):
            assert before[rank] + after[rank] == uninterrupted[rank], (stop_after, rank)


def test_state_loaded_before_the_sampler_exists_is_applied_when_it_is_built():
    pm, _, args = configured(SMALL)
    earlier = pm.hook.cogvx_batch_sampler(
        samples=SAMPLES, batch_size=2, num_replicas=1, args=args, model=V10, stages=None
    )
    state = {"global_step": 12, "sampler": earlier.state_dict(len(earlier) + 3)}
    pm, _, args = configured(SMALL)
    pm.hook.cogvx_load_state_dict(state=state)
    sampler = pm.hook.cogvx_batch_sampler(
        samples=SAMPLES, batch_size=2, num_replicas=1, args=args, model=V10, stages=None
    )
    assert list(sampler) == earlier.batches_for_epoch(1)[3:]


def test_lora_metadata_lists_the_trained_shapes():
    pm, _, args = configured(SMALL)
    pm.hook.cogvx_batch_sampler(
        samples=SAMPLES, batch_size=2, num_replicas=1, args=args, model=V10, stages=None
    )
    [metadata] = [m for m in pm.hook.cogvx_lora_metadata(args=args) if "trained_shapes" in m]
    assert {(s["width"], s["height"], s["frames"], s["samples"]) for s in metadata["trained_shapes"]} == {
        (512, 288, 13, 7),
        (288, 512, 13, 4),
        (512, 288, 5, 5),
        (384, 384, 13, 2),
    }


# -- the plan report ---------------------------------------------------------------------------


def test_plan_report(clips, tmp_path):
    # The report is built from the core's planning and the sampler hook, as `cogvx-ext plan` does.
    pm, _, args = configured([*SMALL, "--train_batch_size", "2"])
    entries = [ListingEntry(i, str(path), name) for i, (name, path) in enumerate(clips.items())]
    run = run_context(pm.hook, args, V10, num_processes=2)
    samples, skipped = plan_samples(pm.hook, entries, run, progress=False)
    missing = Skipped(str(tmp_path / "missing.mp4"), "file does not exist")
    listing = [*entries, missing]
    report = build_report(samples, [*skipped, missing], run, pm.hook)
    data = json.loads(json.dumps(report_to_json(report)))
    by_path = {entry["path"]: entry for entry in data["clips"]}
    assert len(by_path) == len(listing)
    ok = by_path[str(clips["16x9"])]
    assert ok["status"] == "ok" and "reason" not in ok
    assert (ok["width"], ok["height"], ok["frames"], ok["crop"], ok["bucket"]) == (
        512,
        288,
        13,
        0.0,
        "512x288",
    )
    assert ok["source"] == {
        "width": 512,
        "height": 288,
        "stored": "512x288",
        "display": "512x288",
        "rotation": 0,
        "sample_aspect": "1:1",
        "frames": 40,
        "fps": 24.0,
        "decoder": "decord",
    }
    for name, reason in [
        ("not_a_video", "not a video file"),
        ("truncated", "corrupt or truncated"),
        ("zero_frames", "no video stream"),
        ("one_frame", "only one frame"),
        ("tiny_32x32", "too small"),
        ("tall_1x8", "too far from every bucket"),
    ]:
        entry = by_path[str(clips[name])]
        assert entry["status"] == "skipped" and reason in entry["reason"]
        assert entry["width"] is entry["height"] is entry["frames"] is entry["crop"] is None
    assert by_path[str(tmp_path / "missing.mp4")]["reason"] == "file does not exist"
    summary = data["summary"]
    assert summary["used"] == 5 and summary["skipped"] == len(listing) - 5
    assert summary["batches_per_epoch"] % 2 == 0
    assert summary["steps_per_epoch"] == summary["batches_per_epoch"] // 2
    assert 0 <= summary["crop"]["mean"] <= summary["crop"]["p95"] <= summary["crop"]["max"] <= 0.03
    assert sum(b["clips"] for b in data["buckets"]) == 5

    text = format_report(report)
    assert "size" in text and "tokens/sample" in text and "batches/epoch" in text
    assert "512x288" in text and "crop:" in text and "upscale:" in text
    assert f"{tmp_path / 'missing.mp4'}: file does not exist" in text
