"""Real-footage fixtures, written at test time: the kinds of files people have, with markers.

Every picture is drawn upright at its *display* size (what a player shows) and carries:

* a red square in the top-left corner (side 0.2 x the short side),
* a green bar on the right edge (the last tenth of the width, from 30 % to 60 % of the height),
  (white and black in a grayscale clip),
* a clock: 8 black/white blocks along the bottom band, the frame's index in binary.

``read_markers`` finds them again in a decoded picture (any size), so a test can check
orientation and aspect (marker positions as fractions of the picture) and timing (which source
frame was decoded, whose presentation time the writer knows). The files are then stored the way
a phone, a camcorder or an encoder stores them: rotated with a display matrix, squeezed with a
sample aspect ratio, at variable frame rate, cut with an edit list, in other codecs and
containers. Written with PyAV; the edit-list cut uses the static ffmpeg (``-ss`` with ``-c copy``).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

CLOCK_BITS = 7
RED = (255, 0, 0)
GREEN = (0, 255, 0)

# Where the markers sit, as fractions of the display picture (the centres read_markers reports).
RED_CENTRE = (0.1, 0.1)  # (x, y) for a square picture; see expected_red for others
GREEN_CENTRE = (0.95, 0.45)


def expected_red(width: int, height: int) -> tuple[float, float]:
    side = max(4, round(0.2 * min(width, height)))
    return (side / 2 / width, side / 2 / height)


def display_frame(width: int, height: int, index: int, gray: bool = False) -> np.ndarray:
    """The upright picture of frame ``index``: ``[height, width, 3]`` uint8 with markers and clock."""
    frame = np.full((height, width, 3), 128, np.uint8)
    side = max(4, round(0.2 * min(width, height)))
    frame[:side, :side] = 255 if gray else RED
    frame[int(0.3 * height) : int(0.6 * height), width - max(3, round(0.1 * width)) :] = 0 if gray else GREEN
    top, left, right = int(0.8 * height), int(0.25 * width), int(0.85 * width)
    edges = np.linspace(left, right, CLOCK_BITS + 1).round().astype(int)
    for bit in range(CLOCK_BITS):
        frame[top:, edges[bit] : edges[bit + 1]] = 255 if (index >> bit) & 1 else 0
    return frame


@dataclass(frozen=True)
class Markers:
    red: tuple[float, float]  # centre (x, y) as fractions of the picture's width and height
    green: tuple[float, float]
    index: int  # the clock
    red_aspect: float  # width / height of the red square in pixels: 1 unless stretched or squeezed


def _centre(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return (float("nan"), float("nan"))
    height, width = mask.shape
    return ((xs.mean() + 0.5) / width, (ys.mean() + 0.5) / height)


def read_markers(picture, gray: bool = False) -> Markers:
    """The markers of a decoded picture: ``[H, W, 3]`` uint8, or ``[3, H, W]`` float in ``[-1, 1]``."""
    array = np.asarray(picture)
    if array.dtype != np.uint8:
        array = ((np.moveaxis(array, 0, -1) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    rgb = array.astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    height, width = r.shape
    if gray:
        red, green = (rgb.min(-1) > 200), (rgb.max(-1) < 55)
    else:
        red = (r > 170) & (g < 90) & (b < 90)
        green = (g > 170) & (r < 110) & (b < 110)
    red[int(0.75 * height) :] = green[int(0.75 * height) :] = False  # the clock
    top, left, right = int(0.8 * height), int(0.25 * width), int(0.85 * width)
    band = rgb[top + (height - top) // 4 : height - (height - top) // 4 or height].mean(axis=(0, 2))
    edges = np.linspace(left, right, CLOCK_BITS + 1)
    index = 0
    for bit in range(CLOCK_BITS):
        step = edges[bit + 1] - edges[bit]
        lo, hi = int(edges[bit] + 0.3 * step), int(edges[bit + 1] - 0.3 * step)
        if band[lo : max(hi, lo + 1)].mean() > 128:
            index |= 1 << bit
    ys, xs = np.nonzero(red)
    aspect = (np.ptp(xs) + 1) / (np.ptp(ys) + 1) if len(xs) else float("nan")
    return Markers(red=_centre(red), green=_centre(green), index=index, red_aspect=float(aspect))


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def player_view(path: str | Path, frame: int = 0) -> np.ndarray:
    """What a player shows: the static ffmpeg's decode of frame ``frame``, rotated and at display aspect."""
    command = [
        ffmpeg_exe(),
        "-v",
        "error",
        "-i",
        str(path),
        "-vf",
        f"select=eq(n\\,{frame}),scale=iw*sar:ih,setsar=1",
    ]
    command += ["-frames:v", "1", "-pix_fmt", "rgb24", "-f", "image2pipe", "-c:v", "ppm", "-"]
    data = subprocess.run(command, capture_output=True, check=True).stdout
    header, width, height, maxval, rest = data.split(maxsplit=4)
    assert header == b"P6" and maxval == b"255"
    return np.frombuffer(rest[: int(width) * int(height) * 3], np.uint8).reshape(int(height), int(width), 3)


# ---------------------------------------------------------------------------------------------
# Writers

# clockwise display rotation -> (np.rot90 turns of the upright picture giving the stored one,
# the angle PyAV's set_display_rotation takes: ffmpeg's counter-clockwise convention)
_ROTATIONS = {0: (0, None), 90: (1, -90), 180: (2, 180), 270: (3, 90)}


