"""Video I/O for every data plugin: read a clip's metadata, decode its frames straight to a target.

* ``probe`` opens the container with PyAV, reads the stream header and counts the video packets
  (demuxing only, no frame is decoded). Measured on this project's clips: 0.5 ms for a small mp4,
  where opening it with decord takes 4 ms and still gives no picture size without decoding a
  frame. Counting packets gives the frame count decord itself uses (it indexes packets too) and
  catches a truncated file whose header promises more frames than it holds.
* ``read_frames`` decodes with decord, which resizes while decoding, so a clip is never held at
  its full source size, and converts uint8 to float once.
* ``stock_frame_indices`` is the stock scripts' frame rule, for the core's default targets.

Every failure a bad file can cause is raised as ``ClipError`` with a short reason, a kind of
``SkipClip``: the clip is reported and left out, and the run goes on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import torch

from cogvx_ext.clips import VideoInfo
from cogvx_ext.errors import SkipClip

# decord 0.6 cannot return frames of these widths (its NDArray size check fails), measured at
# several heights and sources; the next width up always works.
_DECORD_BAD_WIDTHS = frozenset({2, 3, 4, 6, 8, 12, 16, 24, 48, 72})


class ClipError(SkipClip):
    """A file that cannot be used as a clip; the message is the reason, short and human."""


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise ClipError("file does not exist")
    if os.path.isdir(path):
        raise ClipError("is a folder, not a video file")
    if not os.access(path, os.R_OK):
        raise ClipError("cannot be read (permission denied)")
    if os.path.getsize(path) == 0:
        raise ClipError("empty file (0 bytes)")


def probe(path: str | os.PathLike, count_frames: bool = True) -> VideoInfo:
    """Read a clip's size, frame count and frame rate without decoding a frame.

    With ``count_frames`` the video packets are counted (the file is read, not decoded): exact,
    and a file whose header lists more frames than it holds is reported as truncated. Without
    it the header's count is used (``nb_frames``, or duration x rate where the container has
    none, as decord estimates it).

    :raises ClipError: missing, unreadable or empty file; not a video, corrupt or truncated;
        no video stream; fewer than two frames.
    """
    import av

    path = os.fspath(path)
    _check_file(path)
    try:
        container = av.open(path)
    except PermissionError as exc:
        raise ClipError("cannot be read (permission denied)") from exc
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ClipError(f"not a video file, or corrupt or truncated ({_ffmpeg_message(exc)})") from exc
    try:
        stream = container.streams.best("video")
        if stream is None:
            raise ClipError("no video stream (zero frames)")
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise ClipError("no picture size in the video stream's header")
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        listed = stream.frames
        if not listed and rate and container.duration:
            # Containers without a frame count (mkv, webm): decord estimates it the same way.
            listed = int(float(rate) * container.duration / av.time_base)
        num_frames = listed
        if count_frames:
            try:
                num_frames = sum(1 for packet in container.demux(stream) if packet.size)
            except (av.FFmpegError, OSError) as exc:
                raise ClipError(
                    f"corrupt or truncated while reading packets ({_ffmpeg_message(exc)})"
                ) from exc
            if stream.frames and num_frames < stream.frames:
                raise ClipError(
                    f"truncated: its header lists {stream.frames} frames, the file holds {num_frames}"
                )
    finally:
        container.close()
    if num_frames < 1:
        raise ClipError("no frames (zero-frame video)")
    if num_frames == 1:
        raise ClipError("only one frame: a still image, not a video")
    return VideoInfo(width=width, height=height, num_frames=num_frames, fps=fps)


def _ffmpeg_message(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0][:120] or type(exc).__name__


def decode_size(
    source_size: tuple[int, int], crop: tuple[int, int, int, int], size: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where to decode so that ``crop`` lands on exactly ``size``: ((height, width), (top, left)).

    The source is scaled by ``size / crop size`` on each axis and rounded to whole pixels; the
    crop's corner is scaled by the scale actually obtained and rounded, then kept inside the
    decoded picture. So the result equals "crop the source region, then resize it" up to half a
    target pixel of shift at each edge (plus the difference between decord's swscale filter and
    any other resampler). A width decord cannot return is widened by a pixel or two: the kept
    region is then narrower by less than a source pixel.
    """
    src_h, src_w = source_size
    top, left, crop_h, crop_w = crop
    height, width = size
    if not (
        0 <= top
        and 0 <= left
        and 0 < crop_h
        and 0 < crop_w
        and top + crop_h <= src_h
        and left + crop_w <= src_w
    ):
        raise ValueError(f"crop {crop} (top, left, height, width) is not inside a {src_w}x{src_h} picture")
    dec_h = max(height, round(src_h * height / crop_h))
    dec_w = max(width, round(src_w * width / crop_w))
    while dec_w in _DECORD_BAD_WIDTHS:
        dec_w += 1
    off_top = min(max(0, round(top * dec_h / src_h)), dec_h - height)
    off_left = min(max(0, round(left * dec_w / src_w)), dec_w - width)
    return (dec_h, dec_w), (off_top, off_left)


