"""Video I/O for every data plugin: read a clip's metadata, decode its frames straight to a target.

* ``probe`` opens the container with PyAV, demuxes the video packets (their count and
  presentation times; packets an edit list hides are not counted), decodes the first frame (its
  display matrix gives the rotation; a file that cannot decode even that is reported at plan
  time) and reads the sample aspect ratio. Sizes are *display* sizes: upright, square pixels,
  as a player shows the clip. It then opens the file with decord, which indexes it the same way;
  where decord fails, counts other frames, or places them at other times (GIF, MPEG-TS, WebM
  without a duration, edit lists), the clip is read with PyAV (``VideoInfo.decoder``).
* ``read_frames`` decodes with the probed decoder, resizing while decoding so a clip is never
  held at its full source size: decord turns the picture upright itself and is asked for the
  upright size; PyAV scales in the stored orientation and the picture is turned after. uint8 is
  converted to float once. A file decord fails on while training is read with PyAV instead.
* ``stock_frame_indices`` is the stock scripts' frame rule, for the core's default targets.

Every failure a bad file can cause is raised as ``ClipError`` with a short reason, a kind of
``SkipClip``: the clip is reported and left out, and the run goes on.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Sequence
from fractions import Fraction

import torch

from cogvx_ext.base.errors import SkipClip
from cogvx_ext.data.clips import VideoInfo

# decord 0.6 cannot return frames of these widths (its NDArray size check fails), measured at
# several heights and sources; the next width up always works.
_DECORD_BAD_WIDTHS = frozenset({2, 3, 4, 6, 8, 12, 16, 24, 48, 72})
# decord decodes nothing when opened, but sets up a scaler of the size asked: keep it small.
_DECORD_PROBE_SIZE = 32
# decord keeps timestamps as float32 seconds.
_TIME_TOLERANCE = 0.002


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
    """Read a clip's display geometry, the frames it shows and their times, and pick its decoder.

    The video packets are demuxed (not decoded) for their count and presentation times; packets
    an edit list hides (marked discard by the demuxer) are not counted. The first frame is
    decoded: it carries the display matrix (rotation), and a file that cannot decode even that
    is reported here rather than when training. decord is then opened on the file (it builds
    its own frame index): where it fails or counts other frames than the demuxer, the file is
    read with PyAV (``VideoInfo.decoder``), so the plan and the run agree on what trains.

    Without ``count_frames`` only the header is read (no rotation, no times, no decoder check):
    the header's frame count (``nb_frames``, or duration x rate), stored size and sample aspect.

    :raises ClipError: missing, unreadable or empty file; not a video, corrupt or truncated;
        no video stream; no decodable frame; fewer than two frames.
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
        stored_w, stored_h = stream.codec_context.width, stream.codec_context.height
        if not stored_w or not stored_h:
            raise ClipError("no picture size in the video stream's header")
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        sar = Fraction(sar) if sar and sar > 0 else Fraction(1)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        listed = stream.frames
        if not listed and rate and container.duration:
            # Containers without a frame count (mkv, webm): decord estimates it the same way.
            listed = int(float(rate) * container.duration / av.time_base)
        if not count_frames:
            width, height = _display_size(stored_w, stored_h, sar, 0)
            return VideoInfo(
                width=width,
                height=height,
                num_frames=listed,
                fps=fps,
                stored_width=stored_w,
                stored_height=stored_h,
                sample_aspect=f"{sar.numerator}:{sar.denominator}",
            )
        shown, hidden, first = _read_packets(container, stream)
        time_base, header_frames = stream.time_base, stream.frames
        mp4 = "mp4" in container.format.name.split(",")
    finally:
        container.close()
    num_frames = len(shown)
    if header_frames and num_frames + len(hidden) < header_frames:
        raise ClipError(
            f"truncated: its header lists {header_frames} frames, the file holds {num_frames + len(hidden)}"
        )
    if num_frames < 1:
        raise ClipError("no frames (zero-frame video)")
    if num_frames == 1:
        raise ClipError("only one frame: a still image, not a video")
    if first is None:
        raise ClipError("no frame of it can be decoded")
    # The display matrix turns the picture counter-clockwise by `first.rotation` degrees.
    rotation = int(-round((first.rotation or 0) / 90) * 90) % 360
    width, height = _display_size(stored_w, stored_h, sar, rotation)
    times: tuple[float, ...] = ()
    if all(p is not None for p in shown):
        times = tuple(float(p * time_base) for p in sorted(shown))
        if fps <= 0 and times[-1] > times[0]:
            fps = (num_frames - 1) / (times[-1] - times[0])
    # decord counts the frames an edit list hides and then mis-numbers the ones after a seek:
    # such files are read with PyAV, which tells frames apart by their times.
    if hidden:
        decoder = "pyav"
    elif mp4 and header_frames == num_frames and times and times[0] == 0:
        # An MP4/MOV whose sample table lists every frame, starting at time 0: decord indexes it
        # from the same table (opening decord to check would cost as much as the whole probe).
        decoder = "decord"
    else:
        decoder = _choose_decoder(path, num_frames, times)
    return VideoInfo(
        width=width,
        height=height,
        num_frames=num_frames,
        fps=fps,
        stored_width=stored_w,
        stored_height=stored_h,
        rotation=rotation,
        sample_aspect=f"{sar.numerator}:{sar.denominator}",
        frame_times=times,
        decoder=decoder,
    )