def write_video(
    path: str | Path,
    width: int = 160,
    height: int = 96,
    num_frames: int = 24,
    fps: float = 24,
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    sample_aspect: Fraction | None = None,
    times: list[float] | None = None,
    options: dict[str, str] | None = None,
    container_format: str | None = None,
    gray: bool = False,
) -> Path:
    """Write a clip whose *display* picture is ``width x height`` with markers and a clock.

    :param rotation: clockwise degrees a player turns the stored picture (a phone held upright: 90).
    :param sample_aspect: store the picture squeezed horizontally by this pixel aspect ratio
        (the stored width is ``width / sample_aspect``).
    :param times: presentation times in seconds, one per frame (variable frame rate); default
        ``i / fps``.
    """
    import av

    path = Path(path)
    turns, angle = _ROTATIONS[rotation]
    stored_w = round(width / sample_aspect) if sample_aspect else width
    time_base = Fraction(1, 1000) if times is not None else None
    with av.open(str(path), "w", format=container_format) as container:
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream(codec, rate=rate, options=options or {})
        store_h, store_w = (stored_w, height) if turns % 2 else (height, stored_w)
        stream.width, stream.height = store_w, store_h
        stream.pix_fmt = pix_fmt
        if time_base is not None:
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
        if sample_aspect:
            stream.codec_context.sample_aspect_ratio = Fraction(sample_aspect)
        if angle is not None:
            stream.set_display_rotation(angle)
        for i in range(num_frames):
            picture = display_frame(width, height, i, gray)
            if stored_w != width:
                import torch
                import torch.nn.functional as F

                t = torch.from_numpy(picture).permute(2, 0, 1)[None].float()
                picture = F.interpolate(t, size=(height, stored_w), mode="area")[0].permute(1, 2, 0)
                picture = picture.round().clamp(0, 255).to(torch.uint8).numpy()
            picture = np.ascontiguousarray(np.rot90(picture, turns))
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            if times is not None:
                frame.pts = round(times[i] * 1000)
                frame.time_base = time_base
            else:
                frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cut_with_edit_list(source: str | Path, target: str | Path, start: float) -> Path:
    """Cut ``source`` from ``start`` seconds without re-encoding: the mp4 keeps every packet from
    the keyframe before ``start`` and an edit list hides the ones before it."""
    subprocess.run(
        [ffmpeg_exe(), "-y", "-v", "error", "-ss", str(start), "-i", str(source), "-c", "copy", str(target)],
        check=True,
        capture_output=True,
    )
    return Path(target)


# name -> (writer keyword arguments, display size (width, height)); frame i shows at times[i].
def kinds() -> dict[str, dict]:
    return {
        "rotate90": dict(width=96, height=160, rotation=90),
        "rotate180": dict(width=160, height=96, rotation=180),
        "rotate270": dict(width=96, height=160, rotation=270),
        "anamorphic": dict(width=192, height=96, sample_aspect=Fraction(4, 3)),  # stored 144x96
        "vfr": dict(width=160, height=96, num_frames=40, times=vfr_times(40)),
        "vp9_realtime": dict(fps=30, num_frames=30),  # see write_kind
        "gif": dict(codec="gif", pix_fmt="rgb8", fps=12.5, num_frames=20),
        "mpegts": dict(container_format="mpegts", fps=25),
        "mjpeg": dict(codec="mjpeg", pix_fmt="yuvj420p", container_format="avi"),
        "hevc10": dict(codec="libx265", pix_fmt="yuv420p10le", options={"x265-params": "log-level=error"}),
        "gray": dict(codec="libx265", pix_fmt="gray", gray=True, options={"x265-params": "log-level=error"}),
        "full_range": dict(pix_fmt="yuvj420p"),
    }


SUFFIX = {"vp9_realtime": ".webm", "gif": ".gif", "mpegts": ".ts", "mjpeg": ".avi"}


def vfr_times(count: int) -> list[float]:
    """Frame times whose spacing swings between 1/30 s and 1/8 s, as a phone in low light."""
    times, t = [], 0.0
    for i in range(count):
        times.append(round(t, 3))
        t += 1 / 30 if (i // 6) % 2 == 0 else 1 / 8
    return times


def write_kind(folder: str | Path, kind: str) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "edit_list":
        source = write_video(folder / "edit_list_source.mp4", num_frames=72, fps=24, options={"g": "48"})
        target = cut_with_edit_list(source, folder / "edit_list.mp4", 1.25)
        source.unlink()
        return target
    if kind == "vp9_realtime":
        # As a browser's MediaRecorder or a screen recorder writes it: VP9 from a realtime encoder,
        # streamed out, so the WebM has neither a duration nor cues.
        source = write_video(folder / "vp9_source.mp4", **kinds()[kind], options={"crf": "12"})
        target = folder / "vp9_realtime.webm"
        with open(target, "wb") as out:
            subprocess.run(
                [
                    ffmpeg_exe(),
                    "-v",
                    "error",
                    "-i",
                    str(source),
                    "-c:v",
                    "libvpx-vp9",
                    "-deadline",
                    "realtime",
                ]
                + ["-cpu-used", "8", "-b:v", "1M", "-f", "webm", "-"],
                stdout=out,
                check=True,
            )
        source.unlink()
        return target
    return write_video(folder / f"{kind}{SUFFIX.get(kind, '.mp4')}", **kinds()[kind])


KINDS = (*kinds(), "edit_list")
