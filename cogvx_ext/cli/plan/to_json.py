"""The plan as ``--json`` writes it."""

from __future__ import annotations

from typing import Any

from cogvx_ext.cli.plan.report import PlanReport, stats


def report_to_json(report: PlanReport) -> dict[str, Any]:
    """The plan as a JSON-ready object: ``clips`` (one entry per sample or skipped clip), ``buckets``, ``summary``."""
    clips = []
    for c in report.clips:
        entry: dict[str, Any] = {
            "path": c.path,
            "prompt": c.prompt,
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
        # "plugins": cogvx-ext reads the data (skips, display geometry, the plugins' sizes);
        # "script": the training script's own VideoDataset does, as data_path_note says.
        "data_path": report.data_path,
        "data_path_note": report.data_path_note,
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
                **({"snr_shift": b.snr_shift} if b.snr_shift is not None else {}),
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
            "unusable": len(report.unusable),
            "batches_per_epoch": report.batches_per_epoch,
            "steps_per_epoch": report.steps_per_epoch,
            "num_replicas": report.num_replicas,
            "gradient_accumulation_steps": report.gradient_accumulation_steps,
            "total_steps": report.total_steps,
            "crop": stats([c.crop for c in report.ok]),
            "upscale": stats([c.upscale for c in report.ok]),
            "plugins": report.plugins,
            **({"model": report.model} if report.model else {}),
            "rounded": report.rounded,
            **({"memory": report.memory} if report.memory else {}),
            **({"sampler_note": report.sampler_note} if report.sampler_note else {}),
        },
    }
