"""The core's own hook implementations: what happens when no chosen plugin decides.

Registered in every run as ``cogvx_ext.plugin.defaults``, all ``trylast`` so any plugin goes first.
They reproduce the stock script's choices, except that a clip is never stretched.
"""

from __future__ import annotations

import argparse

from cogvx_ext.base.errors import SkipClip
from cogvx_ext.data.clips import STAGE_TAG, Clip, Sample, Stage, Target
from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.plugin.hookspecs import hookimpl


def cover_crop_box(src_width: int, src_height: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The centred region of the source with the target's aspect: (top, left, height, width)."""
    scale = max(width / src_width, height / src_height)
    crop_h = min(src_height, round(height / scale))
    crop_w = min(src_width, round(width / scale))
    return ((src_height - crop_h) // 2, (src_width - crop_w) // 2, crop_h, crop_w)


class CoreDefaults:
    @hookimpl(trylast=True)
    def cogvx_probe(self, path: str):
        """The container's header, read with PyAV (raises SkipClip for what is not a usable video)."""
        from cogvx_ext.data.video import probe

        return probe(path)

    @hookimpl(trylast=True)
    def cogvx_clip_targets(
        self, clip: Clip, args: argparse.Namespace, model: ModelInfo, stages: list[Stage] | None
    ) -> list[Target]:
        """The stock rule: one sample at --height x --width, cover and centre-crop, stock frames.

        With stages, one sample per stage at the stage's size (an area-only stage keeps the
        aspect of --height x --width) and frame count, tagged with the stage's index.
        """
        max_frames = getattr(args, "max_num_frames", 49)
        if not stages:
            return [self._stock_target(clip, args, args.height, args.width, max_frames, ())]
        return [
            self._stock_target(
                clip,
                args,
                *stage.size_for(args.height, args.width, model.pixel_multiple),
                stage.frames or max_frames,
                ((STAGE_TAG, str(i)),),
            )
            for i, stage in enumerate(stages)
        ]

    @staticmethod
    def _stock_target(clip: Clip, args, height: int, width: int, max_frames: int, tags) -> Target:
        from cogvx_ext.data.video import stock_frame_indices

        indices = stock_frame_indices(
            clip.info.num_frames,
            max_frames,
            getattr(args, "skip_frames_start", 0),
            getattr(args, "skip_frames_end", 0),
        )
        if not indices:
            raise SkipClip(f"too few frames ({clip.info.num_frames}) after skipping start and end frames")
        crop = cover_crop_box(clip.info.width, clip.info.height, width, height)
        return Target(height=height, width=width, frame_indices=tuple(indices), crop=crop, tags=tuple(tags))

    @hookimpl(trylast=True)
    def cogvx_load_pixels(self, sample: Sample):
        from cogvx_ext.data.video import read_frames

        target, info = sample.target, sample.clip.info
        return read_frames(
            sample.clip.path,
            list(target.frame_indices),
            target.crop,
            (target.height, target.width),
            info=info,
        )

    @hookimpl(trylast=True)
    def cogvx_rotary_embedding(self, model: ModelInfo, latent_shape: tuple[int, int, int], device):
        """What the diffusers pipeline computes at this latent shape, when no plugin answers.

        The seam has already taken the script's own embedding away (it is computed from
        ``--height/--width``, not from the batch), so a plugin returning ``None`` must still
        leave the model with a batch-correct embedding, never with none."""
        from cogvx_ext.model.rope import default_rotary_embedding

        return default_rotary_embedding(model, latent_shape, device)

    @hookimpl(trylast=True)
    def cogvx_batch_sampler(self, samples: list[Sample], model: ModelInfo, stages: list[Stage] | None):
        """No sampler of our own while every sample has one shape; refuse to mix shapes silently.

        With stages, ``None``: the plugin that set the schedule supplies a sampler that follows it
        (progressive_resize wraps this hook and does when no other plugin has answered)."""
        from cogvx_ext.base.errors import UsageError
        from cogvx_ext.data.planning import latent_shape_key

        if stages:
            return None
        shapes = {latent_shape_key(s, model) for s in samples}
        if len(shapes) > 1:
            raise UsageError(
                f"the samples have {len(shapes)} latent shapes and no chosen plugin batches them by shape: "
                "add aspect_bucket to --plugins"
            )
        return None
