"""The plan's report: per clip, per bucket and per stage, built from the same code training runs."""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cogvx_ext.data.clips import Sample, VideoInfo
from cogvx_ext.data.context import RunContext
from cogvx_ext.data.planning import latent_shape_key
from cogvx_ext.data.sampling import sampler_report
from cogvx_ext.model.facts import ModelInfo


@dataclass(frozen=True)
class ClipPlan:
    """One clip's fate. ``width``/``height``/``frames`` are the target's; ``crop`` is the fraction
    of the source picture cut away; ``upscale`` > 1 means the clip is enlarged."""

    path: str
    status: str  # "ok", "skipped", or "unusable" (a clip the script's own data path would get as it is)
    reason: str | None = None
    source: VideoInfo | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    crop: float | None = None
    upscale: float | None = None
    bucket: str | None = None
    prompt: str | None = None  # the caption it trains with (None: the listing gave none)


@dataclass(frozen=True)
class BucketRow:
    width: int
    height: int
    frames: int
    latent: tuple[int, int, int]
    clips: int
    tokens: int  # video tokens per sample (the text adds TEXT_TOKENS)
    batch_size: int
    batches: int  # per epoch (per pass over a stage), all processes, before rounding to the processes
    stage: int | None = None
    memory_bytes: int | None = None  # estimated peak accelerator memory of a step (plan --memory)
    snr_shift: float | None = None  # the SNR shift its batches train with (a plugin's cogvx_snr_shift)


@dataclass(frozen=True)
class StageRow:
    """One stage of the schedule: when it runs and what it costs.

    ``tokens_per_sample`` is the mean video tokens of the stage's samples as batched,
    ``tokens_per_step`` the mean tokens (video and text) an optimizer step processes over all
    processes and accumulated batches, ``compute_share`` ``steps x tokens_per_step`` over the
    run's total: a token-proportional estimate (attention grows faster than that, so large
    stages cost somewhat more than their share says).
    """

    index: int
    label: str
    area: int
    start_step: int
    steps: int
    shapes: int
    tokens_per_sample: int
    tokens_per_step: int
    compute_share: float | None


@dataclass
class PlanReport:
    clips: list[ClipPlan]
    buckets: list[BucketRow]
    batches_per_epoch: int = 0  # all processes, as len(batch sampler)
    steps_per_epoch: int = 0  # optimizer steps, as the script computes them
    num_replicas: int = 1
    gradient_accumulation_steps: int = 1
    text_tokens: int = 226
    plugins: list[str] = field(default_factory=list)
    stages: list[StageRow] = field(default_factory=list)
    total_steps: int | None = None  # optimizer steps of the run (--max_train_steps, or epochs)
    memory: dict[str, Any] | None = None  # plan --memory: the setup, and the sampler's budget if any
    # "plugins": a chosen plugin reads the data (cogvx_ext.data); "script": the script's own
    # VideoDataset does, and data_path_note says what that means.
    data_path: str = "plugins"
    data_path_note: str | None = None
    model: dict[str, str] | None = None  # name, rules and where they came from (describe_model)
    rounded: list[str] = field(default_factory=list)  # the run's sizes the plan rounds (rounded_sizes)
    sampler_note: str | None = None  # the sampler's rows are a guess (it does not describe itself)

    @property
    def ok(self) -> list[ClipPlan]:
        return [c for c in self.clips if c.status == "ok"]

    @property
    def skipped(self) -> list[ClipPlan]:
        return [c for c in self.clips if c.status == "skipped"]

    @property
    def unusable(self) -> list[ClipPlan]:
        return [c for c in self.clips if c.status == "unusable"]


