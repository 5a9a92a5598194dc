"""A data plugin that breaks one target rule on purpose (``--bad_target RULE``), or none (``ok``).

``transposed`` is a valid target at ``--height x --width`` turned portrait: it trains only with
a RoPE that follows the batch, whoever made it.
"""

from cogvx_ext import Target, hookimpl
from cogvx_ext.data.video import stock_frame_indices
from cogvx_ext.plugin.defaults import cover_crop_box


class BadTargets:
    @hookimpl
    def cogvx_add_arguments(self, parser):
        parser.add_argument(
            "--bad_target",
            default="ok",
            choices=["ok", "size", "frames", "crop", "transposed", "past_end", "negative_frame"],
        )

    @hookimpl
    def cogvx_clip_targets(self, clip, args):
        width, height = args.width, args.height
        if args.bad_target == "transposed":
            width, height = height, width
        if args.bad_target == "size":
            width += 8
        indices = stock_frame_indices(clip.info.num_frames, args.max_num_frames, 0, 0)
        if args.bad_target == "frames":
            indices = indices[:-1]
        if args.bad_target == "past_end":  # the same count, one step later: the last is one too far
            indices = [i + clip.info.num_frames - indices[-1] for i in indices]
        if args.bad_target == "negative_frame":
            indices = [i - 1 for i in indices]
        crop = cover_crop_box(clip.info.width, clip.info.height, width, height)
        if args.bad_target == "crop":
            crop = (crop[0] + 1, crop[1], clip.info.height, crop[3])
        return [Target(height=height, width=width, frame_indices=tuple(indices), crop=crop)]
