"""progressive_resize: the schedule flag, per-stage targets, the staged sampler's arithmetic, resume,
re-warm-up, the plan's schedule, and (slow) the training scripts switching exactly at the boundary."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from tests_support import HERE, ok, read_events, run_context, training_args
from tests_support import configured as support_configured

from cogvx_ext.base.errors import UsageError
from cogvx_ext.cli.plan.report import build_report
from cogvx_ext.cli.plan.text import format_report
from cogvx_ext.cli.plan.to_json import report_to_json
from cogvx_ext.data.clips import Clip, ListingEntry, Sample, Target, VideoInfo, stage_at
from cogvx_ext.data.context import RunContext
from cogvx_ext.data.planning import plan_samples
from cogvx_ext.data.stages import StagedBatchSampler
from cogvx_ext.data.video import probe
from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.testing import tiny_transformer_config, write_clip, write_dataset
from cogvx_ext_plugins.aspect_bucket import AspectBucket
from cogvx_ext_plugins.progressive_resize import ProgressiveResize, parse_stages, rewarm_factor
from cogvx_ext_plugins.rope_rescale import RopeRescale

V10 = ModelInfo.from_config(tiny_transformer_config("5b"))
V15 = ModelInfo.from_config(tiny_transformer_config("1.5-5B"))


# -- the flag --------------------------------------------------------------------------------------


def test_parse_stages():
    stages = parse_stages("512x288:0, 768x432:400 ,1024x576:1200")
    assert [(s.start_step, s.height, s.width, s.area) for s in stages] == [
        (0, 288, 512, 147456),
        (400, 432, 768, 331776),
        (1200, 576, 1024, 589824),
    ]
    assert [s.label for s in stages] == ["512x288", "768x432", "1024x576"]
    area, sized = parse_stages("147456:0:frames=17:batch=4,1024x576:100:tokens=60000:warmup=20", 5)
    assert (area.area, area.height, area.frames, area.batch_size, area.warmup_steps) == (
        147456,
        None,
        17,
        4,
        0,
    )
    assert (sized.token_budget, sized.warmup_steps) == (60000, 20)
    assert parse_stages("160x96:0,256x144:3", default_warmup=7)[1].warmup_steps == 7
    # An area keeps the run's aspect, in multiples of 16.
    assert area.size_for(576, 1024) == (288, 512)
    assert stage_at(stages, 399) == 0 and stage_at(stages, 400) == 1 and stage_at(stages, 10**6) == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no stage given"),
        ("288x512", "'288x512' is not SIZE:STEP"),
        ("288x512:zero", "'288x512:zero' is not SIZE:STEP"),
        ("288by512:0", "the size is not WIDTHxHEIGHT or an area"),
        ("288x:0", "the size is not WIDTHxHEIGHT"),
        ("500x288:0", r"sides must be positive multiples of 16 \(VAE 8 x patch 2\); nearest: 496x288"),
        ("100:0", "an area must be at least 256 pixels"),
        ("512x288:10,1024x576:100", "the first stage must start at step 0, not 10"),
        (
            "512x288:0,768x432:400,1024x576:400",
            "stage 2 \\('1024x576:400'\\) starts at step 400, not after stage 1",
        ),
        ("512x288:0,1024x576:0", "starts at step 0, not after stage 0"),
        ("512x288:0:speed=2", "unknown setting 'speed=2'"),
        ("512x288:0:frames=16", "frames must be 4k\\+1"),
        ("512x288:0:batch=0", "batch must be at least 1"),
        ("512x288:0:batch=2:batch=3", "batch is given twice"),
        ("512x288:0:warmup=10", "the first stage warms up with the script's --lr_warmup_steps"),
        ("512x288:0,1024x576:9:warmup=x", "warmup must be a whole number"),
    ],
)
def test_malformed_schedules_are_one_line_errors(text, message):
    with pytest.raises(UsageError, match=message) as caught:
        parse_stages(text)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("--progressive_stages: ")


# -- through a plugin manager ----------------------------------------------------------------------


def script_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_cogvideox_lora.py")
    for flag, kind, default in [
        ("--height", int, 480), ("--width", int, 720), ("--fps", int, 8), ("--max_num_frames", int, 49),
        ("--skip_frames_start", int, 0), ("--skip_frames_end", int, 0), ("--seed", int, None),
        ("--train_batch_size", int, 1), ("--gradient_accumulation_steps", int, 1),
        ("--max_train_steps", int, None), ("--num_train_epochs", int, 1),
    ]:  # fmt: skip
        parser.add_argument(flag, type=kind, default=default)
    return parser


def configured(argv, *plugins, model=V10):
    # rope_rescale: the stages train at other sizes than --height/--width, which RoPE must follow.
    return support_configured(script_parser(), argv, (*plugins, RopeRescale()), model)


def test_configure_stops_at_start_with_one_line():
    with pytest.raises(UsageError, match="start steps must increase") as caught:
        configured(["--progressive_stages", "160x96:0,256x144:3,320x192:2"], ProgressiveResize())
    assert "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="--progressive_warmup_steps must be at least 0"):
        configured(
            ["--progressive_stages", "160x96:0", "--progressive_warmup_steps", "-1"], ProgressiveResize()
        )


def test_inert_without_the_flag():
    pm, args = configured([], ProgressiveResize())
    assert pm.hook.cogvx_stages(args=args) is None
    assert not any(pm.hook.cogvx_requires(args=args, model=V10))  # rope_rescale's and its own: nothing


def test_requires_batch_rope_and_checks_frames_for_the_model():
    pm, args = configured(["--progressive_stages", "160x96:0,256x144:3"], ProgressiveResize())
    assert [("batch_rope", "add rope_rescale to --plugins")] in pm.hook.cogvx_requires(args=args, model=V10)
    with pytest.raises(UsageError, match="stage 0 \\(160x96\\): CogVideoX 1.5 cannot take 17 frames"):
        configured(["--progressive_stages", "160x96:0:frames=17,256x144:3"], ProgressiveResize(), model=V15)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    sizes = {"16x9": (256, 144), "9x16": (144, 256), "4x3": (192, 144), "1x1": (160, 160), "21x9": (336, 144)}
    return {name: write_clip(root / f"{name}.mp4", w, h, 17, fps=8, seed=i) for i, (name, (w, h)) in enumerate(sizes.items())}  # fmt: skip


def plan(pm, args, clips):
    entries = [ListingEntry(i, str(path), name) for i, (name, path) in enumerate(clips.items())]
    samples, skipped = plan_samples(pm.hook, entries, run_context(pm.hook, args, V10), progress=False)
    assert not skipped
    return samples


RUN = ["--height", "144", "--width", "256", "--max_num_frames", "9"]


def test_core_default_targets_one_shape_per_stage(clips):
    pm, args = configured([*RUN, "--progressive_stages", "160x96:0,23040:3:frames=5"], ProgressiveResize())
    clip = Clip(0, str(clips["9x16"]), "p", probe(clips["9x16"]))
    stages = pm.hook.cogvx_stages(args=args)
    first, second = pm.hook.cogvx_clip_targets(clip=clip, args=args, model=V10, stages=stages)
    assert (first.height, first.width, first.num_frames, first.tags) == (96, 160, 9, (("stage", "0"),))
    # An area keeps --height x --width's aspect (16:9); frames=5 caps the frames.
    assert (second.height, second.width, second.num_frames, second.tag("stage")) == (112, 208, 5, "1")
    # Cover and centre-crop, never a stretch: a portrait clip is cut to 16:9.
    top, left, h, w = first.crop
    assert abs(w / h - 160 / 96) < 0.02 and left == 0
    # Samples come stage by stage, the clips in order within each.
    samples = plan(pm, args, clips)
    assert [s.target.tag("stage") for s in samples] == ["0"] * 5 + ["1"] * 5
    assert [s.clip.index for s in samples] == [0, 1, 2, 3, 4] * 2


def test_aspect_bucket_targets_follow_each_stage_area(clips):
    pm, args = configured(
        [*RUN, "--progressive_stages", "160x96:0,256x144:3"], AspectBucket(), ProgressiveResize()
    )
    samples = plan(pm, args, clips)
    by = {(s.clip.prompt, s.target.tag("stage")): s.target for s in samples}
    assert (by["16x9", "0"].height, by["16x9", "0"].width) == (96, 160)  # the stage's own size is a bucket
    assert (by["16x9", "1"].height, by["16x9", "1"].width) == (144, 256)
    for name in ("9x16", "4x3", "1x1", "21x9", "16x9"):
        small, large = by[name, "0"], by[name, "1"]
        # Each stage at its own area; the clip keeps its orientation in both.
        assert abs(small.height * small.width / (96 * 160) - 1) < 0.15
        assert abs(large.height * large.width / (144 * 256) - 1) < 0.15
        assert (small.height > small.width) == (large.height > large.width)
        assert small.tag("bucket") == f"{small.width}x{small.height}"
    assert by["9x16", "0"].height > by["9x16", "0"].width


# -- the sampler, through the script's loop --------------------------------------------------------


def run_loop(
    make_sampler, replicas, accumulation, max_steps, stop_after=None, state=None, plugin="progressive"
):
    """The script's loop around samplers, one per rank, as accelerate shards and syncs them.

    Returns per rank the list of (optimizer step of the batch, batch) and, with ``stop_after``, the
    state saved at that step.
    """
    ranks = [make_sampler(rank) for rank in range(replicas)]  # (pm, sampler)
    loaders = [BatchSamplerShard(s, replicas, r) if replicas > 1 else s for r, (_, s) in enumerate(ranks)]
    steps_per_epoch = math.ceil(len(loaders[0]) / accumulation)
    epochs = math.ceil(max_steps / steps_per_epoch)
    global_step, first_epoch, micro = 0, 0, 0
    if state is not None:
        for pm, _ in ranks:
            pm.hook.cogvx_load_state_dict(state=state["plugin"])
        global_step = state["global_step"]
        first_epoch = global_step // steps_per_epoch
    trained = [[] for _ in ranks]
    for _epoch in range(first_epoch, epochs):
        epoch_batches = [list(loader) for loader in loaders]
        for i in range(len(epoch_batches[0])):
            for rank, batches in enumerate(epoch_batches):
                trained[rank].append((global_step, batches[i]))
            micro += 1
            end = i == len(epoch_batches[0]) - 1
            if micro % accumulation == 0 or end:
                global_step += 1
                if global_step == stop_after:
                    saved = [s for s in ranks[0][0].hook.cogvx_state_dict(step=global_step) if s is not None]
                    return trained, {"plugin": json.loads(json.dumps(saved[0])), "global_step": global_step}
            if end:
                micro = 0
            for pm, _ in ranks:
                pm.hook.cogvx_step_end(step=global_step, logs={}, accelerator=None, run=trained_with())
            if global_step >= max_steps:
                return trained, None
    return trained, None


def sample(index, width, height, frames, stage, scale=None):
    info = VideoInfo(width=width, height=height, num_frames=100, fps=8.0)
    tags = (("stage", str(stage)),) + ((("scale", scale),) if scale else ())
    target = Target(height, width, tuple(range(frames)), (0, 0, height, width), tags)
    return Sample(Clip(index=index, path=f"clip{index}.mp4", prompt="p", info=info), target)


SCHEDULE = "160x96:0,256x144:5,336x192:11"
# Seven clips: at stage 0 all 160x96, later in two aspects (a bucketed dataset's shapes).
STAGED = (
    [sample(i, 160, 96, 9, 0) for i in range(7)]
    + [sample(i, 256, 144, 9, 1) for i in range(5)] + [sample(i, 144, 256, 9, 1) for i in range(5, 7)]
    + [sample(i, 336, 192, 9, 2) for i in range(5)] + [sample(i, 192, 336, 9, 2) for i in range(5, 7)]
)  # fmt: skip


# Without buckets, one shape per stage: the landscape clips only.
LANDSCAPE = [s for s in STAGED if s.target.width > s.target.height]


def stage_of_batch(batch, samples):
    (stage,) = {samples[i].target.tag("stage") for i in batch}
    return int(stage)


def sampler_factory(replicas, accumulation, bucketed, batch=2):
    argv = ["--progressive_stages", SCHEDULE, "--train_batch_size", str(batch)]
    argv += ["--gradient_accumulation_steps", str(accumulation), "--seed", "3"]

    def make(rank):
        plugins = (AspectBucket(), ProgressiveResize()) if bucketed else (ProgressiveResize(),)
        pm, args = configured(argv, *plugins)
        samples = STAGED if bucketed else LANDSCAPE
        sampler = pm.hook.cogvx_batch_sampler(samples=samples, batch_size=batch, num_replicas=replicas, args=args,
                                              model=V10, stages=pm.hook.cogvx_stages(args=args))  # fmt: skip
        return pm, sampler

    return make


@pytest.mark.parametrize("bucketed", [True, False])
@pytest.mark.parametrize("replicas,accumulation", [(1, 1), (1, 2), (2, 1), (2, 3)])
def test_shape_changes_exactly_at_the_boundary_step(replicas, accumulation, bucketed):
    make = sampler_factory(replicas, accumulation, bucketed)
    _, sampler = make(0)
    assert isinstance(sampler, StagedBatchSampler) and len(sampler) % replicas == 0
    stages = parse_stages(SCHEDULE)
    samples = STAGED if bucketed else LANDSCAPE
    trained, _ = run_loop(make, replicas, accumulation, max_steps=25)
    for rank in trained:
        assert len({step for step, _ in rank}) == 25
        for step, batch in rank:
            assert stage_of_batch(batch, samples) == stage_at(stages, step), (step, batch)
            shapes = {(samples[i].target.height, samples[i].target.width) for i in batch}
            assert len(shapes) == 1 and len(batch) == 2
    # Every clip of a stage is seen: passes over the stage's clips, continued across epochs.
    late = [i for rank in trained for step, batch in rank if step >= 11 for i in batch]
    assert {samples[i].clip.index for i in late} == {
        s.clip.index for s in samples if s.target.tag("stage") == "2"
    }


@pytest.mark.parametrize("bucketed", [True, False])
@pytest.mark.parametrize("replicas,accumulation", [(1, 1), (1, 3), (2, 1), (2, 2)])
def test_resume_inside_any_stage_continues_at_the_exact_batch(replicas, accumulation, bucketed):
    make = sampler_factory(replicas, accumulation, bucketed)
    whole, _ = run_loop(make, replicas, accumulation, max_steps=20)
    for stop_after in (2, 4, 5, 6, 11, 13, 17):  # inside stages 0, 1 and 2, and at their starts
        before, checkpoint = run_loop(make, replicas, accumulation, 20, stop_after=stop_after)
        after, _ = run_loop(make, replicas, accumulation, 20, state=checkpoint)
        for rank in range(replicas):
            assert before[rank] + after[rank] == whole[rank], (stop_after, rank)


def test_length_is_one_pass_over_the_final_stage_and_constant():
    _, sampler = sampler_factory(2, 1, True, batch=2)(0)
    # Final stage: 5 + 2 clips in two shapes, batches of 2: 3 + 1 batches, a multiple of 2 processes.
    assert len(sampler) == 4
    assert [len(sampler.batches_for_epoch(e)) for e in range(6)] == [4] * 6
    assert [sampler.stage_at(e, p) for e in range(4) for p in range(0, 4, 2)] == [0, 0, 0, 0, 0, 1, 1, 1]


def test_fallback_refuses_several_shapes_in_a_stage():
    pm, args = configured(["--progressive_stages", SCHEDULE], ProgressiveResize())
    with pytest.raises(UsageError, match="stage 1 \\(256x144\\) has 2 latent shapes.*add aspect_bucket"):
        pm.hook.cogvx_batch_sampler(samples=STAGED, batch_size=1, num_replicas=1, args=args, model=V10,
                                    stages=pm.hook.cogvx_stages(args=args))  # fmt: skip


def test_stage_batch_sizes_and_token_budgets():
    budget = 3 * (V10.tokens((3, 18, 32)) + 226)
    pm, args = configured(["--progressive_stages", f"160x96:0:batch=4,256x144:5:tokens={budget},336x192:11"],
                          AspectBucket(), ProgressiveResize())  # fmt: skip
    sampler = pm.hook.cogvx_batch_sampler(samples=STAGED, batch_size=1, num_replicas=1, args=args, model=V10,
                                          stages=pm.hook.cogvx_stages(args=args))  # fmt: skip
    sizes = {(row.stage, row.latent): row.batch_size for row in sampler.describe(STAGED, V10).rows}
    assert sizes[0, (3, 12, 20)] == 4
    assert sizes[1, (3, 18, 32)] == 3 and sizes[1, (3, 32, 18)] == 2  # the budget, capped by the clips
    assert sizes[2, (3, 24, 42)] == 1


# -- step logs, re-warm-up -------------------------------------------------------------------------


class FakeAccelerator:
    def __init__(self, sync=True):
        self.num_processes = 1
        self.sync_gradients = sync
        self.is_local_main_process = True


def trained_with(*lr_schedulers):
    """A training run's context after ``accelerator.prepare`` (the adapter notes the schedulers)."""
    run = RunContext("train", num_processes=1, process_index=0)
    run.lr_schedulers.extend(lr_schedulers)
    return run