def script_reads_the_data(report: PlanReport, note: str) -> None:
    """No chosen plugin reads the data: the script's own ``VideoDataset`` skips nothing, so a clip
    cogvx-ext would skip is one the script stops on (or trains as it is): not skipped, unusable."""
    from dataclasses import replace

    report.data_path, report.data_path_note = "script", note
    report.clips = [replace(c, status="unusable") if c.status == "skipped" else c for c in report.clips]


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def stats(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": sum(values) / len(values), "p95": _percentile(values, 95), "max": max(values)}


def _clip_plan(sample: Sample) -> ClipPlan:
    info, target = sample.clip.info, sample.target
    _, _, crop_h, crop_w = target.crop
    return ClipPlan(
        path=sample.clip.path,
        status="ok",
        source=info,
        width=target.width,
        height=target.height,
        frames=target.num_frames,
        crop=1.0 - (crop_h * crop_w) / (info.height * info.width),
        upscale=max(target.height / crop_h, target.width / crop_w),
        bucket=target.tag("bucket") or f"{target.width}x{target.height}",
        prompt=sample.clip.prompt,
    )


def _snr_shift_rule(hook: Any, run: RunContext):
    """``latent_shape -> shift`` when a chosen plugin answers ``cogvx_snr_shift``, else None."""
    from cogvx_ext.model.facts import find_snr_shift
    from cogvx_ext.plugin.snr_shift import plugins_shift, shift_rule

    if not plugins_shift(hook):
        return None
    args = run.args
    base = find_snr_shift(
        getattr(args, "pretrained_model_name_or_path", None), run.model, getattr(args, "revision", None)
    )
    return shift_rule(hook, run.model, base, run)


def build_report(samples: Sequence[Sample], skipped: Iterable[Any], run: RunContext, hook: Any) -> PlanReport:
    """Report on planned samples and skipped clips (objects with ``path`` and ``reason``).

    Builds the batch sampler through the ``cogvx_batch_sampler`` hook, exactly as training does,
    for ``run.num_processes`` processes, and reads its batches through the sampler report protocol
    (``cogvx_ext.data.sampling.sampler_report``), whoever made the sampler.
    """
    args, model, num_replicas = run.args, run.model, run.num_processes
    clips = [_clip_plan(s) for s in samples]
    for item in skipped:
        clips.append(
            ClipPlan(
                path=str(item.path),
                status="skipped",
                reason=str(item.reason),
                prompt=getattr(item, "prompt", None),
            )
        )
    batch_size = int(getattr(args, "train_batch_size", 1))
    accumulation = max(1, int(getattr(args, "gradient_accumulation_steps", 1)))
    report = PlanReport(
        clips=clips, buckets=[], num_replicas=num_replicas, gradient_accumulation_steps=accumulation
    )
    if not samples:
        return report
    stages = run.stages
    sampler = hook.cogvx_batch_sampler(
        samples=list(samples),
        batch_size=batch_size,
        num_replicas=num_replicas,
        args=args,
        model=model,
        stages=stages,
        run=run,
    )
    shapes = {}
    for sample in samples:
        t = sample.target
        shapes[latent_shape_key(sample, model)] = (t.num_frames, t.height, t.width)
    described = sampler_report(sampler, samples, model, batch_size)
    if described.memory_budget is not None:
        report.memory = {
            "budget_bytes": described.memory_budget.bytes,
            "margin": described.memory_budget.margin,
        }
    if not described.described:
        report.sampler_note = (
            f"the batch sampler ({type(sampler).__name__}) does not describe itself: batch sizes and counts "
            "assume --train_batch_size (derive it from cogvx_ext.api.EpochBatchSampler, or give it describe())"
        )
    shift_for = _snr_shift_rule(hook, run)
    for row in described.rows:
        frames, height, width = shapes[tuple(row.latent)]
        report.buckets.append(
            BucketRow(
                width,
                height,
                frames,
                tuple(row.latent),
                row.clips,
                model.tokens(row.latent),
                row.batch_size,
                row.batches,
                row.stage,
                snr_shift=shift_for(tuple(row.latent)) if shift_for else None,
            )  # fmt: skip
        )
    report.batches_per_epoch = len(sampler) if sampler is not None else sum(r.batches for r in described.rows)
    report.buckets.sort(key=lambda row: (row.stage or 0, -row.clips, -row.frames, -row.width * row.height))
    per_process = math.ceil(report.batches_per_epoch / num_replicas)
    report.steps_per_epoch = math.ceil(per_process / accumulation)
    report.text_tokens = model.text_tokens
    report.plugins = [name for name, _ in hook_plugin_names(hook)]
    max_steps = getattr(args, "max_train_steps", None)
    report.total_steps = (
        int(max_steps)
        if max_steps
        else int(getattr(args, "num_train_epochs", 1) or 1) * report.steps_per_epoch
    )
    if stages:
        report.stages = _stage_rows(stages, report, num_replicas * accumulation)
    return report


def _stage_rows(stages: Sequence[Any], report: PlanReport, batches_per_step: int) -> list[StageRow]:
    rows = []
    for i, stage in enumerate(stages):
        mine = [b for b in report.buckets if (b.stage or 0) == i]
        samples = sum(b.batches * b.batch_size for b in mine)
        batches = sum(b.batches for b in mine)
        video = sum(b.batches * b.batch_size * b.tokens for b in mine)
        end = stages[i + 1].start_step if i + 1 < len(stages) else report.total_steps
        steps = max(0, min(end, report.total_steps) - stage.start_step)
        per_batch = (video + samples * report.text_tokens) / batches if batches else 0
        rows.append(
            StageRow(
                index=i,
                label=stage.label,
                area=stage.area,
                start_step=stage.start_step,
                steps=steps,
                shapes=len(mine),
                tokens_per_sample=round(video / samples) if samples else 0,
                tokens_per_step=round(per_batch * batches_per_step),
                compute_share=None,
            )
        )
    total = sum(r.steps * r.tokens_per_step for r in rows)
    return [
        StageRow(**{**r.__dict__, "compute_share": (r.steps * r.tokens_per_step / total) if total else None})
        for r in rows
    ]


def describe_model(model: ModelInfo, source: str) -> dict[str, str]:
    from cogvx_ext.model.facts import describe_rules

    return {"name": model.name, "rules": describe_rules(model), "source": source}


def rounded_sizes(args: argparse.Namespace, model: ModelInfo, buckets: Sequence[BucketRow]) -> list[str]:
    """``--width``/``--height`` that are no multiples of 16 and a ``--max_num_frames`` the model does
    not take, as the plan has them: each ``flag value -> what is planned (the rule)``."""
    found = []
    width, height = getattr(args, "width", None), getattr(args, "height", None)
    multiple = model.pixel_multiple
    if width and height and (width % multiple or height % multiple):
        near = (int(width / multiple + 0.5) * multiple, int(height / multiple + 0.5) * multiple)
        changed = ", ".join(
            f"--{flag} {given} -> {new}"
            for flag, given, new in (("width", width, near[0]), ("height", height, near[1]))
            if given != new
        )
        if any((b.width, b.height) == near for b in buckets):
            found.append(f"{changed} ({near[0]}x{near[1]}: sides are multiples of {multiple})")
        else:
            found.append(f"{changed}: buckets of {width}x{height}'s area (sides are multiples of {multiple})")
    frames = getattr(args, "max_num_frames", None)
    if frames and not model.valid_frame_count(frames):
        counts = [n for n in range(frames, 4, -1) if model.valid_frame_count(n)]
        rule = "4k+1 with an even latent count" if model.patch_size_t else "4k+1"
        if counts and buckets and max(b.frames for b in buckets) <= counts[0]:
            found.append(f"--max_num_frames {frames} -> {counts[0]} (frame counts are {rule})")
    return found


def hook_plugin_names(hook: Any) -> list[tuple[str, Any]]:
    """The chosen plugins behind a hook relay, for the report's header (core defaults left out)."""
    names = {}
    for caller_name in dir(hook):
        caller = getattr(hook, caller_name)
        if caller_name.startswith("cogvx_") and hasattr(caller, "get_hookimpls"):
            for impl in caller.get_hookimpls():
                if not impl.plugin_name.startswith("cogvx_ext."):
                    names[impl.plugin_name] = impl.plugin
    return sorted(names.items())


def add_memory(
    report: PlanReport, setup: Any, size: tuple[int, int] | None = None, tiling_on: bool = False
) -> None:
    """Each bucket row's estimated peak at its batch size (``cogvx_ext.model.memory.estimate``), the
    run's reserved estimate and a verdict per common card (``cogvx_ext.model.memory.cards``).

    ``size``: the run's ``(--width, --height)``, to word an area change as those flags;
    ``tiling_on``: the script's ``--enable_tiling``."""
    from dataclasses import replace

    from cogvx_ext.model.memory.cards import RESERVE_SOURCE, card_verdicts, encode_note, reserved_bytes
    from cogvx_ext.model.memory.estimate import Run, estimate

    rows, peaks, validation, planned = [], [], None, []
    for row in report.buckets:
        found = estimate(setup, row.latent, row.batch_size)
        rows.append(replace(row, memory_bytes=found.peak))
        peaks.append(found.peak)
        validation = found.validation_peak
        planned.append(Run(setup, tuple(row.latent), row.batch_size))
    report.buckets = rows
    largest = max(rows, key=lambda r: (r.memory_bytes, r.tokens), default=None)
    verdicts = card_verdicts(planned, size)
    encoding = _encoding(report, setup, tiling_on) if rows else None
    report.memory = {
        **(report.memory or {}),
        "setup": setup.describe(),
        "peak_bytes": max(peaks, default=None),
        "largest_bucket": None if largest is None else f"{largest.width}x{largest.height}x{largest.frames}",
        "largest_batch_size": None if largest is None else largest.batch_size,
        "validation_peak_bytes": validation,
        "stage_peak_bytes": {
            str(stage): max(r.memory_bytes for r in rows if (r.stage or 0) == stage)
            for stage in sorted({r.stage or 0 for r in rows})
        },
        "reserved_bytes": None if not peaks else reserved_bytes(max(peaks)),
        "reserved_rule": RESERVE_SOURCE,
        "cards": {str(v.gb): v.to_json() for v in verdicts},
        "encode": None if encoding is None else encoding.to_json(),
    }
    if encoding is not None:
        latent_cache = "latent_cache" in report.plugins
        for verdict in verdicts:
            state, words = encode_note(encoding, verdict.card_bytes, latent_cache, tiling_on)
            card = report.memory["cards"][str(verdict.gb)]
            card["encode"] = state
            if words:
                card["text"] += f"; {words}"


def _encoding(report: PlanReport, setup: Any, tiling_on: bool) -> Any:
    """Encoding the largest picture of the plan (the VAE's activations grow with the area); the
    tiled figure too when the untiled encode at a run's start would not fit the smallest card."""
    from cogvx_ext.model.memory.cards import CARDS, HEADROOM, reserved_bytes
    from cogvx_ext.model.memory.encoding import estimate_encoding

    row = max(report.buckets, key=lambda r: (r.width * r.height, r.frames))
    found = estimate_encoding(setup, row.frames, row.height, row.width)
    smallest = min(card for _, card, _ in CARDS)
    if tiling_on or reserved_bytes(found.training_start_peak) > smallest * (1 - HEADROOM):
        found = estimate_encoding(setup, row.frames, row.height, row.width, tiled=True)
    return found
