"""Spatial buckets: which (height, width) shapes exist, and which one a clip trains at.

Shapes are ``(height, width)`` in pixels, multiples of 16 (VAE 8 x patch 2). Aspect means
width / height. Distances between aspects are measured in log-aspect, where the cropped fraction
of a clip of aspect ``a`` in a bucket of aspect ``b`` is ``1 - exp(-|ln a - ln b|)``.

Generated buckets
    For one target area, every width that is a multiple of 16 gets the height (multiple of 16)
    that brings the area closest to the target: a dense set of candidates. From these, buckets
    are chosen greedily along log-aspect so that every aspect in the range is within the crop
    allowance of some bucket, with the square and the run's own ``--height x --width`` (and its
    transpose) always present: a 16:9 clip trains at exactly 1024x576 when that is the target,
    not at a 3:2 shape that happens to be nearby. Portrait buckets mirror landscape ones.

A ladder of areas (why demotion uses rungs)
    A clip that would have to be enlarged beyond the upscale limit goes to a smaller bucket.
    Scaling each clip's bucket down by 16 px at a time would give nearly every small clip a shape
    of its own: batches of one, and a new shape for the allocator each step. Instead the buckets
    come in rungs: the same generation at areas shrinking by 0.75 in side (0.5625 in area) per
    rung, down to the minimum side. A demoted clip takes the nearest aspect of the largest rung
    that does not enlarge it too much, and shares that shape with every other clip demoted there.
    Explicit ``--buckets`` lists form rungs by area in the same way (shapes within 25 % of each
    other's area are one rung), and no shape is added to them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cogvx_ext.api import SkipClip, UsageError

Bucket = tuple[int, int]  # (height, width) in pixels

# Sides shrink by this factor from one rung of the area ladder to the next.
RUNG_SIDE_FACTOR = 0.75
# Buckets whose areas are within this factor of the largest in a rung belong to that rung.
RUNG_AREA_FACTOR = 1.25
# Log-aspect distances closer than this count as equal (ties go to the larger area).
_TIE = 1e-9


def log_aspect(height: int, width: int) -> float:
    return math.log(width / height)


def crop_fraction(source_aspect: float, bucket_aspect: float) -> float:
    """Fraction of the source picture cut away when covering a bucket: ``1 - exp(-|ln a - ln b|)``."""
    return 1.0 - math.exp(-abs(math.log(source_aspect) - math.log(bucket_aspect)))


def aspect_label(aspect: float) -> str:
    """``1.78`` -> ``"1.78:1"``, ``0.125`` -> ``"1:8.00"``."""
    return f"{aspect:.2f}:1" if aspect >= 1 else f"1:{1 / aspect:.2f}"


def _round_to(value: float, multiple: int) -> int:
    # Halves round up (Python's round() would send 1000 to 992 but 1016 to 1024).
    return max(multiple, math.floor(value / multiple + 0.5) * multiple)


def _landscape_candidates(
    area: int, min_side: int, max_side: int, max_aspect: float, multiple: int
) -> list[Bucket]:
    """For every width, the height with the area nearest the target; aspects from 1 to max_aspect."""
    found = []
    first = math.ceil(min_side / multiple) * multiple
    for width in range(first, max_side + 1, multiple):
        height = _round_to(area / width, multiple)
        if min_side <= height <= max_side and height <= width and width / height <= max_aspect * (1 + 1e-9):
            found.append((height, width))
    return found


def generate_buckets(
    area: int,
    min_side: int = 256,
    max_side: int = 2048,
    max_aspect: float = 2.4,
    max_crop: float = 0.03,
    multiple: int = 16,
    anchors: Iterable[Bucket] = (),
) -> list[Bucket]:
    """Buckets of about ``area`` pixels covering aspects ``1:max_aspect`` to ``max_aspect:1``.

    Any aspect in that range loses at most ``max_crop`` of its picture in its nearest bucket,
    unless the sides or the multiple leave no shape there (small areas, tight side limits): such
    gaps show as larger crops in the plan report. ``anchors`` (and their transposes) are always
    included, and so is the square.

    :returns: ``(height, width)`` pairs, portrait first, sorted by aspect.
    """
    if area <= 0 or multiple <= 0 or min_side > max_side or max_aspect < 1 or not 0 <= max_crop < 1:
        raise ValueError(
            f"bad bucket settings: area={area}, sides {min_side}..{max_side}, "
            f"max_aspect={max_aspect}, max_crop={max_crop}, multiple={multiple}"
        )
    reach = -math.log(1.0 - max_crop)  # log-aspect distance a bucket covers on each side
    limit = math.log(max_aspect)
    candidates = _landscape_candidates(area, min_side, max_side, max_aspect, multiple)
    chosen: set[Bucket] = set()
    side = _round_to(math.sqrt(area), multiple)
    if min_side <= side <= max_side:
        chosen.add((side, side))
    for height, width in anchors:
        if height % multiple or width % multiple:
            raise ValueError(f"anchor {width}x{height} is not a multiple of {multiple}")
        chosen.add((min(height, width), max(height, width)))
    # Greedy interval cover of [0, limit]: everything below `covered` has a bucket within reach.
    covered = 0.0
    while covered < limit - _TIE:
        points = [log_aspect(*b) for b in chosen]
        extended = max((p + reach for p in points if p - reach <= covered + _TIE), default=covered)
        if extended > covered + _TIE:
            covered = extended
            continue
        # The furthest candidate that still covers `covered`; if the multiple leaves a gap,
        # take the next shape beyond it so the rest of the range is still covered.
        options = [c for c in candidates if log_aspect(*c) <= covered + reach + _TIE]
        beyond = [c for c in candidates if log_aspect(*c) > covered + reach + _TIE]
        pick = max(options, key=lambda c: log_aspect(*c), default=None)
        if pick is None or log_aspect(*pick) + reach <= covered + _TIE:
            pick = min(beyond, key=lambda c: log_aspect(*c), default=None)
            if pick is None:
                break
            covered = log_aspect(*pick) - reach  # the gap before it is accepted
        chosen.add(pick)
    both = chosen | {(w, h) for h, w in chosen}
    return sorted(both, key=lambda b: (b[1] / b[0], b[0] * b[1]))


def generate_bucket_ladder(
    area: int,
    min_side: int = 256,
    max_side: int = 2048,
    max_aspect: float = 2.4,
    max_crop: float = 0.03,
    multiple: int = 16,
    anchors: Iterable[Bucket] = (),
    max_rungs: int | None = None,
) -> list[list[Bucket]]:
    """``generate_buckets`` at ``area`` and at areas shrinking by ``RUNG_SIDE_FACTOR`` in side.

    Rungs continue while their square side stays at or above ``min_side`` (and up to
    ``max_rungs``). Anchors are scaled with each rung, rounded to the multiple.
    """
    anchors = list(anchors)
    rungs = []
    scale = 1.0
    while math.sqrt(area) * scale >= min_side and (max_rungs is None or len(rungs) < max_rungs):
        rung_anchors = [(_round_to(h * scale, multiple), _round_to(w * scale, multiple)) for h, w in anchors]
        rung = generate_buckets(
            int(area * scale * scale), min_side, max_side, max_aspect, max_crop, multiple, rung_anchors
        )
        if rung and (not rungs or set(rung) != set(rungs[-1])):
            rungs.append(rung)
        scale *= RUNG_SIDE_FACTOR
    return rungs


def parse_buckets(text: str, multiple: int = 16) -> list[Bucket]:
    """Parse ``"1024x576,576x1024,768x768"`` (WIDTHxHEIGHT, like ``--width``/``--height``).

    :returns: ``(height, width)`` pairs in the order given, without repeats.
    :raises UsageError: an item that is not WIDTHxHEIGHT, or a side that is not a positive
        multiple of ``multiple``.
    """
    buckets: list[Bucket] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        width, sep, height = item.lower().partition("x")
        if not (sep and width.strip().isdigit() and height.strip().isdigit()):
            raise UsageError(f"--buckets: '{item}' is not WIDTHxHEIGHT (e.g. 1024x576)")
        w, h = int(width), int(height)
        bad = [side for side in (w, h) if side <= 0 or side % multiple]
        if bad:
            raise UsageError(
                f"--buckets: {item} has a side ({bad[0]}) that is not a positive multiple of {multiple} "
                f"(VAE 8 x patch 2); nearest: {_round_to(w, multiple)}x{_round_to(h, multiple)}"
            )
        if (h, w) not in buckets:
            buckets.append((h, w))
    if not buckets:
        raise UsageError("--buckets: no bucket given (e.g. --buckets 1024x576,576x1024,768x768)")
    return buckets


def group_rungs(buckets: Sequence[Bucket]) -> list[list[Bucket]]:
    """Group buckets by area, largest first: a rung holds shapes within ``RUNG_AREA_FACTOR`` of its largest."""
    rungs: list[list[Bucket]] = []
    top = 0
    for bucket in sorted(buckets, key=lambda b: -b[0] * b[1]):
        area = bucket[0] * bucket[1]
        if not rungs or area * RUNG_AREA_FACTOR < top:
            rungs.append([])
            top = area
        rungs[-1].append(bucket)
    return rungs


@dataclass(frozen=True)
class Assignment:
    """Where one clip goes: its bucket, the source region kept, and what that costs."""

    bucket: Bucket  # (height, width)
    crop: tuple[int, int, int, int]  # (top, left, height, width) in source pixels
    crop_fraction: float  # of the source picture cut away
    upscale: float  # source pixels are scaled by this (> 1 enlarges)


def _nearest(rung: Sequence[Bucket], aspect: float) -> Bucket:
    target = math.log(aspect)
    # Ties (equal log distance) go to the larger area, then the wider shape, so the choice is stable.
    return min(rung, key=lambda b: (round(abs(log_aspect(*b) - target), 9), -b[0] * b[1], -b[1]))


def cover_scale(width: int, height: int, bucket: Bucket) -> float:
    """The scale at which a ``width x height`` picture just covers the bucket."""
    return max(bucket[0] / height, bucket[1] / width)


def crop_box(
    width: int, height: int, bucket: Bucket, crop_position: str = "center", rng: random.Random | None = None
) -> tuple[int, int, int, int]:
    """The region of the source, ``(top, left, height, width)``, with the bucket's aspect.

    The cut side is rounded to whole source pixels (its aspect then differs from the bucket's by
    under one pixel). ``random`` draws the offset from ``rng`` (a centred crop without one).
    """
    bucket_aspect = bucket[1] / bucket[0]
    if width / height >= bucket_aspect:
        crop_h, crop_w = height, min(width, max(1, round(height * bucket_aspect)))
    else:
        crop_h, crop_w = min(height, max(1, round(width / bucket_aspect))), width
    if crop_position == "random" and rng is not None:
        top, left = rng.randint(0, height - crop_h), rng.randint(0, width - crop_w)
    elif crop_position in ("center", "random"):
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
    else:
        raise ValueError(f"crop_position must be 'center' or 'random', not {crop_position!r}")
    return (top, left, crop_h, crop_w)


def assign(
    width: int,
    height: int,
    buckets: Sequence[Bucket],
    upscale_limit: float,
    max_crop: float,
    crop_position: str = "center",
    rng: random.Random | None = None,
) -> Assignment:
    """Choose the bucket of a ``width x height`` clip.

    Rungs (buckets grouped by area, ``group_rungs``) are tried largest first; in each, the bucket
    nearest in log-aspect (ties to the larger area). The first whose crop is within ``max_crop``
    and whose enlargement is within ``upscale_limit`` wins: a clip too small for the target area
    is demoted to a smaller rung rather than blown up.

    :raises SkipClip: no bucket within the crop cap (extreme aspect), or every bucket within it
        would enlarge the clip beyond the limit (tiny clip). The reason says which and by how much.
    """
    if width <= 0 or height <= 0:
        raise SkipClip(f"no picture ({width}x{height})")
    if not buckets:
        raise ValueError("assign needs at least one bucket")
    aspect = width / height
    best_crop: tuple[float, Bucket] | None = None
    least_upscale: tuple[float, Bucket] | None = None
    for rung in group_rungs(buckets):
        bucket = _nearest(rung, aspect)
        crop = crop_fraction(aspect, bucket[1] / bucket[0])
        if best_crop is None or crop < best_crop[0]:
            best_crop = (crop, bucket)
        if crop > max_crop + _TIE:
            continue
        upscale = cover_scale(width, height, bucket)
        if least_upscale is None or upscale < least_upscale[0]:
            least_upscale = (upscale, bucket)
        if upscale > upscale_limit + _TIE:
            continue
        return Assignment(bucket, crop_box(width, height, bucket, crop_position, rng), crop, upscale)
    if least_upscale is None:
        crop, bucket = best_crop
        raise SkipClip(
            f"aspect {aspect_label(aspect)} ({width}x{height}) is too far from every bucket: "
            f"{crop:.0%} would be cropped for {bucket[1]}x{bucket[0]} (cap {max_crop:.0%})"
        )
    upscale, bucket = least_upscale
    raise SkipClip(
        f"too small: {width}x{height} would be enlarged {upscale:.2f}x even for the smallest bucket of its "
        f"aspect, {bucket[1]}x{bucket[0]} (limit {upscale_limit:g}x)"
    )