def test_step_end_logs_the_stage_and_tokens(capsys):
    plugin = ProgressiveResize()
    pm, args = configured(["--progressive_stages", "160x96:0,256x144:3"], plugin)
    pm.hook.cogvx_transformer_forward(transformer=None, inputs={}, latent_shape=(3, 12, 20), model=V10)
    logs = {}
    pm.hook.cogvx_step_end(step=3, logs=logs, accelerator=FakeAccelerator(sync=True), run=trained_with())
    assert logs == {"stage": 0, "tokens_per_sample": 3 * 6 * 10}  # the update that made step 3 was in stage 0
    pm.hook.cogvx_step_end(step=3, logs=logs, accelerator=FakeAccelerator(sync=False), run=trained_with())
    assert logs["stage"] == 1  # a micro-batch towards update 3
    assert "stage 1 (256x144) from optimizer step 3" in capsys.readouterr().err


def test_rewarm_multiplies_the_script_schedule_per_optimizer_step():
    from diffusers.optimization import get_scheduler

    stages = parse_stages("160x96:0,256x144:4:warmup=4,336x192:10")
    assert [rewarm_factor(stages, s) for s in range(2, 12)] == [1, 1, 0.25, 0.5, 0.75, 1, 1, 1, 1, 1]
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=2, num_training_steps=20)
    plugin = ProgressiveResize()
    pm, args = configured(["--progressive_stages", "160x96:0,256x144:4:warmup=4,336x192:10"], plugin)
    rates = [optimizer.param_groups[0]["lr"]]
    for step in range(1, 12):  # the script: optimizer step, scheduler step, global_step += 1, log
        optimizer.step()
        scheduler.step()
        pm.hook.cogvx_step_end(step=step, logs={}, accelerator=FakeAccelerator(), run=trained_with(scheduler))
        rates.append(optimizer.param_groups[0]["lr"])
    base = [min((k) / 2, 1) * (20 - k) / 18 if k >= 2 else k / 2 for k in range(12)]
    expected = [b * rewarm_factor(stages, k) for k, b in enumerate(base)]
    assert rates == pytest.approx(expected)
    assert scheduler.get_last_lr()[0] == pytest.approx(expected[-1])


