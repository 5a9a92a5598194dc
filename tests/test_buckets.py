"""aspect_bucket's spatial buckets: generation, parsing, assignment."""

from __future__ import annotations

import math
import random

import pytest

from cogvx_ext.base.errors import SkipClip, UsageError
from cogvx_ext_plugins.aspect_bucket.buckets import (
    assign,
    crop_box,
    crop_fraction,
    generate_bucket_ladder,
    generate_buckets,
    group_rungs,
    parse_buckets,
)

AREAS = [(576, 1024), (480, 720), (768, 1360)]


def nearest_crop(aspect: float, buckets) -> float:
    return min(crop_fraction(aspect, w / h) for h, w in buckets)


@pytest.mark.parametrize("height,width", AREAS)
@pytest.mark.parametrize("spacing", [0.03, 0.06])
def test_generated_buckets_cover_the_range_within_the_crop_allowance(height, width, spacing):
    area = height * width
    buckets = generate_buckets(area, 256, 2048, 2.4, spacing, anchors=[(height, width)])
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in buckets)
    assert all(256 <= h <= 2048 and 256 <= w <= 2048 for h, w in buckets)
    # As close to the area as a multiple of 16 allows: within half a 16 px step of each side.
    for h, w in buckets:
        assert abs(h * w - area) <= 8 * (h + w), (h, w)
        assert abs(h * w / area - 1) < 0.025
    assert (height, width) in buckets and (width, height) in buckets
    assert any(h == w for h, w in buckets)
    assert {(w, h) for h, w in buckets} == set(buckets)  # portrait mirrors landscape
    # Dense sweep of aspects from 1:2.4 to 2.4:1: each is within the allowance of a bucket.
    steps = 2000
    for i in range(steps + 1):
        aspect = math.exp(-math.log(2.4) + 2 * math.log(2.4) * i / steps)
        assert nearest_crop(aspect, buckets) <= spacing + 1e-9, aspect
    # ... and no denser than needed: neighbours are not all within one allowance of each other.
    logs = sorted(math.log(w / h) for h, w in buckets)
    assert max(b - a for a, b in zip(logs, logs[1:])) > -math.log(1 - spacing)


def test_denser_spacing_gives_more_buckets():
    area = 576 * 1024
    assert len(generate_buckets(area, max_crop=0.01)) > len(generate_buckets(area, max_crop=0.03))
    assert len(generate_buckets(area, max_crop=0.03)) > len(generate_buckets(area, max_crop=0.10))


def test_16_9_clips_get_exactly_1024x576_with_no_3_2_stretch():
    buckets = generate_buckets(1024 * 576, anchors=[(576, 1024)])
    for width, height in [(1920, 1080), (1280, 720), (3840, 2160)]:
        got = assign(width, height, buckets, upscale_limit=2.0, max_crop=0.25)
        assert got.bucket == (576, 1024)
        assert got.crop_fraction == pytest.approx(0.0, abs=1e-12)
        assert got.crop == (0, 0, height, width)
    portrait = assign(1080, 1920, buckets, upscale_limit=2.0, max_crop=0.25)
    assert portrait.bucket == (1024, 576)


def test_side_limits_are_respected_even_if_the_range_cannot_be_covered():
    buckets = generate_buckets(512 * 512, min_side=400, max_side=700, max_aspect=3.0)
    assert all(400 <= side <= 700 for bucket in buckets for side in bucket)
    assert max(w / h for h, w in buckets) < 3.0  # the sides stop it before 3:1


def test_ladder_rungs_shrink_and_stop_at_the_minimum_side():
    rungs = generate_bucket_ladder(1024 * 576, min_side=256, anchors=[(576, 1024)])
    areas = [sum(h * w for h, w in rung) / len(rung) for rung in rungs]
    assert len(rungs) == 4  # squares 768, 576, 432, 320; 240 would be below 256
    for larger, smaller in zip(areas, areas[1:]):
        assert smaller / larger == pytest.approx(0.75**2, rel=0.06)
    assert (432, 768) in rungs[1]  # the anchor scaled with its rung
    assert [len(r) for r in group_rungs([b for rung in rungs for b in rung])] == [len(r) for r in rungs]


def test_crop_fraction_is_what_the_crop_box_cuts_away():
    assert crop_fraction(16 / 9, 16 / 9) == 0
    assert crop_fraction(16 / 9, 1.0) == pytest.approx(1 - 9 / 16)
    assert crop_fraction(1.0, 16 / 9) == pytest.approx(1 - 9 / 16)
    top, left, h, w = crop_box(1920, 1080, (768, 768))
    assert (top, left, h, w) == (0, 420, 1080, 1080)
    assert 1 - (h * w) / (1920 * 1080) == pytest.approx(crop_fraction(1920 / 1080, 1.0))


