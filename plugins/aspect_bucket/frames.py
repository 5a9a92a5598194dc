"""Frame buckets: how many frames a clip trains with, and which of its frames.

Frame counts the model can take
    CogVideoX's VAE compresses time 4x, so a sample has 4k+1 frames (k+1 latent frames). The 1.5
    models patch time by 2 as well and need an even latent count; their pipelines pad an odd one
    with a frame in front. Here only counts with an even latent length are chosen for 1.5 (5,
    13, 21, ... 45, 53, ... 77, 85), so no compute goes to padding and no padded frame has to be
    kept out of the loss (``ModelInfo.valid_frame_count``).

A small ladder of counts, not one count (``--bucket_frames auto``)
    With one count (the longest that ``--max_num_frames`` allows) every clip shorter than that
    at ``--fps`` is lost; the stock script keeps such clips at whatever 4k+1 count they have,
    which gives as many shapes as there are lengths. The default ladder sits in between: the
    longest count and about 2/3 and 1/3 of it in latent frames (49, 33, 17 for 1.0 at 49
    frames). A clip takes the longest rung it can fill, so long clips all share the top count and
    only short clips add shapes, at most three times the spatial buckets. ``--bucket_frames max``
    keeps one count; an explicit list (``49,33``) sets the rungs.

Sampling at ``--fps``, by presentation time
    Frames are taken at the training frame rate, by their presentation timestamps: sample ``k`` is
    the frame shown nearest ``k / fps`` seconds after the first, so a 24 fps source at ``--fps 8``
    gives every third frame, 30 fps every 3.75th, and a variable-rate source (a phone in low
    light, a screen recorder) frames that are truly ``1 / fps`` apart, however its rate swings
    (picking by index at the average rate would change the motion speed within a sample). A
    sample never repeats a frame or goes back. A source slower than ``--fps`` is used frame by
    frame (repeating frames would teach stutter); one whose rate is unknown too. The window
    starts after ``--skip_frames_start`` shown frames (the head of the clip, as the stock script
    starts there) and ends before ``--skip_frames_end``; frames an edit list hides do not count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cogvx_ext.api import ModelInfo, SkipClip, UsageError

# A sample of one frame is an image; the shortest video sample is 5 frames (2 latent frames).
MIN_FRAMES = 5


def valid_counts(model: ModelInfo, limit: int) -> list[int]:
    """Every frame count the model takes, from ``MIN_FRAMES`` up to ``limit``, longest first."""
    return [n for n in range(limit, MIN_FRAMES - 1, -1) if model.valid_frame_count(n)]


def longest_valid_count(model: ModelInfo, limit: int) -> int | None:
    counts = valid_counts(model, limit)
    return counts[0] if counts else None


def _rule(model: ModelInfo) -> str:
    if model.patch_size_t:
        return "4k+1 frames with an even latent count (5, 13, 21, ..., 45, 53, ..., 77, 85)"
    return "4k+1 frames (5, 9, 13, ..., 49, ...)"


def frame_ladder(model: ModelInfo, max_num_frames: int, spec: str = "auto") -> list[int]:
    """The frame counts samples may have, longest first.

    :param spec: ``auto`` (the longest count within ``max_num_frames`` and about 2/3 and 1/3 of
        it in latent frames), ``max`` (the longest count only), or counts such as ``49,33,17``.
    :raises UsageError: a count the model cannot take, or no count at all.
    """
    spec = (spec or "auto").strip().lower()
    if spec in ("auto", "max"):
        top = longest_valid_count(model, max_num_frames)
        if top is None:
            raise UsageError(
                f"--max_num_frames {max_num_frames} leaves no frame count for CogVideoX {model.version}: "
                f"it takes {_rule(model)}, at least {MIN_FRAMES}"
            )
        if spec == "max":
            return [top]
        latent = model.latent_frames(top)
        ladder = []
        for fraction in (1.0, 2 / 3, 1 / 3):
            pixels = (math.ceil(latent * fraction) - 1) * model.temporal_compression_ratio + 1
            count = longest_valid_count(model, pixels)
            if count is not None and count not in ladder:
                ladder.append(count)
        return ladder
    counts = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if not item.isdigit():
            raise UsageError(
                f"--bucket_frames: '{item}' is not a frame count (use auto, max, or e.g. 49,33,17)"
            )
        count = int(item)
        if count < MIN_FRAMES or not model.valid_frame_count(count):
            below = longest_valid_count(model, count)
            above = next(
                (n for n in range(count, count + 16) if n >= MIN_FRAMES and model.valid_frame_count(n)), None
            )
            nearest = " or ".join(str(n) for n in (below, above) if n is not None)
            raise UsageError(
                f"--bucket_frames: CogVideoX {model.version} cannot take {count} frames: it takes {_rule(model)}, "
                f"at least {MIN_FRAMES}; nearest: {nearest}"
            )
        if count not in counts:
            counts.append(count)
    if not counts:
        raise UsageError("--bucket_frames: no frame count given (use auto, max, or e.g. 49,33,17)")
    return sorted(counts, reverse=True)


def check_frames_spec(spec: str) -> None:
    """Check ``--bucket_frames`` before the model is known: syntax and the 4k+1 rule of every model."""
    spec = (spec or "auto").strip().lower()
    if spec in ("auto", "max"):
        return
    items = [part.strip() for part in spec.split(",") if part.strip()]
    if not items:
        raise UsageError("--bucket_frames: no frame count given (use auto, max, or e.g. 49,33,17)")
    for item in items:
        if not item.isdigit():
            raise UsageError(
                f"--bucket_frames: '{item}' is not a frame count (use auto, max, or e.g. 49,33,17)"
            )
        count = int(item)
        if count < MIN_FRAMES or (count - 1) % 4:
            raise UsageError(
                f"--bucket_frames: {count} is not 4k+1 frames of at least {MIN_FRAMES} "
                f"(nearest: {max(MIN_FRAMES, (count - 1) // 4 * 4 + 1)} or {max(MIN_FRAMES, (count + 2) // 4 * 4 + 1)})"
            )


def sampling_stride(source_fps: float, target_fps: float) -> float:
    """Source frames per training frame: ``source_fps / target_fps``, never below 1."""
    if source_fps <= 0 or target_fps <= 0:
        return 1.0
    return max(1.0, source_fps / target_fps)


def frames_available(num_frames: int, stride: float, skip_start: int = 0, skip_end: int = 0) -> int:
    """How many frames at ``stride`` fit between the skipped start and end."""
    span = num_frames - max(0, skip_start) - max(0, skip_end)
    if span <= 0:
        return 0
    return int(math.floor((span - 1) / stride + 1e-9)) + 1


def select_frames(
    num_frames: int,
    source_fps: float,
    target_fps: float,
    ladder: Sequence[int],
    skip_start: int = 0,
    skip_end: int = 0,
    times: Sequence[float] | None = None,
) -> tuple[int, ...]:
    """Source frame indices for one clip: the longest rung of ``ladder`` it fills at ``target_fps``.

    With ``times`` (the presentation time of each shown frame, seconds) frames are picked by
    time: sample ``k`` is the frame nearest ``start + k / target_fps``, always after the one
    before (a sample never stands still or goes back), so spacing is true in seconds at constant
    and variable frame rates alike. Without them the times are ``i / source_fps``. A source
    whose average rate over the window is below ``target_fps`` (or unknown) is used frame by frame.

    :raises SkipClip: the clip is shorter than the shortest rung; the reason gives both lengths.
    """
    start = max(0, skip_start)
    end = num_frames - max(0, skip_end)
    if times is None or len(times) != num_frames:
        rate = source_fps if source_fps > 0 else 0.0
        times = [i / rate for i in range(num_frames)] if rate else None
    picks = _pick_by_time(times, start, end, target_fps)
    count = next((n for n in sorted(ladder, reverse=True) if n <= len(picks)), None)
    if count is None:
        stride = sampling_stride(source_fps, target_fps)
        rate = f"at {target_fps:g} fps " if stride > 1 else ""
        skipped = f" after skipping {skip_start} + {skip_end}" if skip_start or skip_end else ""
        raise SkipClip(
            f"too short: {len(picks)} frames {rate}({num_frames} at {source_fps:g} fps{skipped}); "
            f"the shortest frame bucket is {min(ladder)} frames"
        )
    return tuple(picks[:count])


def _pick_by_time(times: Sequence[float] | None, start: int, end: int, target_fps: float) -> list[int]:
    """Every frame of ``start..end`` picked at ``target_fps`` by time (see ``select_frames``)."""
    if end <= start:
        return []
    span = times[end - 1] - times[start] if times else 0.0
    if not times or target_fps <= 0 or span <= 0 or (end - 1 - start) / span <= target_fps * (1 + 1e-9):
        return list(range(start, end))
    # The clip ends half a mean source frame after its last frame's time.
    limit = times[end - 1] + 0.5 * span / (end - 1 - start)
    picks: list[int] = []
    j = start
    k = 0
    while True:
        target = times[start] + k / target_fps
        if target > limit:
            break
        while j + 1 < end and abs(times[j + 1] - target) <= abs(times[j] - target):
            j += 1
        pick = j if not picks or j > picks[-1] else picks[-1] + 1
        if pick >= end:
            break
        picks.append(pick)
        j = max(j, pick)
        k += 1
    return picks
