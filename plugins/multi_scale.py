"""multi_scale: every clip also trains at smaller scales of its own bucket.

``--multi_scale_areas 0.5,0.75,1`` gives each target (each bucket, in each stage of a progressive
schedule) copies at those fractions of its area: sides scaled by the square root, rounded to
multiples of 16, the same frames, and the bucket's crop trimmed by at most a few source pixels to
the scaled size's exact aspect (nothing is stretched). The copies are tagged ``("scale", "0.5")``
and so on (the full size ``("scale", "1")``); the batch sampler treats one clip's copies as
alternatives and trains one of them per pass, drawn with a seeded generator identical on every
rank (``cogvx_ext.api.choose_alternatives``). Multi-resolution robustness for the price of encoding the small
copies once; they cost less to train than the full size.

Needs a sampler that batches by shape (aspect_bucket). The entry point names the class.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from cogvx_ext.api import SCALE_TAG, ModelInfo, Target, UsageError, hookimpl

MULTIPLE = 16  # VAE 8 x patch 2
FLAG = "--multi_scale_areas"


def parse_scales(text: str) -> list[float]:
    """``"0.5,0.75"`` -> ``[1.0, 0.75, 0.5]``: fractions of the area in (0, 1], largest first, 1
    always included."""
    scales = {1.0}
    for item in (part.strip() for part in (text or "").split(",")):
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise UsageError(f"{FLAG}: '{item}' is not a number (e.g. {FLAG} 0.5,0.75,1)") from None
        if not 0 < value <= 1:
            raise UsageError(f"{FLAG}: {item} is not a fraction of the area in (0, 1] (e.g. 0.5,0.75,1)")
        scales.add(value)
    if len(scales) < 2:
        raise UsageError(f"{FLAG}: give at least one scale below 1 (e.g. 0.5,0.75,1)")
    return sorted(scales, reverse=True)


def scale_label(scale: float) -> str:
    return f"{scale:g}"


def trimmed_crop(crop: tuple[int, int, int, int], height: int, width: int) -> tuple[int, int, int, int]:
    """The centred part of ``crop`` (top, left, height, width) with the aspect ``width / height``."""
    top, left, crop_h, crop_w = crop
    if crop_w * height > width * crop_h:  # too wide: trim the sides
        new_w = max(1, round(crop_h * width / height))
        return (top, left + (crop_w - new_w) // 2, crop_h, new_w)
    new_h = max(1, round(crop_w * height / width))
    return (top + (crop_h - new_h) // 2, left, new_h, crop_w)


def scaled_targets(target: Target, scales: list[float], multiple: int = MULTIPLE) -> list[Target]:
    """``target`` at each scale of its area (the full size first), without repeated sizes."""
    out, seen = [], set()
    for scale in scales:
        factor = math.sqrt(scale)
        height = max(multiple, math.floor(target.height * factor / multiple + 0.5) * multiple)
        width = max(multiple, math.floor(target.width * factor / multiple + 0.5) * multiple)
        if scale == 1.0:
            height, width = target.height, target.width
        if (height, width) in seen:
            continue
        seen.add((height, width))
        tags = [(k, f"{width}x{height}" if k == "bucket" else v) for k, v in target.tags if k != SCALE_TAG]
        out.append(
            Target(
                height=height,
                width=width,
                frame_indices=target.frame_indices,
                crop=target.crop if scale == 1.0 else trimmed_crop(target.crop, height, width),
                tags=(*tags, (SCALE_TAG, scale_label(scale))),
            )
        )
    return out


class MultiScale:
    """The plugin; one instance per run."""

    def __init__(self) -> None:
        self.scales: list[float] = []

    @hookimpl
    def cogvx_add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(
            "multi_scale", "every clip also trains at smaller scales of its bucket, one drawn per epoch"
        )
        group.add_argument(
            FLAG,
            default="0.5,0.75,1",
            help="fractions of each bucket's area to train at (default 0.5,0.75,1; 1, the bucket itself, "
            "is always one of them); each epoch draws one per clip",
        )

    @hookimpl
    def cogvx_configure(self, args: argparse.Namespace) -> None:
        self.scales = parse_scales(args.multi_scale_areas)

    @hookimpl
    def cogvx_requires(self, model: ModelInfo) -> list[tuple[str, str]]:
        """``batch_rope`` on RoPE models, ``learned_posemb`` on 5b-I2V, and ``shape_batches``."""
        needs = [
            ("shape_batches", "multi_scale trains several sizes per clip: add aspect_bucket to --plugins")
        ]
        if model.rotary:
            needs.append(("batch_rope", "add rope_rescale to --plugins"))
        if model.learned_posemb:
            needs.append(("learned_posemb", "add posemb_adapt to --plugins"))
        return needs

    @hookimpl(wrapper=True)
    def cogvx_clip_targets(self, args: argparse.Namespace):
        """Adds copies of each target at smaller areas, tagged ``("scale", "0.5")``."""
        targets = yield
        if not targets:
            return targets
        scales = self.scales or parse_scales(getattr(args, "multi_scale_areas", "0.5,0.75,1"))
        return [copy for target in targets for copy in scaled_targets(target, scales)]

    @hookimpl
    def cogvx_training_settings(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"multi_scale_areas": self.scales or parse_scales(args.multi_scale_areas)}

    @hookimpl
    def cogvx_lora_metadata(self) -> dict[str, Any]:
        """``multi_scale_areas``."""
        return {"multi_scale_areas": self.scales}
