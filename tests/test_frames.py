"""aspect_bucket's frame buckets: counts the model takes, sampling at --fps, short clips."""

from __future__ import annotations

import pytest

from cogvx_ext.base.errors import SkipClip, UsageError
from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.testing import tiny_transformer_config
from cogvx_ext_plugins.aspect_bucket.frames import (
    check_frames_spec,
    frame_ladder,
    frames_available,
    sampling_stride,
    select_frames,
    valid_counts,
)

V10 = ModelInfo.from_config(tiny_transformer_config("5b"))
V15 = ModelInfo.from_config(tiny_transformer_config("1.5-5B"))


def test_valid_counts_follow_each_model():
    assert valid_counts(V10, 21) == [21, 17, 13, 9, 5]
    assert valid_counts(V15, 53) == [53, 45, 37, 29, 21, 13, 5]  # even latent counts only
    assert all(V15.latent_frames(n) % 2 == 0 for n in valid_counts(V15, 200))


@pytest.mark.parametrize(
    "model,max_frames,spec,expected",
    [
        (V10, 49, "auto", [49, 33, 17]),
        (V10, 50, "auto", [49, 33, 17]),
        (V10, 49, "max", [49]),
        (V10, 17, "auto", [17, 13, 5]),
        (V10, 9, "auto", [9, 5]),
        (V15, 81, "auto", [77, 53, 21]),
        (V15, 49, "auto", [45, 29, 13]),
        (V15, 81, "max", [77]),
        (V10, 49, "17,49,33,49", [49, 33, 17]),
        (V15, 49, "85,13", [85, 13]),  # an explicit list is not bound by --max_num_frames
    ],
)
def test_frame_ladder(model, max_frames, spec, expected):
    ladder = frame_ladder(model, max_frames, spec)
    assert ladder == expected
    assert all(model.valid_frame_count(n) for n in ladder)


@pytest.mark.parametrize(
    "model,spec,message",
    [
        (V10, "48", r"cannot take 48 frames: it takes 4k\+1 frames .*nearest: 45 or 49"),
        (
            V15,
            "49",
            r"1.5 cannot take 49 frames: it takes 4k\+1 frames with an even latent count.*nearest: 45 or 53",
        ),
        (V10, "1", "at least 5"),
        (V10, "49,abc", "'abc' is not a frame count"),
        (V10, ",", "no frame count given"),
    ],
)
def test_frame_ladder_errors(model, spec, message):
    with pytest.raises(UsageError, match=message):
        frame_ladder(model, 49, spec)


def test_frame_ladder_without_any_valid_count():
    with pytest.raises(UsageError, match="--max_num_frames 4 leaves no frame count"):
        frame_ladder(V10, 4, "auto")


@pytest.mark.parametrize("spec", ["auto", "MAX", "49,33,17", "5"])
def test_check_frames_spec_accepts(spec):
    check_frames_spec(spec)


@pytest.mark.parametrize(
    "spec,message", [("48", r"48 is not 4k\+1 .*nearest: 45 or 49"), ("x", "not a frame count"), ("", "")]
)
def test_check_frames_spec_rejects(spec, message):
    if not spec:
        check_frames_spec(spec)  # empty means the default, auto
        return
    with pytest.raises(UsageError, match=message):
        check_frames_spec(spec)


def test_sampling_stride():
    assert sampling_stride(24, 8) == 3
    assert sampling_stride(30, 8) == 3.75
    assert sampling_stride(8, 24) == 1  # never repeats frames
    assert sampling_stride(0, 8) == 1  # unknown source rate
    assert frames_available(100, 3) == 34  # 0, 3, ..., 99
    assert frames_available(99, 3) == 33
    assert frames_available(10, 1, 4, 8) == 0


def test_select_frames_samples_at_the_training_rate():
    assert select_frames(200, 24, 8, [49, 33, 17]) == tuple(range(0, 147, 3))
    # 30 fps to 8: every 3.75th frame, rounded to the nearest.
    assert select_frames(200, 30, 8, [17]) == (
        0,
        4,
        8,
        11,
        15,
        19,
        23,
        26,
        30,
        34,
        38,
        41,
        45,
        49,
        53,
        56,
        60,
    )
    # A clip already at 8 fps is taken frame by frame; so is a slower one.
    assert select_frames(60, 8, 8, [49]) == tuple(range(49))
    assert select_frames(60, 4, 8, [49]) == tuple(range(49))


def test_select_frames_takes_the_longest_rung_the_clip_fills():
    ladder = [49, 33, 17]
    assert len(select_frames(145, 24, 8, ladder)) == 49  # 0, 3, ..., 144
    assert len(select_frames(144, 24, 8, ladder)) == 33  # frame 144 is missing
    assert len(select_frames(100, 24, 8, ladder)) == 33
    assert len(select_frames(60, 24, 8, ladder)) == 17


def test_select_frames_honours_skips():
    indices = select_frames(100, 24, 8, [17], skip_start=10, skip_end=10)
    assert indices[0] == 10 and indices[-1] <= 89 and len(indices) == 17


def test_select_frames_stays_inside_the_clip():
    for num_frames in range(1, 160):
        for fps in (8, 23.976, 24, 25, 29.97, 30, 60):
            try:
                indices = select_frames(num_frames, fps, 8, [49, 33, 17, 5], 2, 3)
            except SkipClip:
                assert frames_available(num_frames, sampling_stride(fps, 8), 2, 3) < 5
                continue
            assert 2 <= indices[0] and indices[-1] < num_frames - 3
            assert list(indices) == sorted(set(indices))


def test_short_clip_is_skipped_with_both_lengths():
    with pytest.raises(
        SkipClip, match=r"too short: 14 frames at 8 fps \(40 at 24 fps\); the shortest frame bucket is 17"
    ):
        select_frames(40, 24, 8, [49, 33, 17])
    with pytest.raises(SkipClip, match=r"too short: 3 frames \(3 at 8 fps\)"):
        select_frames(3, 8, 8, [5])
    with pytest.raises(SkipClip, match=r"after skipping 5 \+ 5"):
        select_frames(20, 8, 8, [17], skip_start=5, skip_end=5)
