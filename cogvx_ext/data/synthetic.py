"""Synthetic clips and listings: real H.264 mp4 files with moving content, and broken ones (cogvx_ext.testing
is their public face; ``cogvx-ext demo`` writes a dataset too)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# decord 0.6 cannot return frames of these widths (ndarray "Check failed: from_size"), whatever
# the height, whether the file has that width or decord resizes to it. Probed over even widths
# 2..398; every other even width decoded.
DECORD_BAD_WIDTHS = frozenset({2, 4, 6, 8, 12, 16, 24, 48, 72})


def _check_clip_size(width: int, height: int, num_frames: int) -> None:
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise ValueError(f"H.264 (yuv420p) needs even width and height >= 2, got {width}x{height}")
    if width in DECORD_BAD_WIDTHS:
        raise ValueError(
            f"decord 0.6 cannot decode frames {width} pixels wide "
            f"(it fails on widths {sorted(DECORD_BAD_WIDTHS)}); choose another width"
        )
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got num_frames={num_frames}")


def _frames(width: int, height: int, num_frames: int, seed: int):
    """Yield RGB frames: a drifting two-colour gradient with a square bouncing across it."""
    rng = np.random.default_rng(seed)
    start, end, square_colour = rng.integers(0, 256, size=(3, 3))
    angle = rng.uniform(0, 2 * np.pi)
    side = max(2, min(width, height) // 4)
    position = rng.uniform(0, 1, size=2) * (width - side, height - side)
    velocity = np.array([np.cos(angle), np.sin(angle)]) * max(2.0, min(width, height) / 12)
    ys, xs = np.mgrid[0:height, 0:width]
    ramp = (np.cos(angle) * xs / width + np.sin(angle) * ys / height) / 2 + 0.5
    for index in range(num_frames):
        mix = (ramp + index / max(num_frames, 8)) % 1.0
        frame = start + (end - start) * mix[..., None]
        x, y = position.astype(int)
        frame[y : y + side, x : x + side] = square_colour
        yield np.ascontiguousarray(frame.clip(0, 255).astype(np.uint8))
        position += velocity
        for axis, limit in enumerate((width - side, height - side)):
            if not 0 <= position[axis] <= limit:
                velocity[axis] = -velocity[axis]
                position[axis] = np.clip(position[axis], 0, limit)


def write_clip(
    path: str | Path, width: int, height: int, num_frames: int, fps: int = 8, seed: int = 0
) -> Path:
    """Write an H.264 yuv420p mp4 of ``num_frames`` frames whose content moves; return its path.

    Content differs per ``seed``. Raises ``ValueError`` for sizes H.264 or decord cannot take.
    """
    import av

    _check_clip_size(width, height, num_frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18"}
        for frame in _frames(width, height, num_frames, seed):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def write_dataset(
    root: str | Path,
    clips: Sequence[tuple[int, int, int] | tuple[int, int, int, int]],
    prompts: Sequence[str] | None = None,
) -> Path:
    """Write a dataset folder the scripts read; return ``root``.

    ``clips`` holds ``(width, height, num_frames)`` or ``(width, height, num_frames, fps)``.
    Writes ``root/videos/*.mp4``, ``root/videos.txt`` and ``root/prompts.txt`` (one line per clip,
    paths relative to root): train with ``--instance_data_root root --caption_column prompts.txt
    --video_column videos.txt``.
    """
    root = Path(root)
    if prompts is None:
        prompts = [f"a bright square moving over a gradient, clip {i}" for i in range(len(clips))]
    if len(prompts) != len(clips):
        raise ValueError(f"got {len(prompts)} prompts for {len(clips)} clips")
    for prompt in prompts:
        # The scripts read one prompt per line and drop blank lines.
        if not prompt.strip() or "\n" in prompt:
            raise ValueError(f"a prompt must be one non-blank line, got {prompt!r}")
    video_lines = []
    for index, clip in enumerate(clips):
        width, height, num_frames, *rest = clip
        name = f"videos/clip_{index:03d}_{width}x{height}x{num_frames}.mp4"
        write_clip(root / name, width, height, num_frames, fps=rest[0] if rest else 8, seed=index)
        video_lines.append(name)
    (root / "videos.txt").write_text("\n".join(video_lines) + "\n", encoding="utf-8")
    (root / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    return root


def write_bad_clips(root: str | Path) -> dict[str, Path]:
    """Write clips that stress a data pipeline; return them by name.

    - ``truncated``: a real mp4 cut to half its bytes (its index is lost: decord cannot open it)
    - ``not_a_video``: a text file named ``.mp4``
    - ``zero_frames``: a well-formed mp4 holding no frame (ffmpeg's muxer drops an empty track, so
      it has no video stream at all; decord refuses it)
    - ``one_frame``: 1 frame, 64x64
    - ``tiny_32x32``: 9 frames, 32x32 (2 latent pixels before patching)
    - ``wide_8x1``: 9 frames, 256x32; ``tall_1x8``: 9 frames, 32x256
    - ``three_frames``: 3 frames, 64x64 (the scripts keep 4k+1 frames: only the first)
    """
    import imageio_ffmpeg

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clips = {
        "one_frame": write_clip(root / "one_frame.mp4", 64, 64, 1),
        "tiny_32x32": write_clip(root / "tiny_32x32.mp4", 32, 32, 9, seed=1),
        "wide_8x1": write_clip(root / "wide_8x1.mp4", 256, 32, 9, seed=2),
        "tall_1x8": write_clip(root / "tall_1x8.mp4", 32, 256, 9, seed=3),
        "three_frames": write_clip(root / "three_frames.mp4", 64, 64, 3, seed=4),
    }

    whole = write_clip(root / "truncated.mp4", 64, 64, 9, seed=5).read_bytes()
    clips["truncated"] = root / "truncated.mp4"
    clips["truncated"].write_bytes(whole[: len(whole) // 2])

    clips["not_a_video"] = root / "not_a_video.mp4"
    clips["not_a_video"].write_text("this is a text file, not an mp4\n", encoding="utf-8")

    # Told to keep no frame, ffmpeg still writes a complete mp4 (ftyp + moov), without the track.
    clips["zero_frames"] = root / "zero_frames.mp4"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi"]
        + ["-i", "color=c=gray:s=64x64:r=8", "-frames:v", "0", "-c:v", "libx264", "-pix_fmt", "yuv420p"]
        + [str(clips["zero_frames"])],
        check=True,
        capture_output=True,
    )
    return clips