def test_rewarm_survives_a_resume_inside_the_warm_up():
    from diffusers.optimization import get_scheduler

    flag = ["--progressive_stages", "160x96:0,256x144:4:warmup=4,336x192:10"]

    def fresh():
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = get_scheduler("constant", optimizer=optimizer)
        return optimizer, scheduler, configured(flag, ProgressiveResize())[0]

    def steps(optimizer, scheduler, pm, first, last):
        rates = []
        for step in range(first, last):
            rates.append(optimizer.param_groups[0]["lr"])  # the rate of update `step - 1` (0-based)
            optimizer.step()
            scheduler.step()
            pm.hook.cogvx_step_end(
                step=step, logs={}, accelerator=FakeAccelerator(), run=trained_with(scheduler)
            )
        return rates

    whole = steps(*fresh(), 1, 12)
    optimizer, scheduler, pm = fresh()
    before = steps(optimizer, scheduler, pm, 1, 6)  # checkpoint at step 5, inside the warm-up
    saved = json.loads(json.dumps(optimizer.state_dict(), default=float)), scheduler.state_dict()
    optimizer, scheduler, pm = fresh()
    optimizer.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    assert before + steps(optimizer, scheduler, pm, 6, 12) == pytest.approx(whole)
    assert whole == pytest.approx([1, 1, 1, 1, 0.25, 0.5, 0.75, 1, 1, 1, 1])  # updates 0-10