def _display_size(stored_w: int, stored_h: int, sar: Fraction, rotation: int) -> tuple[int, int]:
    """Upright size in square pixels: the width scaled by the sample aspect (as players do), then turned."""
    width = max(1, round(stored_w * sar))
    return (stored_h, width) if rotation % 180 else (width, stored_h)


def _read_packets(container, stream) -> tuple[list, list, object]:
    """Presentation times of the shown and the hidden packets, and the first decoded frame.

    Only one keyframe is decoded, and drained at once: the decoder's reordering delay would
    otherwise decode several frames (a 1080p frame costs tens of milliseconds)."""
    import av

    shown, hidden, first = [], [], None
    decoder = stream.codec_context
    try:
        for packet in container.demux(stream):
            if not packet.size:
                continue
            (hidden if packet.is_discard else shown).append(packet.pts)
            if first is None and packet.is_keyframe and not packet.is_discard:
                first = _decode_one(decoder, packet)
    except (av.FFmpegError, OSError) as exc:
        raise ClipError(f"corrupt or truncated while reading packets ({_ffmpeg_message(exc)})") from exc
    if first is None and shown:
        first = _first_frame(container.name)
    return shown, hidden, first


def _decode_one(decoder, packet):
    import av

    try:
        frames = decoder.decode(packet) or decoder.decode(None)
    except (av.FFmpegError, ValueError):
        frames = []  # a damaged keyframe: the next one may still decode
    decoder.flush_buffers()
    return frames[0] if frames else None


def _first_frame(path: str):
    """The first frame a full decode gives (files whose keyframes alone do not decode)."""
    import av

    try:
        with av.open(path) as container:
            for frame in container.decode(container.streams.best("video")):
                return frame
    except (av.FFmpegError, OSError, ValueError):
        return None
    return None


def _choose_decoder(path: str, packets: int, times: tuple[float, ...]) -> str:
    """decord where it opens the file, indexes as many frames as it has packets and places the
    shown ones at their presentation times (it seeks by them); PyAV otherwise."""
    import decord

    try:
        reader = decord.VideoReader(path, width=_DECORD_PROBE_SIZE, height=_DECORD_PROBE_SIZE)
        count = len(reader)
        if count != packets:
            return "pyav"
        if times:
            starts = reader.get_frame_timestamp(list(range(len(times))))[:, 0]
            if any(abs(float(a) - b) > _TIME_TOLERANCE for a, b in zip(starts, times)):
                return "pyav"  # e.g. MPEG-TS, whose timestamps do not start at 0: decord cannot seek in it
        del reader
    except (decord.DECORDError, RuntimeError, AssertionError, IndexError):
        return "pyav"
    return "decord"


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
    info: VideoInfo | None = None,
) -> torch.Tensor:
    """Decode frames of one clip upright, cropped and resized: float32 ``[F, 3, H, W]`` in ``[-1, 1]``.

    :param path: the video file.
    :param frame_indices: indices of shown frames (``VideoInfo.num_frames`` of them), in order.
    :param crop: ``(top, left, height, width)`` of the region kept, in display pixels.
    :param size: ``(height, width)`` of the result.
    :param source_size: the display ``(height, width)``, when ``info`` is not given (a file read
        as stored, by decord); without either the file is probed.
    :param info: the probe's result: display geometry, hidden frames, and the decoder to use.
        The decoder is asked for the display size scaled to the target, so nothing is stretched
        or squeezed; where decord fails on a file it is read with PyAV.
    :raises ClipError: the file cannot be opened or a frame cannot be decoded (truncated file).
    """
    path = os.fspath(path)
    indices = [int(i) for i in frame_indices]
    if not indices:
        raise ValueError("read_frames needs at least one frame index")
    if info is None:
        if source_size is None:
            info = probe(path)
        else:
            info = VideoInfo(width=source_size[1], height=source_size[0], num_frames=0, fps=0.0)
    (dec_h, dec_w), (off_top, off_left) = decode_size((info.height, info.width), crop, size)
    height, width = size
    _check_file(path)
    if info.decoder == "pyav":
        frames = _read_pyav(path, indices, info, dec_h, dec_w)
    else:
        try:
            frames = _read_decord(path, indices, dec_h, dec_w)
        except ClipError as decord_error:
            try:
                frames = _read_pyav(path, indices, info, dec_h, dec_w)
            except ClipError:
                raise decord_error from None
    region = frames[:, off_top : off_top + height, off_left : off_left + width, :].permute(0, 3, 1, 2)
    # One pass uint8 -> float into a contiguous tensor, then scale in place.
    pixels = torch.empty((len(indices), 3, height, width), dtype=torch.float32)
    pixels.copy_(region)
    return pixels.div_(127.5).sub_(1.0)


