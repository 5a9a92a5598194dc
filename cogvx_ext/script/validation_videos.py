"""Validation videos a user can see, whatever ``--report_to`` says.

The scripts' ``log_validation`` keeps its videos only for wandb (one key for every size, through
``export_to_video``, which needs imageio or OpenCV, neither of which the scripts' requirements
install). cogvx-ext writes every video it returns to ``OUTPUT_DIR/validation/step-N/`` (``final/``
for the validation after training) as ``<prompt>-<W>x<H>-<i>.mp4`` with PyAV, and logs it to the
run's tensorboard (an animated GIF, which TensorBoard's image tab plays) and wandb trackers under
one key per phase, size and prompt: ``validation/1024x576/a_cat`` (``test/...`` after training, the
scripts' phase names).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cogvx_ext.data.video_writer import frames_uint8, write_video

_SLUG_LENGTH = 48


@dataclass
class WrittenVideo:
    path: Path
    index: int
    width: int
    height: int
    frames: np.ndarray  # (F, H, W, 3) uint8, for the trackers


def say(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"cogvx-ext: {message}", file=sys.stderr)


def folder_name(step: int | None, epoch: int, final: bool) -> str:
    """``final`` after training, else ``step-N`` with the last optimizer step the script logged
    (``epoch-N`` in the one case with no step logged yet: a run resumed at its end)."""
    if final:
        return "final"
    return f"step-{step}" if step is not None else f"epoch-{epoch}"


def prompt_slug(prompt: str, taken: dict[str, str]) -> str:
    """A file-name-safe form of ``prompt``; ``taken`` maps the slugs given so far to their prompts,
    so two prompts that read the same once cut or cleaned up never share a file name."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:_SLUG_LENGTH].rstrip("_") or "prompt"
    if taken.setdefault(slug, prompt) != prompt:
        slug = f"{slug}_{hashlib.sha1(prompt.encode('utf-8')).hexdigest()[:8]}"
        taken.setdefault(slug, prompt)
    return slug


def save_videos(folder: Path, slug: str, prompt: str, videos: list[Any], fps: float) -> list[WrittenVideo]:
    written = []
    for index, video in enumerate(videos):
        frames = frames_uint8(video)
        height, width = frames.shape[1:3]
        path = folder / f"{slug}-{width}x{height}-{index}.mp4"
        write_video(path, frames, fps=fps, title=prompt)
        written.append(WrittenVideo(path, index, width, height, frames))
    return written


@contextlib.contextmanager
def trackers_hidden(accelerator):
    """The script's ``log_validation`` sees no trackers: its wandb branch would log every size under
    one key and needs imageio or OpenCV; ``log_to_trackers`` logs instead."""
    trackers = getattr(accelerator, "trackers", None)
    if not trackers:
        yield
        return
    accelerator.trackers = []
    try:
        yield
    finally:
        accelerator.trackers = trackers


def tracker_key(phase: str, video: WrittenVideo, slug: str) -> str:
    return f"{phase}/{video.width}x{video.height}/{slug}"


def log_to_trackers(
    trackers, phase: str, prompt: str, slug: str, written: list[WrittenVideo], step: int | None, fps: float
) -> None:
    """tensorboard: one animated GIF per video (``<key>/<i>``); wandb: the mp4 files under ``<key>``."""
    if not written:
        return
    key = tracker_key(phase, written[0], slug)
    for tracker in trackers or ():
        if tracker.name == "tensorboard":
            writer = tracker.writer
            for video in written:
                _add_gif(writer, f"{key}/{video.index}", video.frames, step, fps)
            writer.flush()
        elif tracker.name == "wandb":
            import wandb

            tracker.log(
                {
                    key: [
                        wandb.Video(str(v.path), caption=f"{v.index}: {prompt}", format="mp4")
                        for v in written
                    ]
                },
                step=step,
            )


def _add_gif(writer, tag: str, frames: np.ndarray, step: int | None, fps: float) -> None:
    # SummaryWriter.add_video needs moviepy; an image summary holding a GIF is what it writes.
    from PIL import Image

    if type(writer).__module__.startswith("tensorboardX"):
        from tensorboardX.proto.summary_pb2 import Summary
    else:
        from tensorboard.compat.proto.summary_pb2 import Summary

    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
    )
    height, width = frames.shape[1:3]
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def describe(pipeline_args: dict[str, Any], count: int) -> str:
    size = ""
    if pipeline_args.get("width") and pipeline_args.get("height"):
        size = f" at {pipeline_args['width']}x{pipeline_args['height']}"
        if pipeline_args.get("num_frames"):
            size += f", {pipeline_args['num_frames']} frames"
    return f"{count} video{'s' if count != 1 else ''} of {pipeline_args.get('prompt')!r}{size}"


def shown_path(path: Path) -> str:
    """Relative to the working folder when inside it, else absolute."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
