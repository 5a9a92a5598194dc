"""``cogvx-ext plan``: the bucket plan of a dataset, from clip headers only, before a long run.

It is made by the code training uses: the chosen plugins' ``cogvx_clip_targets`` decide every clip
(through ``cogvx_ext.data.dataset.plan_samples``) and their ``cogvx_batch_sampler`` builds the batches;
nothing here decides anything again. A sampler that describes itself with a ``buckets`` list
(``key``, ``clips``, ``batch_size``, ``batches``, as aspect_bucket's does, and ``stage`` with a
stage schedule) gets its own rows; without a sampler (one shape, the script's DataLoader) the
script's arithmetic is shown. With a schedule (``cogvx_stages``) the report starts with it: each
stage's steps, tokens, and estimated share of the run's compute.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cogvx_ext.data.clips import Sample, VideoInfo
from cogvx_ext.data.dataset import latent_shape_key
from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.model.memory import format_bytes


@dataclass(frozen=True)
class ClipPlan:
    """One clip's fate. ``width``/``height``/``frames`` are the target's; ``crop`` is the fraction
    of the source picture cut away; ``upscale`` > 1 means the clip is enlarged."""

    path: str
    status: str  # "ok" or "skipped"
    reason: str | None = None
    source: VideoInfo | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    crop: float | None = None
    upscale: float | None = None
    bucket: str | None = None


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

    @property
    def ok(self) -> list[ClipPlan]:
        return [c for c in self.clips if c.status == "ok"]

    @property
    def skipped(self) -> list[ClipPlan]:
        return [c for c in self.clips if c.status == "skipped"]


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
    )


def build_report(
    samples: Sequence[Sample],
    skipped: Iterable[Any],
    args: argparse.Namespace,
    model: ModelInfo,
    hook: Any,
    num_replicas: int = 1,
) -> PlanReport:
    """Report on planned samples and skipped clips (objects with ``path`` and ``reason``).

    Builds the batch sampler through the ``cogvx_batch_sampler`` hook, exactly as training does.
    """
    clips = [_clip_plan(s) for s in samples]
    for item in skipped:
        clips.append(ClipPlan(path=str(item.path), status="skipped", reason=str(item.reason)))
    batch_size = int(getattr(args, "train_batch_size", 1))
    accumulation = max(1, int(getattr(args, "gradient_accumulation_steps", 1)))
    report = PlanReport(
        clips=clips, buckets=[], num_replicas=num_replicas, gradient_accumulation_steps=accumulation
    )
    if not samples:
        return report
    stages = hook.cogvx_stages(args=args)
    sampler = hook.cogvx_batch_sampler(
        samples=list(samples),
        batch_size=batch_size,
        num_replicas=num_replicas,
        args=args,
        model=model,
        stages=stages,
    )
    shapes, counts = {}, {}
    for sample in samples:
        key = latent_shape_key(sample, model)
        t = sample.target
        shapes[key] = (t.num_frames, t.height, t.width)
        counts[key] = counts.get(key, 0) + 1
    budget = getattr(sampler, "memory_budget", None)
    if budget:
        report.memory = {"budget_bytes": budget["bytes"], "margin": budget["margin"]}
    if sampler is not None and hasattr(sampler, "buckets"):
        rows = [(b.key, b.clips, b.batch_size, b.batches, getattr(b, "stage", None)) for b in sampler.buckets]
        report.batches_per_epoch = len(sampler)
    else:
        # The script's own DataLoader: shuffled, batches of --train_batch_size, the last one short.
        rows = [(key, n, batch_size, math.ceil(n / batch_size), None) for key, n in counts.items()]
        report.batches_per_epoch = len(sampler) if sampler is not None else sum(r[3] for r in rows)
    for key, n, size, batches, stage in rows:
        frames, height, width = shapes[key]
        report.buckets.append(
            BucketRow(width, height, frames, key, n, model.tokens(key), size, batches, stage)
        )
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


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  "
        + "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in [header, *rows]
    ]


def format_report(report: PlanReport) -> str:
    """The plan as text: the bucket table, crop and upscale statistics, every skipped clip."""
    ok, skipped = report.ok, report.skipped
    used = len({c.path for c in ok})
    # Stages and scales make several samples of one clip: count clips, and say how many samples.
    samples = f"{len(ok)} samples in " if len(ok) > used else ""
    lines = [
        f"cogvx-ext plan ({', '.join(report.plugins) or 'stock sizes'}): {used + len(skipped)} clips, {used} used, {len(skipped)} skipped; "
        f"{samples}{len({b.latent for b in report.buckets})} shapes; {report.num_replicas} process(es)"
    ]
    if report.stages:
        lines.append(
            f"schedule: {len(report.stages)} stages over {report.total_steps} optimizer steps "
            "(compute: token-proportional estimate)"
        )
        header = (
            "stage",
            "from step",
            "steps",
            "size",
            "shapes",
            "tokens/sample",
            "tokens/step",
            "compute",
        )
        rows = [
            (
                str(r.index),
                str(r.start_step),
                str(r.steps),
                r.label,
                str(r.shapes),
                f"{r.tokens_per_sample}+{report.text_tokens}",
                str(r.tokens_per_step),
                "-" if r.compute_share is None else _pct(r.compute_share),
            )
            for r in report.stages
        ]
        lines.extend(_table(header, rows))
        lines.append(
            "  (size: WIDTHxHEIGHT, or an area in px; shapes: latent shapes in the stage; tokens/step: video and "
            "text tokens of one optimizer step over all processes; compute: steps x tokens/step, share of the run)"
        )
    if report.buckets:
        staged = any(b.stage is not None for b in report.buckets)
        header = ("size", "frames", "latent f,h,w", "clips", "tokens/sample", "batch", "batches/epoch")
        if staged:
            header = ("stage", *header[:-1], "batches/pass")
        with_memory = any(b.memory_bytes is not None for b in report.buckets)
        if with_memory:
            header = (*header, "peak memory")
        rows = [
            (
                *((str(b.stage),) if staged else ()),
                f"{b.width}x{b.height}",
                str(b.frames),
                ",".join(map(str, b.latent)),
                f"{b.clips}*" if b.clips < b.batch_size else str(b.clips),
                f"{b.tokens}+{report.text_tokens}",
                str(b.batch_size),
                str(b.batches),
                *((format_bytes(b.memory_bytes),) if with_memory else ()),
            )
            for b in report.buckets
        ]
        lines.extend(_table(header, rows))
        lines.append(
            "  (size: WIDTHxHEIGHT in pixels; latent: frames, height, width of the VAE latent; tokens/sample: video "
            f"tokens + {report.text_tokens} text tokens the transformer attends over; batch: samples per batch)"
        )
        if any(b.clips < b.batch_size for b in report.buckets):
            lines.append(
                "  * fewer clips than the batch size: the bucket's batches reuse its clips to fill up "
                "(or stay short or are dropped, as the sampler's remainder setting says)"
            )
        if staged:
            rounding = " (one pass over the final stage, each clip at full size)"
        else:
            extra = report.batches_per_epoch - sum(b.batches for b in report.buckets)
            rounding = (
                f" ({extra:+d} so that each of the {report.num_replicas} processes takes the same number of "
                "batches; the extra ones reuse clips)"
                if extra > 0
                else f" ({extra:+d} so that each of the {report.num_replicas} processes takes the same number)"
                if extra
                else ""
            )
        lines.append(
            f"  batches per epoch: {report.batches_per_epoch}{rounding}; optimizer steps per epoch: "
            f"{report.steps_per_epoch} (gradient accumulation {report.gradient_accumulation_steps})"
        )
    if report.memory:
        lines.extend(_memory_lines(report))
    crop = stats([c.crop for c in ok])
    upscale = stats([c.upscale for c in ok])
    if crop:
        lines.append(f"crop:    mean {_pct(crop['mean'])}  p95 {_pct(crop['p95'])}  max {_pct(crop['max'])}")
    if upscale:
        lines.append(
            f"upscale: mean {upscale['mean']:.2f}x  p95 {upscale['p95']:.2f}x  max {upscale['max']:.2f}x"
            "  (below 1: downscaled)"
        )
    turned = {c.path: c.source for c in ok if c.source and _display_differs(c.source)}
    if turned:
        lines.append(
            f"display geometry ({len(turned)} clips shown otherwise than stored; bucketed as shown):"
        )
        lines.extend(
            f"  {path}: stored {info.stored_size}, rotation {info.rotation}, sample aspect {info.sample_aspect}"
            f" -> display {info.display_size}"
            for path, info in turned.items()
        )
    read_by_pyav = sorted({c.path for c in ok if c.source and c.source.decoder == "pyav"})
    if read_by_pyav:
        lines.append(f"read with PyAV ({len(read_by_pyav)} clips decord cannot read, or reads wrongly):")
        lines.extend(f"  {path}" for path in read_by_pyav)
    if skipped:
        lines.append(f"skipped ({len(skipped)}):")
        lines.extend(f"  {c.path}: {c.reason}" for c in skipped)
    return "\n".join(lines)


def _display_differs(info: VideoInfo) -> bool:
    return bool(info.rotation) or info.sample_aspect != "1:1"


def _memory_lines(report: PlanReport) -> list[str]:
    memory = report.memory
    lines = []
    if "setup" in memory:
        lines.append(f"memory: estimated peak allocated per step; {memory['setup']}")
        lines.append(
            f"  largest: {format_bytes(memory['peak_bytes'])}"
            + (
                f"; validation pipeline: {format_bytes(memory['validation_peak_bytes'])}"
                if memory.get("validation_peak_bytes")
                else ""
            )
            + "; not counted: allocator reserve and fragmentation, CUDA context, kernel workspaces"
        )
        stages = memory.get("stage_peak_bytes") or {}
        if len(stages) > 1:
            lines.append(
                "  largest per stage: " + ", ".join(f"{i}: {format_bytes(v)}" for i, v in stages.items())
            )
    if "budget_bytes" in memory:
        lines.append(
            f"  batch sizes from --bucket_memory_budget {format_bytes(memory['budget_bytes'])} "
            f"with a {memory['margin']:.0%} margin"
        )
    return lines


def add_memory(report: PlanReport, setup: Any) -> None:
    """Each bucket row's estimated peak at its batch size (``cogvx_ext.model.memory.estimate``)."""
    from dataclasses import replace

    from cogvx_ext.model.memory import estimate

    rows, peaks, validation = [], [], None
    for row in report.buckets:
        found = estimate(setup, row.latent, row.batch_size)
        rows.append(replace(row, memory_bytes=found.peak))
        peaks.append(found.peak)
        validation = found.validation_peak
    report.buckets = rows
    report.memory = {
        **(report.memory or {}),
        "setup": setup.describe(),
        "peak_bytes": max(peaks, default=None),
        "validation_peak_bytes": validation,
        "stage_peak_bytes": {
            str(stage): max(r.memory_bytes for r in rows if (r.stage or 0) == stage)
            for stage in sorted({r.stage or 0 for r in rows})
        },
    }