def _read_decord(path: str, indices: list[int], dec_h: int, dec_w: int) -> torch.Tensor:
    """uint8 ``[F, dec_h, dec_w, 3]``: decord turns the picture upright itself and resizes to the
    (upright) size asked; it ignores the sample aspect, which the size asked already holds."""
    import decord
    from decord.bridge import to_torch

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
    return frames


def _read_pyav(path: str, indices: list[int], info: VideoInfo, dec_h: int, dec_w: int) -> torch.Tensor:
    """uint8 ``[F, dec_h, dec_w, 3]`` with PyAV: frames are told apart by their presentation
    times (so hidden frames never count), scaled while converting to RGB (swscale, bicubic, the
    file's colour range) to the stored orientation of the size asked, then turned upright."""
    import numpy as np

    turns = -(info.rotation // 90)  # np.rot90 turns counter-clockwise
    stored_w, stored_h = (dec_h, dec_w) if info.rotation % 180 else (dec_w, dec_h)
    wanted = set(indices)
    times = list(info.frame_times)
    # Seeking starts at the keyframe before the first frame wanted; where a container seeks
    # badly (MPEG-TS can land past it), decode from the start instead.
    found = _decode_pyav(path, wanted, times, stored_w, stored_h, seek=bool(times) and min(wanted) > 0)
    if len(found) < len(wanted) and times and min(wanted) > 0:
        found = _decode_pyav(path, wanted, times, stored_w, stored_h, seek=False)
    missing = sorted(wanted - found.keys())
    if missing:
        raise ClipError(
            f"frame {missing[0]} requested, PyAV decodes {len(found)} of the {len(wanted)} frames wanted"
        )
    return torch.from_numpy(np.stack([np.rot90(found[i], turns) for i in indices]))


def _decode_pyav(path: str, wanted: set[int], times: list[float], width: int, height: int, seek: bool):
    import av

    found = {}
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ClipError(f"PyAV cannot open it ({_ffmpeg_message(exc)})") from exc
    try:
        stream = container.streams.best("video")
        stream.thread_type = "AUTO"
        if seek:
            container.seek(round(times[min(wanted)] / stream.time_base), stream=stream, backward=True)
        position = -1
        for frame in container.decode(stream):
            if times and frame.pts is not None:
                position = _nearest_index(times, float(frame.pts * stream.time_base))
            else:
                position += 1
            if position in wanted and position not in found:
                rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="BICUBIC")
                found[position] = rgb.to_ndarray()
                if len(found) == len(wanted):
                    break
            if position > max(wanted):
                break
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ClipError(f"decoding failed, the file may be truncated ({_ffmpeg_message(exc)})") from exc
    finally:
        container.close()
    return found


def _nearest_index(times: list[float], t: float) -> int:
    """Index of the time nearest ``t`` in the sorted ``times``."""
    i = bisect.bisect_left(times, t)
    if i == len(times) or (i > 0 and t - times[i - 1] <= times[i] - t):
        return i - 1
    return i


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