# -- the plan --------------------------------------------------------------------------------------


def test_plan_shows_the_schedule_with_tokens_and_compute_shares(clips):
    argv = [
        *RUN,
        "--progressive_stages",
        "160x96:0,256x144:3",
        "--max_train_steps",
        "10",
        "--train_batch_size",
        "1",
    ]
    pm, args = configured(argv, AspectBucket(), ProgressiveResize())
    samples = plan(pm, args, clips)
    report = build_report(samples, [], run_context(pm.hook, args, V10), pm.hook)
    first, second = report.stages
    assert (first.start_step, first.steps, second.start_step, second.steps) == (0, 3, 3, 7)
    assert first.tokens_per_sample < second.tokens_per_sample
    assert first.compute_share + second.compute_share == pytest.approx(1)
    assert second.compute_share == pytest.approx(
        7 * second.tokens_per_step / (3 * first.tokens_per_step + 7 * second.tokens_per_step)
    )
    assert {b.stage for b in report.buckets} == {0, 1}
    data = json.loads(json.dumps(report_to_json(report)))
    assert [s["start_step"] for s in data["stages"]] == [0, 3] and data["summary"]["total_steps"] == 10
    assert {b["stage"] for b in data["buckets"]} == {0, 1}
    text = format_report(report)
    assert "schedule: 2 stages over 10 optimizer steps" in text
    assert "tokens/step" in text and "compute" in text and "batches/pass" in text


