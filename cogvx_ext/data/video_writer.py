"""Generated videos to mp4 files with PyAV, which the package installs (diffusers' ``export_to_video``
needs imageio or OpenCV, which it does not).

H.264 in yuv420p, the format every player and browser plays; written to a temporary name and
renamed, with the mode the umask gives, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from cogvx_ext.base.io import current_umask


def frames_uint8(video: Any) -> np.ndarray:
    """A pipeline's video as ``(frames, height, width, 3)`` uint8.

    Takes what the CogVideoX pipelines return for one video: a list of PIL images
    (``output_type="pil"``), an array ``(F, H, W, 3)`` of floats in [0, 1] (``"np"``), a tensor
    ``(F, 3, H, W)`` of floats in [0, 1] (``"pt"``), or uint8 frames.
    """
    if hasattr(video, "detach"):  # a torch tensor, frames first, channels second
        array = video.detach().float().cpu().numpy()
        if array.ndim == 4 and array.shape[1] == 3 and array.shape[-1] != 3:
            array = array.transpose(0, 2, 3, 1)
    elif isinstance(video, np.ndarray):
        array = video
    else:
        array = np.stack(
            [np.asarray(frame.convert("RGB") if hasattr(frame, "convert") else frame) for frame in video]
        )
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (F, H, W, 3), got {tuple(array.shape)}")
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(array)


def write_video(
    path: str | os.PathLike, video: Any, fps: float = 8, title: str | None = None
) -> tuple[int, int, int]:
    """Write ``video`` (see ``frames_uint8``) as an H.264 mp4 at ``fps``; return ``(width, height, frames)``.

    ``title`` goes into the file's metadata (a validation prompt, whole). Raises ``ValueError`` for
    odd sides, which yuv420p cannot hold (CogVideoX sizes are multiples of 16).
    """
    import av

    frames = frames_uint8(video)
    count, height, width = frames.shape[:3]
    if width % 2 or height % 2:
        raise ValueError(f"H.264 (yuv420p) needs even sides, got {width}x{height}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp, "w", format="mp4", options={"movflags": "faststart"}) as container:
            if title:
                container.metadata["title"] = title
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": "18"}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode(None))
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return width, height, count
