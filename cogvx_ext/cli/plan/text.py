"""The plan as the console shows it: tables with WIDTHxHEIGHT sizes, a legend, skipped clips."""

from __future__ import annotations

from collections.abc import Sequence

from cogvx_ext.cli.plan.report import PlanReport, stats
from cogvx_ext.data.clips import VideoInfo
from cogvx_ext.model.memory.units import format_bytes


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
    ok, skipped, unusable = report.ok, report.skipped, report.unusable
    by_script = report.data_path == "script"
    used = len({c.path for c in ok})
    # Stages and scales make several samples of one clip: count clips, and say how many samples.
    samples = f"{len(ok)} samples in " if len(ok) > used else ""
    left_out = f"{len(unusable)} unusable" if by_script else f"{len(skipped)} skipped"
    lines = [f"data: {report.data_path_note}"] if by_script else []
    lines.append(
        f"cogvx-ext plan ({', '.join(report.plugins) or 'stock sizes'}): {used + len(skipped) + len(unusable)} "
        f"clips, {used} used, {left_out}; "
        f"{samples}{len({b.latent for b in report.buckets})} shapes; {report.num_replicas} process(es)"
    )
    if report.model:
        lines.append(
            f"model: {report.model['name']} ({report.model['rules']}; from {report.model['source']})"
        )
    if report.rounded:
        lines.append("rounded: " + "; ".join(report.rounded))
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
        with_shift = any(b.snr_shift is not None for b in report.buckets)
        if with_shift:
            header = (*header, "SNR shift")
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
                *((f"{b.snr_shift:.4g}",) if with_shift else ()),
            )
            for b in report.buckets
        ]
        lines.extend(_table(header, rows))
        lines.append(
            "  (size: WIDTHxHEIGHT in pixels; latent: frames, height, width of the VAE latent; tokens/sample: video "
            f"tokens + {report.text_tokens} text tokens the transformer attends over; batch: samples per batch"
            + ("; SNR shift: the noise schedule's snr_shift_scale for its batches" if with_shift else "")
            + ")"
        )
        if report.sampler_note:
            lines.append(f"  ! {report.sampler_note}")
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
        treated = (
            "the script reads them as stored: they train sideways or stretched"
            if by_script
            else "bucketed as shown"
        )
        lines.append(f"display geometry ({len(turned)} clips shown otherwise than stored; {treated}):")
        lines.extend(
            f"  {path}: stored {info.stored_size}, rotation {info.rotation}, sample aspect {info.sample_aspect}"
            f" -> display {info.display_size}"
            for path, info in turned.items()
        )
    read_by_pyav = sorted({c.path for c in ok if c.source and c.source.decoder == "pyav"})
    if read_by_pyav and by_script:
        lines.append(
            f"decord cannot read these, or reads them wrongly ({len(read_by_pyav)} clips; the script reads "
            "them with decord all the same):"
        )
    elif read_by_pyav:
        lines.append(f"read with PyAV ({len(read_by_pyav)} clips decord cannot read, or reads wrongly):")
        lines.extend(f"  {path}" for path in read_by_pyav)
    if skipped:
        lines.append(f"skipped ({len(skipped)}):")
        lines.extend(f"  {c.path}: {c.reason}" for c in skipped)
    if unusable:
        lines.append(
            f"unusable ({len(unusable)}; the script's own data path skips nothing: it stops on a clip it "
            "cannot read):"
        )
        lines.extend(f"  {c.path}: {c.reason}" for c in unusable)
    return "\n".join(lines)


def _display_differs(info: VideoInfo) -> bool:
    return bool(info.rotation) or info.sample_aspect != "1:1"


def _memory_lines(report: PlanReport) -> list[str]:
    memory = report.memory
    lines = []
    if "setup" in memory:
        lines.append(f"memory: estimated peak allocated per step; {memory['setup']}")
        lines.append(
            f"  largest: {format_bytes(memory['peak_bytes'])} allocated ({memory['largest_bucket']}, batch "
            f"{memory['largest_batch_size']})"
            + (
                f"; validation pipeline: {format_bytes(memory['validation_peak_bytes'])}"
                if memory.get("validation_peak_bytes")
                else ""
            )
        )
        lines.append(
            f"  reserved: about {format_bytes(memory['reserved_bytes'])} = allocated {memory['reserved_rule']}; "
            "not counted: kernel workspaces, NCCL buffers"
        )
        encode = memory.get("encode")
        if encode:
            tiled = encode.get("tiled_activation_bytes")
            lines.append(
                f"  encoding the clips (VAE, one video at a time; {encode['bucket']}, the largest picture): "
                f"{format_bytes(encode['activation_bytes'])} of activations"
                + (f" ({format_bytes(tiled)} with VAE tiling)" if tiled is not None else "")
                + f"; peak {format_bytes(encode['cache_fill_peak_bytes'])} in cogvx-ext cache fill (the VAE alone), "
                f"{format_bytes(encode['training_start_peak_bytes'])} at a training run's start (models loaded)"
                + (
                    f", {format_bytes(encode['tiled_training_start_peak_bytes'])} tiled"
                    if encode.get("tiled_training_start_peak_bytes")
                    else ""
                )
            )
        stages = memory.get("stage_peak_bytes") or {}
        if len(stages) > 1:
            lines.append(
                "  largest per stage: " + ", ".join(f"{i}: {format_bytes(v)}" for i, v in stages.items())
            )
        cards = memory.get("cards") or {}
        if cards:
            lines.append(
                "  GPU verdict (reserved estimate against the card's memory, as nvidia-smi reports it):"
            )
            names = {gb: f"{gb} GB ({v['card']})" for gb, v in cards.items()}
            width = max(len(n) for n in names.values())
            lines.extend(f"    {names[gb].ljust(width)}  {v['text']}" for gb, v in cards.items())
    if "budget_bytes" in memory:
        lines.append(
            f"  batch sizes from the sampler's memory budget, {format_bytes(memory['budget_bytes'])} "
            f"with a {memory['margin']:.0%} margin"
        )
    return lines