def test_plan_command_with_a_schedule(tmp_path, capsys):
    from cogvx_ext.cli.plan.command import run_plan

    data = write_dataset(tmp_path / "data", [(256, 144, 17), (144, 256, 17), (192, 144, 17)])
    code = run_plan([
        "--instance_data_root", str(data), "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--height", "144", "--width", "256", "--max_num_frames", "9", "--train_batch_size", "1",
        "--plugins", "aspect_bucket,progressive_resize", "--progressive_stages", "160x96:0,256x144:40",
        "--max_train_steps", "100", "--json", str(tmp_path / "plan.json"),
        "--model", "2b",  # no RoPE: the stages need no rope_rescale
    ])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "schedule: 2 stages over 100 optimizer steps" in text
    stages = json.loads((tmp_path / "plan.json").read_text())["stages"]
    assert [(s["size"], s["start_step"], s["steps"]) for s in stages] == [
        ("160x96", 0, 40),
        ("256x144", 40, 60),
    ]
    assert stages[0]["compute_share"] < 0.4 < stages[1]["compute_share"]


def test_a_stage_that_never_runs_is_neither_planned_nor_encoded(tmp_path, capsys, caplog):
    from cogvx_ext.cli.plan.command import run_plan

    data = write_dataset(tmp_path / "data", [(256, 144, 17), (144, 256, 17)])
    code = run_plan([
        "--instance_data_root", str(data), "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--height", "144", "--width", "256", "--max_num_frames", "9", "--train_batch_size", "1",
        "--plugins", "aspect_bucket,rope_rescale,progressive_resize", "--progressive_stages", "160x96:0,256x144:40",
        "--max_train_steps", "40", "--json", str(tmp_path / "plan.json"),
    ])  # fmt: skip
    assert code == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [s["size"] for s in plan["stages"]] == ["160x96"]
    # One sample per clip: nothing of the late stage would be decoded or encoded.
    assert len([c for c in plan["clips"] if c["status"] == "ok"]) == 2
    assert "stage 1 (256x144) from step 40 at or after --max_train_steps 40: never run" in caplog.text