def read_frames(
    path: str | os.PathLike,
    frame_indices: Sequence[int],
    crop: tuple[int, int, int, int],
    size: tuple[int, int],
    source_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Decode frames of one clip, cropped and resized: float32 ``[F, 3, H, W]`` in ``[-1, 1]``.

    :param path: the video file.
    :param frame_indices: source frame indices, in decoding order.
    :param crop: ``(top, left, height, width)`` of the region kept, in source pixels.
    :param size: ``(height, width)`` of the result.
    :param source_size: the source's ``(height, width)`` when known (``Clip.info``); read from
        the header otherwise.
    :raises ClipError: the file cannot be opened or a frame cannot be decoded (truncated file).
    """
    import decord
    from decord.bridge import to_torch

    path = os.fspath(path)
    indices = [int(i) for i in frame_indices]
    if not indices:
        raise ValueError("read_frames needs at least one frame index")
    if source_size is None:
        info = probe(path, count_frames=False)
        source_size = (info.height, info.width)
    (dec_h, dec_w), (off_top, off_left) = decode_size(source_size, crop, size)
    height, width = size
    _check_file(path)
    try:
        reader = decord.VideoReader(path, width=dec_w, height=dec_h)
    except (decord.DECORDError, RuntimeError, AssertionError) as exc:
        raise ClipError(f"decord cannot open it ({_decord_message(exc)})") from exc
    try:
        available = len(reader)
        if max(indices) >= available or min(indices) < 0:
            raise ClipError(f"frame {max(indices)} requested, decord reads {available} frames")
        try:
            # The torch bridge shares decord's buffer (DLPack): no copy, and no global bridge setting.
            frames = to_torch(reader.get_batch(indices))  # uint8 [F, dec_h, dec_w, 3]
        except (decord.DECORDError, RuntimeError, IndexError) as exc:
            raise ClipError(f"decoding failed, the file may be truncated ({_decord_message(exc)})") from exc
    finally:
        del reader
    if tuple(frames.shape[1:3]) != (dec_h, dec_w):
        raise ClipError(f"decord returned {tuple(frames.shape[1:3])} frames, {(dec_h, dec_w)} were asked for")
    region = frames[:, off_top : off_top + height, off_left : off_left + width, :].permute(0, 3, 1, 2)
    # One pass uint8 -> float into a contiguous tensor, then scale in place.
    pixels = torch.empty((len(indices), 3, height, width), dtype=torch.float32)
    pixels.copy_(region)
    return pixels.div_(127.5).sub_(1.0)


def _decord_message(exc: BaseException) -> str:
    # decord's messages are "[time] file.cc:line: Check failed: expr (a vs. b) what happened";
    # keep what happened.
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "Check failed:" in text:
        text = text.rsplit(")", 1)[-1].strip() or text
    return re.sub(r"\[[\d:]+\]\s*\S+\.cc:\d+:\s*", "", text)[:160]


def stock_frame_indices(num_frames: int, max_num_frames: int, skip_start: int, skip_end: int) -> list[int]:
    """The frames the stock scripts take from a clip of ``num_frames`` frames.

    Skip ``skip_start`` frames at the start and ``skip_end`` at the end; keep every remaining
    frame when at most ``max_num_frames`` remain, otherwise step through them with the integer
    stride ``remaining // max_num_frames``; keep at most ``max_num_frames``; then keep the
    longest prefix of 4k+1 frames (the VAE compresses time 4x). When the skips leave nothing the
    scripts take the single frame at the start; here that frame is kept inside the clip (the
    scripts index one past its end when ``skip_start >= num_frames``). ``--fps`` plays no part,
    as in the scripts.
    """
    if num_frames < 1 or max_num_frames < 1:
        return []
    start = min(skip_start, num_frames)
    end = max(0, num_frames - skip_end)
    if end <= start:
        return [min(start, num_frames - 1)]
    remaining = end - start
    stride = 1 if remaining <= max_num_frames else remaining // max_num_frames
    indices = list(range(start, end, stride))[:max_num_frames]
    keep = (len(indices) - 1) // 4 * 4 + 1
    return indices[:keep]
