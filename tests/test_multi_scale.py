"""multi_scale: scaled copies of every target, one drawn per clip and pass with a seeded generator."""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict

import pytest
from tests_support import HERE, read_events, run_context
from tests_support import configured as support_configured

from cogvx_ext.base.errors import UsageError
from cogvx_ext.data.clips import ListingEntry, Target
from cogvx_ext.data.planning import latent_shape_key, plan_samples
from cogvx_ext.data.stages import StagedBatchSampler, alternative_groups
from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.testing import tiny_transformer_config, write_clip, write_dataset
from cogvx_ext_plugins.aspect_bucket import AspectBucket
from cogvx_ext_plugins.multi_scale import MultiScale, parse_scales, scaled_targets
from cogvx_ext_plugins.progressive_resize import ProgressiveResize
from cogvx_ext_plugins.rope_rescale import RopeRescale

V10 = ModelInfo.from_config(tiny_transformer_config("5b"))


def test_parse_scales():
    assert parse_scales("0.5,0.75,1") == [1.0, 0.75, 0.5]
    assert parse_scales("0.5") == [1.0, 0.5]  # the bucket itself is always one of the choices
    for text, message in [("0.5,big", "'big' is not a number"), ("0", "not a fraction"), ("1.5", "not a fraction"),
                          ("1", "at least one scale below 1")]:  # fmt: skip
        with pytest.raises(UsageError, match=message) as caught:
            parse_scales(text)
        assert "\n" not in str(caught.value) and str(caught.value).startswith("--multi_scale_areas: ")


def test_scaled_targets_keep_frames_aspect_and_sixteen_pixel_sides():
    target = Target(
        576, 1024, tuple(range(49)), (12, 40, 1056, 1878), (("bucket", "1024x576"), ("stage", "1"))
    )
    full, three_quarters, half = scaled_targets(target, [1.0, 0.75, 0.5])
    assert full == Target(576, 1024, target.frame_indices, target.crop, (*target.tags, ("scale", "1")))
    for copy, scale in ((three_quarters, 0.75), (half, 0.5)):
        assert copy.height % 16 == copy.width % 16 == 0
        assert abs(copy.height * copy.width / (576 * 1024) - scale) < 0.03
        assert copy.frame_indices == target.frame_indices
        assert copy.tags == (
            ("bucket", f"{copy.width}x{copy.height}"),
            ("stage", "1"),
            ("scale", f"{scale:g}"),
        )
        top, left, h, w = copy.crop  # inside the bucket's crop, trimmed to the copy's exact aspect
        assert 12 <= top and top + h <= 12 + 1056 and 40 <= left and left + w <= 40 + 1878
        assert abs(w / h - copy.width / copy.height) < 1 / min(h, w) + 1e-9
        assert (1056 - h) + (1878 - w) <= 0.03 * 1878
    assert (half.height, half.width) == (400, 720)
    # Tiny targets do not repeat a size: 32x32 at 0.75 rounds back to 32x32.
    assert [
        (t.height, t.width) for t in scaled_targets(Target(32, 32, (0,), (0, 0, 32, 32)), [1.0, 0.75, 0.5])
    ] == [
        (32, 32),
        (16, 16),
    ]


def script_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_cogvideox_lora.py")
    for flag, kind, default in [
        ("--height", int, 144), ("--width", int, 256), ("--fps", int, 8), ("--max_num_frames", int, 9),
        ("--skip_frames_start", int, 0), ("--skip_frames_end", int, 0), ("--seed", int, None),
        ("--train_batch_size", int, 1), ("--gradient_accumulation_steps", int, 1),
    ]:  # fmt: skip
        parser.add_argument(flag, type=kind, default=default)
    return parser


def configured(argv, *plugins):
    # rope_rescale: the scales train at other sizes than --height/--width, which RoPE must follow.
    return support_configured(script_parser(), argv, (*plugins, RopeRescale()), V10)


def test_requires_a_sampler_that_batches_by_shape():
    pm, args = configured([], MultiScale())
    needs = [need for answer in pm.hook.cogvx_requires(args=args, model=V10) for need in answer]
    assert (
        "shape_batches",
        "multi_scale trains several sizes per clip: add aspect_bucket to --plugins",
    ) in needs
    pm, args = configured([], AspectBucket())
    assert ["shape_batches"] in pm.hook.cogvx_provides(args=args)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    sizes = [(256, 144), (144, 256), (192, 144), (160, 160), (336, 144), (256, 144), (144, 256)]
    return [write_clip(root / f"c{i}.mp4", w, h, 17, fps=8, seed=i) for i, (w, h) in enumerate(sizes)]


def planned(argv, clips, *plugins):
    pm, args = configured(argv, *plugins)
    entries = [ListingEntry(i, str(path), f"clip {i}") for i, path in enumerate(clips)]
    run = run_context(pm.hook, args, V10)
    samples, skipped = plan_samples(pm.hook, entries, run, progress=False)
    assert not skipped
    stages = run.stages
    sampler = pm.hook.cogvx_batch_sampler(
        samples=samples, batch_size=1, num_replicas=2, args=args, model=V10, stages=stages
    )
    return samples, sampler