# -- end to end: the training scripts, tiny models -------------------------------------------------

RECORDER = f"{HERE / 'plugins' / 'recorder.py'}:Recorder"
MIXED = [(256, 144, 17), (144, 256, 17), (192, 144, 17), (160, 160, 17), (336, 144, 17)]
STAGES_E2E = "160x96:0,256x144:3"
# A test plugin: what each loop iteration logged to the trackers, with accelerate's sync flag.
LOG_PLUGIN = """
import json, os, torch
from cogvx_ext import hookimpl

class LogRecorder:
    def __init__(self):
        self.shape = None

    @hookimpl
    def cogvx_transformer_forward(self, latent_shape):
        if torch.is_grad_enabled():
            self.shape = list(latent_shape)

    @hookimpl(trylast=True)
    def cogvx_step_end(self, step, logs, accelerator):
        entry = {"step": step, "sync": bool(accelerator.sync_gradients), "shape": self.shape,
                 "logs": {k: v for k, v in logs.items() if k in ("stage", "tokens_per_sample", "lr")}}
        with open(os.environ["LOG_RECORDER_OUT"], "a") as f:
            f.write(json.dumps(entry) + "\\n")
"""


def script_args(model, data, out, *extra, steps=6):
    return training_args(
        model, data, out, "--progressive_stages", STAGES_E2E, *extra, height=144, width=256, steps=steps
    )