def test_assignment_is_nearest_log_aspect_in_the_top_rung():
    buckets = generate_buckets(1024 * 576, anchors=[(576, 1024)])
    rng = random.Random(0)
    for _ in range(500):
        width, height = rng.randint(700, 3000), rng.randint(700, 3000)
        if not 1 / 2.4 <= width / height <= 2.4:
            continue
        got = assign(width, height, buckets, upscale_limit=10, max_crop=0.25)
        best = min(abs(math.log(width / height) - math.log(w / h)) for h, w in buckets)
        assert abs(math.log(width / height) - math.log(got.bucket[1] / got.bucket[0])) == pytest.approx(best)
        assert got.crop_fraction <= 0.03 + 1e-9
        top, left, h, w = got.crop
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        assert w / h == pytest.approx(got.bucket[1] / got.bucket[0], abs=1.5 / min(h, w) * (w / h))
        assert got.upscale == pytest.approx(max(got.bucket[0] / height, got.bucket[1] / width))


@pytest.mark.parametrize(
    "buckets,expected",
    [
        # 2:1 lies exactly between 1:1 and 4:1 in log-aspect; the larger area wins.
        ([(1008, 1008), (496, 1984)], (1008, 1008)),
        ([(992, 992), (512, 2048)], (512, 2048)),
    ],
)
def test_ties_go_to_the_larger_area(buckets, expected):
    assert len(group_rungs(buckets)) == 1  # one rung: the tie is decided by area alone
    assert assign(2000, 1000, buckets, upscale_limit=2, max_crop=0.6).bucket == expected


def test_small_clips_are_demoted_rather_than_enlarged():
    rungs = generate_bucket_ladder(1024 * 576, anchors=[(576, 1024)])
    buckets = [b for rung in rungs for b in rung]
    top = assign(720, 480, buckets, upscale_limit=1.5, max_crop=0.25)
    assert top.bucket in rungs[0] and top.upscale > 1.25
    demoted = assign(720, 480, buckets, upscale_limit=1.0, max_crop=0.25)
    assert demoted.bucket in rungs[1] and demoted.upscale <= 1.0
    assert demoted.crop_fraction <= 0.03 + 1e-9  # the smaller rung has the aspect too
    smaller = assign(400, 300, buckets, upscale_limit=1.0, max_crop=0.25)
    assert smaller.bucket in rungs[3] and smaller.upscale <= 1.0


def test_tiny_clip_is_skipped_with_its_enlargement():
    buckets = [b for rung in generate_bucket_ladder(1024 * 576) for b in rung]
    with pytest.raises(
        SkipClip, match=r"too small: 32x32 would be enlarged 10.00x .* 320x320 \(limit 1.25x\)"
    ):
        assign(32, 32, buckets, upscale_limit=1.25, max_crop=0.25)


@pytest.mark.parametrize("width,height,label", [(256, 2048, "1:8.00"), (2048, 256, "8.00:1")])
def test_extreme_aspect_is_skipped_past_the_crop_cap(width, height, label):
    buckets = [b for rung in generate_bucket_ladder(1024 * 576) for b in rung]
    with pytest.raises(SkipClip, match=rf"aspect {label} .* too far from every bucket: 70% .*cap 25%"):
        assign(width, height, buckets, upscale_limit=10, max_crop=0.25)
    # The same clip is kept when the cap allows it.
    assert assign(width, height, buckets, upscale_limit=10, max_crop=0.75).crop_fraction == pytest.approx(
        0.7, abs=0.01
    )


def test_explicit_rungs_fall_back_to_a_smaller_shape_of_the_right_aspect():
    buckets = parse_buckets("1024x576,576x1024,512x512")
    assert group_rungs(buckets) == [[(576, 1024), (1024, 576)], [(512, 512)]]
    # A square clip is beyond the cap in the top rung, fits the square one below.
    assert assign(800, 800, buckets, upscale_limit=1.25, max_crop=0.25).bucket == (512, 512)
    # A 16:9 clip too small for 1024x576 has no smaller 16:9 shape: skipped, not stretched.
    with pytest.raises(SkipClip, match="too small"):
        assign(640, 360, buckets, upscale_limit=1.25, max_crop=0.25)


def test_random_crop_is_inside_and_repeatable():
    boxes = {crop_box(1920, 1080, (768, 768), "random", random.Random(seed)) for seed in range(20)}
    assert len(boxes) > 10
    assert all(b[0] == 0 and 0 <= b[1] <= 840 and b[2:] == (1080, 1080) for b in boxes)
    assert crop_box(1920, 1080, (768, 768), "random", random.Random(3)) == crop_box(
        1920, 1080, (768, 768), "random", random.Random(3)
    )
    assert crop_box(1920, 1080, (768, 768), "center") == (0, 420, 1080, 1080)
    with pytest.raises(ValueError, match="crop_position"):
        crop_box(1920, 1080, (768, 768), "left")


def test_parse_buckets_reads_width_x_height():
    assert parse_buckets("1024x576, 576x1024,768x768,1024x576") == [(576, 1024), (1024, 576), (768, 768)]


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "1000x576",
            r"1000x576 has a side \(1000\) that is not a positive multiple of 16 .*nearest: 1008x576",
        ),
        ("1024x570", r"side \(570\)"),
        ("1024by576", "'1024by576' is not WIDTHxHEIGHT"),
        ("0x576", r"side \(0\)"),
        (" , ", "no bucket given"),
    ],
)
def test_parse_buckets_errors(text, message):
    with pytest.raises(UsageError, match=message):
        parse_buckets(text)