def test_one_scale_per_clip_and_pass_seeded_the_same_on_every_rank(clips):
    samples, sampler = planned(["--seed", "1"], clips, AspectBucket(), MultiScale())
    assert len(samples) == 3 * len(clips) and len(alternative_groups(samples)) == len(clips)
    assert isinstance(sampler, StagedBatchSampler)
    # One pass over every clip at full size (7 batches of 1), a multiple of 2 processes.
    assert len(sampler) == 8
    _, other_rank = planned(["--seed", "1"], clips, AspectBucket(), MultiScale())
    epochs = [sampler.batches_for_epoch(e) for e in range(12)]
    assert epochs == [other_rank.batches_for_epoch(e) for e in range(12)]
    scales_seen = defaultdict(Counter)
    for batches in epochs:
        for batch in batches:
            assert len({latent_shape_key(samples[i], V10) for i in batch}) == 1
            for i in batch:
                scales_seen[samples[i].clip.index][samples[i].target.tag("scale")] += 1
    # Every clip trains at every scale over the epochs; the generator does not favour one.
    assert all(set(seen) == {"1", "0.75", "0.5"} for seen in scales_seen.values())
    totals = sum(scales_seen.values(), Counter())
    assert min(totals.values()) > 0.2 * sum(totals.values())
    _, reseeded = planned(["--seed", "2"], clips, AspectBucket(), MultiScale())
    assert reseeded.batches_for_epoch(0) != epochs[0]


def test_several_scales_per_aspect_and_stages_combine(clips):
    samples, sampler = planned(
        ["--progressive_stages", "160x96:0,256x144:4"],
        clips,
        AspectBucket(),
        MultiScale(),
        ProgressiveResize(),
    )
    assert len(samples) == 2 * 3 * len(clips)
    by_clip_stage = defaultdict(set)
    for s in samples:
        by_clip_stage[s.clip.index, s.target.tag("stage")].add((s.target.height, s.target.width))
        assert (s.target.height > s.target.width) == (s.clip.info.height > s.clip.info.width) or (
            s.clip.info.height == s.clip.info.width
        )
    assert all(len(sizes) == 3 for sizes in by_clip_stage.values())
    steps = sampler.steps_per_epoch
    for epoch in range(4):
        for position, batch in enumerate(sampler.batches_for_epoch(epoch)):
            step = sampler.step_of(epoch * sampler.batches_per_process + position // 2)
            assert {samples[i].target.tag("stage") for i in batch} == {"0" if step < 4 else "1"}
    assert steps == 4


def test_plan_and_lora_metadata_count_every_scale(clips):
    samples, sampler = planned([], clips, AspectBucket(), MultiScale())
    rows = sampler.describe(samples, V10).rows
    assert sum(r.clips for r in rows) == len(samples)
    assert sum(r.batches for r in rows) == pytest.approx(len(clips), abs=len(rows))  # expected per pass


# -- end to end ------------------------------------------------------------------------------------

RECORDER = f"{HERE / 'plugins' / 'recorder.py'}:Recorder"
MIXED = [(256, 144, 17), (144, 256, 17), (192, 144, 17), (160, 160, 17), (336, 144, 17)]


@pytest.mark.slow
def test_multi_scale_trains_several_scales_per_aspect(tiny_models, t2v_trainer, train, tmp_path):
    data = write_dataset(tmp_path / "data", MIXED, prompts=[f"clip {i}" for i in range(len(MIXED))])
    record, out = tmp_path / "events", tmp_path / "out"
    args = [
        "--pretrained_model_name_or_path", tiny_models["5b"], "--instance_data_root", data,
        "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--height", 144, "--width", 256, "--max_num_frames", 9, "--fps", 8,
        "--train_batch_size", 1, "--max_train_steps", 15, "--output_dir", out, "--seed", 0,
        "--rank", 4, "--lora_alpha", 4, "--learning_rate", "1e-3",
        "--plugins", f"{RECORDER},aspect_bucket,rope_rescale,multi_scale", "--recorder_out", record,
    ]  # fmt: skip
    result = train(t2v_trainer, args)
    assert result.returncode == 0, result.stderr[-6000:]
    events = read_events(record)["events-rank0.jsonl"]
    # 1, 0.75 and 0.5 of each clip's bucket, each encoded once (the recorder's own wrapper sits
    # inside multi_scale's and sees each clip's bucket target before it is scaled).
    encoded = Counter(e["path"] for e in events if e["event"] == "encode_sample")
    assert len(encoded) == len(MIXED) and set(encoded.values()) == {3}
    shapes = [tuple(e["latent_shape"]) for e in events if e["event"] == "transformer_forward" and e["grad"]]
    assert len(shapes) == 15
    # Several scales of one aspect: the same orientation and (nearly) the same aspect, other areas.
    by_aspect = defaultdict(set)
    for _, h, w in shapes:
        by_aspect[round(w / h, 1)].add(h * w)
    assert max(len(areas) for areas in by_aspect.values()) >= 2
    assert len(set(shapes)) > len(MIXED)
    outputs = [e for e in events if e["event"] == "transformer_output" and e["grad"]]
    assert all(e["rope_equals_pipeline"] for e in outputs)
    meta = json.loads((out / "cogvx_ext.json").read_text())
    assert meta["settings"]["multi_scale_areas"] == [1.0, 0.75, 0.5]
    assert len(meta["settings"]["trained_shapes"]) > len(MIXED)


@pytest.mark.slow
def test_multi_scale_without_a_shape_sampler_stops_at_start(tiny_models, t2v_trainer, train, tmp_path):
    args = [
        "--pretrained_model_name_or_path", tiny_models["2b"], "--instance_data_root", tmp_path,
        "--caption_column", "prompts.txt", "--video_column", "videos.txt", "--output_dir", tmp_path / "out",
        "--plugins", "multi_scale",
    ]  # fmt: skip
    result = train(t2v_trainer, args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "cogvx-ext: 2b model: multi_scale trains several sizes per clip: add aspect_bucket to --plugins"
    )