def training_shapes(directory) -> list[list[int]]:
    events = read_events(directory)["events-rank0.jsonl"]
    return [e["latent_shape"] for e in events if e["event"] == "transformer_forward" and e["grad"]]


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def e2e_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("progressive")
    data = write_dataset(root / "data", MIXED, prompts=[f"clip {i}" for i in range(len(MIXED))])
    plugin = root / "log_recorder.py"
    plugin.write_text(LOG_PLUGIN)
    return data, plugin


def stage_of_shape(shape) -> int:
    # Stage 0 buckets hold about 160x96 pixels (240 latent cells), stage 1 about 256x144 (576).
    return 0 if shape[1] * shape[2] < 400 else 1


def expected_stage(entry) -> int:
    """From accelerate's own sync flag: the update this micro-batch went into, then its stage."""
    update = entry["step"] - 1 if entry["sync"] else entry["step"]
    return 0 if update < 3 else 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "plugins, accumulation",
    [("rope_rescale,progressive_resize", 1), ("rope_rescale,progressive_resize", 2),
     ("aspect_bucket,rope_rescale,progressive_resize", 1), ("aspect_bucket,rope_rescale,progressive_resize", 2)],
)  # fmt: skip
def test_two_stages_switch_exactly_at_the_boundary(tiny_models, t2v_trainer, train, tmp_path, e2e_data,
                                                   plugins, accumulation):  # fmt: skip
    data, log_plugin = e2e_data
    record = tmp_path / "events"
    chosen = f"{RECORDER},{plugins},{log_plugin}:LogRecorder"
    args = script_args(tiny_models["5b"], data, tmp_path / "out", "--plugins", chosen,
                       "--recorder_out", record, "--gradient_accumulation_steps", accumulation,
                       "--progressive_warmup_steps", 2)  # fmt: skip
    result = ok(train(t2v_trainer, args, env={"LOG_RECORDER_OUT": str(tmp_path / "logs.jsonl")}))
    shapes = training_shapes(record)
    logs = log_lines(tmp_path / "logs.jsonl")
    assert len(logs) == len(shapes) and logs[-1]["step"] == 6
    assert [e["shape"] for e in logs] == shapes
    for entry in logs:
        assert stage_of_shape(entry["shape"]) == expected_stage(entry) == entry["logs"]["stage"], entry
        f, h, w = entry["shape"]
        assert entry["logs"]["tokens_per_sample"] == f * (h // 2) * (w // 2)
    assert {expected_stage(entry) for entry in logs} == {0, 1}
    # The script logs the rate of the coming update: re-warmed over stage 1's first two steps.
    warm = {3: 0.5e-3, 4: 1e-3}
    assert [e["logs"]["lr"] for e in logs[1:]] == pytest.approx([warm.get(e["step"], 1e-3) for e in logs[1:]])
    if "aspect_bucket" not in plugins:  # one shape per stage: 160x96, then 256x144
        assert {(expected_stage(e), tuple(e["shape"])) for e in logs} == {(0, (3, 12, 20)), (1, (3, 18, 32))}
    else:  # buckets of each stage's area; the portrait clip stays portrait in both
        events = read_events(record)["events-rank0.jsonl"]
        targets = {e["path"]: e["targets"] for e in events if e["event"] == "clip_targets"}
        (portrait,) = [t for path, t in targets.items() if "144x256" in path]
        assert len(portrait) == 2 and all(h > w for w, h, _ in portrait)
        assert all(len(t) == 2 for t in targets.values())
    events = read_events(record)["events-rank0.jsonl"]
    assert all(e["rope_equals_pipeline"] for e in events if e["event"] == "transformer_output" and e["grad"])
    assert "progressive_resize: stage 1 (256x144) from optimizer step 3" in result.stderr
    assert (
        "progressive_resize: stage 0 (160x96, from step 0): decoding and encoding 5 samples" in result.stderr
    )
    meta = json.loads((tmp_path / "out" / "cogvx_ext.json").read_text())
    assert [s["start_step"] for s in meta["settings"]["progressive_stages"]] == [0, 3]


@pytest.mark.slow
def test_two_ranks_switch_at_the_same_step(tiny_models, t2v_trainer, train, tmp_path):
    data = write_dataset(tmp_path / "data", [*MIXED, (256, 144, 17)], prompts=[f"c{i}" for i in range(6)])
    record = tmp_path / "events"
    args = script_args(tiny_models["5b"], data, tmp_path / "out", "--recorder_out", record,
                       "--plugins", f"{RECORDER},aspect_bucket,rope_rescale,progressive_resize")  # fmt: skip
    ok(train(t2v_trainer, args, nproc=2))
    ranks = read_events(record)
    assert sorted(ranks) == ["events-rank0.jsonl", "events-rank1.jsonl"]
    for events in ranks.values():
        shapes = [e["latent_shape"] for e in events if e["event"] == "transformer_forward" and e["grad"]]
        assert [stage_of_shape(s) for s in shapes] == [0, 0, 0, 1, 1, 1]
    # Each rank encoded its share of both stages: every sample once over the two ranks.
    encoded = [
        (e["path"], tuple(e["shapes"][0]))
        for ev in ranks.values()
        for e in ev
        if e["event"] == "encode_sample"
    ]
    assert len(encoded) == len(set(encoded)) == 12


@pytest.mark.slow
@pytest.mark.parametrize(
    "plugins", ["aspect_bucket,rope_rescale,progressive_resize", "rope_rescale,progressive_resize"]
)
def test_resume_inside_stage_1_and_stage_2(tiny_models, t2v_trainer, train, tmp_path, e2e_data, plugins):
    data, _ = e2e_data
    extra = ["--plugins", f"{RECORDER},{plugins}"]
    whole = tmp_path / "whole"
    ok(
        train(
            t2v_trainer, script_args(tiny_models["5b"], data, whole, *extra, "--recorder_out", whole / "ev")
        )
    )
    expected = training_shapes(whole / "ev")
    assert len(expected) == 6
    for stop in (2, 4):  # inside stage 1 (steps 0-2) and inside stage 2 (steps 3-5)
        part = tmp_path / f"part{stop}"
        first = [*extra, "--recorder_out", part / "ev1", "--checkpointing_steps", stop]
        ok(train(t2v_trainer, script_args(tiny_models["5b"], data, part, *first, steps=stop)))
        second = [*extra, "--recorder_out", part / "ev2", "--resume_from_checkpoint", "latest"]
        ok(train(t2v_trainer, script_args(tiny_models["5b"], data, part, *second)))
        assert training_shapes(part / "ev1") + training_shapes(part / "ev2") == expected, stop
        state = json.loads((part / f"checkpoint-{stop}" / "cogvx_ext_state.json").read_text())["plugins"]
        owner = (  # states are kept under what the plugin is, whatever it was called
            "cogvx_ext_plugins.aspect_bucket.plugin:AspectBucket"
            if "aspect_bucket" in plugins
            else "cogvx_ext_plugins.progressive_resize:ProgressiveResize"
        )
        assert state[owner]["sampler"]["stage"] == (0 if stop < 3 else 1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "stages, message",
    [
        (
            "160x96:0,250x144:3",
            "cogvx-ext: --progressive_stages: '250x144:3': sides must be positive multiples of 16",
        ),
        (
            "160x96:0,256x144:0",
            "cogvx-ext: --progressive_stages: stage 1 ('256x144:0') starts at step 0, not after",
        ),
        (
            "160x96:5,256x144:9",
            "cogvx-ext: --progressive_stages: the first stage must start at step 0, not 5",
        ),
        ("96x160-0", "cogvx-ext: --progressive_stages: '96x160-0' is not SIZE:STEP"),
        (  # the old height-first form on a 160x96 run
            "96x160:0,144x256:3",
            "cogvx-ext: --progressive_stages: '96x160:0' is 96 wide and 160 high, but the run is 256x144: "
            "sizes are WIDTHxHEIGHT (write 160x96, or an area such as 15360)",
        ),
    ],
)
def test_a_bad_schedule_stops_the_script_at_start(tiny_models, t2v_trainer, train, tmp_path, stages, message):
    args = [*script_args(tiny_models["5b"], tmp_path, tmp_path / "out", "--plugins", "rope_rescale,progressive_resize"),
            "--progressive_stages", stages]  # fmt: skip
    result = train(t2v_trainer, args)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
