"""Landscape clips at 160x96, portrait ones at 96x160, each covered and centre-cropped, 9 frames."""

from cogvx_ext.api import SkipClip, Target, cover_crop_box, hookimpl, stock_frame_indices


@hookimpl
def cogvx_clip_targets(clip):
    width, height = (160, 96) if clip.info.width >= clip.info.height else (96, 160)
    frames = stock_frame_indices(clip.info.num_frames, 9, 0, 0)
    if not frames:
        raise SkipClip(f"only {clip.info.num_frames} frames")
    crop = cover_crop_box(clip.info.width, clip.info.height, width, height)
    return [Target(height=height, width=width, frame_indices=tuple(frames), crop=crop)]