def report_to_json(report: PlanReport) -> dict[str, Any]:
    """The plan as a JSON-ready object: ``clips`` (one entry per sample or skipped clip), ``buckets``, ``summary``."""
    clips = []
    for c in report.clips:
        entry: dict[str, Any] = {
            "path": c.path,
            "status": c.status,
            "width": c.width,
            "height": c.height,
            "frames": c.frames,
            "crop": None if c.crop is None else round(c.crop, 6),
            "upscale": None if c.upscale is None else round(c.upscale, 6),
            "bucket": c.bucket,
        }
        if c.reason is not None:
            entry["reason"] = c.reason
        if c.source is not None:
            entry["source"] = {
                "width": c.source.width,  # display size: upright, square pixels
                "height": c.source.height,
                "stored": c.source.stored_size,
                "display": c.source.display_size,
                "rotation": c.source.rotation,
                "sample_aspect": c.source.sample_aspect,
                "frames": c.source.num_frames,
                "fps": c.source.fps,
                "decoder": c.source.decoder,
            }
        clips.append(entry)
    return {
        "clips": clips,
        "buckets": [
            {
                "width": b.width,
                "height": b.height,
                "frames": b.frames,
                "latent": list(b.latent),
                "clips": b.clips,
                "tokens_per_sample": b.tokens,
                "text_tokens": report.text_tokens,
                "batch_size": b.batch_size,
                "batches_per_epoch": b.batches,
                **({"stage": b.stage} if b.stage is not None else {}),
                **({"memory_bytes": b.memory_bytes} if b.memory_bytes is not None else {}),
            }
            for b in report.buckets
        ],
        "stages": [
            {
                "stage": r.index,
                "size": r.label,
                "area": r.area,
                "start_step": r.start_step,
                "steps": r.steps,
                "shapes": r.shapes,
                "tokens_per_sample": r.tokens_per_sample,
                "tokens_per_step": r.tokens_per_step,
                "compute_share": None if r.compute_share is None else round(r.compute_share, 6),
            }
            for r in report.stages
        ],
        "summary": {
            "clips": len(report.clips),
            "used": len(report.ok),
            "skipped": len(report.skipped),
            "batches_per_epoch": report.batches_per_epoch,
            "steps_per_epoch": report.steps_per_epoch,
            "num_replicas": report.num_replicas,
            "gradient_accumulation_steps": report.gradient_accumulation_steps,
            "total_steps": report.total_steps,
            "crop": stats([c.crop for c in report.ok]),
            "upscale": stats([c.upscale for c in report.ok]),
            "plugins": report.plugins,
            **({"memory": report.memory} if report.memory else {}),
        },
    }


