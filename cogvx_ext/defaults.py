"""The core's own hook implementations: what happens when no chosen plugin decides.

Registered in every run as ``cogvx_ext.defaults``, all ``trylast`` so any plugin goes first.
They reproduce the stock script's choices, except that a clip is never stretched.
"""

from __future__ import annotations

import argparse

from cogvx_ext.clips import Clip, Sample, Target
from cogvx_ext.errors import SkipClip
from cogvx_ext.hookspecs import hookimpl
from cogvx_ext.model import ModelInfo


def cover_crop_box(src_width: int, src_height: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The centred region of the source with the target's aspect: (top, left, height, width)."""
    scale = max(width / src_width, height / src_height)
    crop_h = min(src_height, round(height / scale))
    crop_w = min(src_width, round(width / scale))
    return ((src_height - crop_h) // 2, (src_width - crop_w) // 2, crop_h, crop_w)


class CoreDefaults:
    @hookimpl(trylast=True)
    def cogvx_clip_targets(self, clip: Clip, args: argparse.Namespace, model: ModelInfo) -> list[Target]:
        """The stock rule: one sample at --height x --width, cover and centre-crop, stock frames."""
        from cogvx_ext.video import stock_frame_indices

        indices = stock_frame_indices(
            clip.info.num_frames,
            getattr(args, "max_num_frames", 49),
            getattr(args, "skip_frames_start", 0),
            getattr(args, "skip_frames_end", 0),
        )
        if not indices:
            raise SkipClip(f"too few frames ({clip.info.num_frames}) after skipping start and end frames")
        crop = cover_crop_box(clip.info.width, clip.info.height, args.width, args.height)
        return [Target(height=args.height, width=args.width, frame_indices=tuple(indices), crop=crop)]

    @hookimpl(trylast=True)
    def cogvx_load_pixels(self, sample: Sample):
        from cogvx_ext.video import read_frames

        target, info = sample.target, sample.clip.info
        return read_frames(
            sample.clip.path,
            list(target.frame_indices),
            target.crop,
            (target.height, target.width),
            source_size=(info.height, info.width),
        )

    @hookimpl(trylast=True)
    def cogvx_batch_sampler(self, samples: list[Sample], model: ModelInfo):
        """No sampler of our own while every sample has one shape; refuse to mix shapes silently."""
        from cogvx_ext.dataset import latent_shape_key
        from cogvx_ext.errors import UsageError

        shapes = {latent_shape_key(s, model) for s in samples}
        if len(shapes) > 1:
            raise UsageError(
                f"the samples have {len(shapes)} latent shapes and no chosen plugin batches them by shape: "
                "add aspect_bucket to --plugins"
            )
        return None