def run_plan(argv: list[str]) -> int:
    """``cogvx-ext plan [the script's data flags] [plugin flags] [--json PATH]``."""
    from cogvx_ext.data.dataset import plan_samples, read_script_data
    from cogvx_ext.script.offline import script_data_parser, start_offline_run

    parser = script_data_parser("cogvx-ext plan", "The bucket plan of a dataset, from clip headers only.")
    parser.add_argument(
        "--json", metavar="PATH", default=None, help="also write the plan as JSON (- for stdout)"
    )
    parser.add_argument(
        "--chart",
        metavar="PNG",
        default=None,
        help="also draw the plan: clips and tokens per bucket, skipped clips by reason, the stage schedule "
        "(needs matplotlib: pip install 'cogvx-ext[chart]')",
    )
    # The run's length, for a stage schedule's share of the compute (the script's flags and defaults).
    parser.add_argument("--max_train_steps", type=int, default=None)
    parser.add_argument("--num_train_epochs", type=int, default=1)
    parser.add_argument(
        "--memory",
        action="store_true",
        help="estimate each bucket's peak accelerator memory per training step (cogvx_ext.model.memory: "
        "fake tensors on the CPU, no GPU and no weights)",
    )
    from cogvx_ext.model.memory import add_setup_arguments

    add_setup_arguments(parser)
    run = start_offline_run(parser, argv, default_plugins="aspect_bucket,rope_rescale")
    args = run.args
    if args.chart:
        from cogvx_ext.cli.chart import check_chart_available

        check_chart_available()
    entries, skipped = read_script_data(args)
    samples, more = plan_samples(run.hook, entries, args, run.model, progress=sys.stderr.isatty())
    report = build_report(samples, skipped + more, args, run.model, run.hook, args.num_processes)
    if args.memory and report.buckets:
        from cogvx_ext.model.memory import setup_for_plugins

        add_memory(report, setup_for_plugins(run.pm, args, args.model))
    if args.json == "-":
        print(json.dumps(report_to_json(report), indent=2))
    else:
        print(format_report(report))
        if args.json:
            from cogvx_ext.base.io import write_json_atomic

            write_json_atomic(args.json, report_to_json(report))
            print(f"plan written to {args.json}")
    if args.chart:
        from cogvx_ext.cli.chart import write_chart

        write_chart(report, args.chart)
        print(f"chart drawn in {args.chart}", file=sys.stderr if args.json == "-" else sys.stdout)
    if report.skipped:  # a plugin may stop here, as it stops training (aspect_bucket's --bucket_strict)
        run.hook.cogvx_clips_skipped(skipped=report.skipped, when="plan", args=args)
    return 0 if report.ok else 1
