"""Real footage: rotation, anamorphic pixels, variable frame rate, edit lists, other codecs.

Every fixture (tests/footage.py) draws its markers upright at the display size and a clock; the
tests decode through the data path and compare with what a player (the static ffmpeg, rotating
and scaling by the sample aspect as players do) shows.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from footage import KINDS, player_view, read_markers, vfr_times, write_kind

from cogvx_ext.data.video import probe, read_frames
from cogvx_ext_plugins.aspect_bucket.frames import select_frames

# kind -> (display WxH, stored WxH, rotation, sample aspect, frames, decoder)
EXPECTED = {
    "rotate90": ("96x160", "160x96", 90, "1:1", 24, "decord"),
    "rotate180": ("160x96", "160x96", 180, "1:1", 24, "decord"),
    "rotate270": ("96x160", "160x96", 270, "1:1", 24, "decord"),
    "anamorphic": ("192x96", "144x96", 0, "4:3", 24, "decord"),
    "vfr": ("160x96", "160x96", 0, "1:1", 40, "decord"),
    "vp9_realtime": ("160x96", "160x96", 0, "1:1", 30, "pyav"),
    "gif": ("160x96", "160x96", 0, "1:1", 20, "pyav"),
    "mpegts": ("160x96", "160x96", 0, "1:1", 24, "pyav"),
    "mjpeg": ("160x96", "160x96", 0, "1:1", 24, "decord"),
    "hevc10": ("160x96", "160x96", 0, "1:1", 24, "decord"),
    "gray": ("160x96", "160x96", 0, "1:1", 24, "decord"),
    "full_range": ("160x96", "160x96", 0, "1:1", 24, "decord"),
    "edit_list": ("160x96", "160x96", 0, "1:1", 42, "pyav"),  # 72 packets, 30 hidden by the edit list
}
FIRST_SHOWN = {"edit_list": 30}  # the clock of the first frame a player shows


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    folder = tmp_path_factory.mktemp("footage")
    return {kind: write_kind(folder, kind) for kind in KINDS}


def test_every_kind_has_a_fixture():
    assert set(EXPECTED) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_probe_reads_display_geometry_shown_frames_and_decoder(footage, kind):
    info = probe(footage[kind])
    display, stored, rotation, sample_aspect, frames, decoder = EXPECTED[kind]
    got = (
        info.display_size,
        info.stored_size,
        info.rotation,
        info.sample_aspect,
        info.num_frames,
        info.decoder,
    )
    assert got == (display, stored, rotation, sample_aspect, frames, decoder)
    player = player_view(footage[kind])
    assert f"{player.shape[1]}x{player.shape[0]}" == info.display_size
    assert len(info.frame_times) == info.num_frames
    assert all(b > a for a, b in zip(info.frame_times, info.frame_times[1:]))


def _check_like_player(kind, path, info, decoded, source_frames, scale=1.0):
    """Each decoded picture shows its markers where a player shows them, and the right clock."""
    gray = kind == "gray"
    for picture, index in zip(decoded, source_frames):
        markers = read_markers(picture.numpy(), gray)
        seen = read_markers(player_view(path, index), gray)
        assert markers.index == seen.index == index + FIRST_SHOWN.get(kind, 0)
        for got, want in ((markers.red, seen.red), (markers.green, seen.green)):
            assert got == pytest.approx(want, abs=0.03 / scale), (kind, index, markers, seen)
        if scale == 1:  # smaller, the square is a few pixels and its colour edges blur
            assert markers.red_aspect == pytest.approx(1, abs=0.15), (kind, markers)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("decoder", ["probed", "pyav"])
def test_frames_decode_upright_at_display_aspect(footage, kind, decoder):
    path = footage[kind]
    info = probe(path)
    if decoder == "pyav":
        info = dataclasses.replace(info, decoder="pyav")
    frames = [0, 5, info.num_frames - 1]
    whole = (0, 0, info.height, info.width)
    pixels = read_frames(path, frames, whole, (info.height, info.width), info=info)
    assert pixels.shape == (3, 3, info.height, info.width)
    _check_like_player(kind, path, info, pixels, frames)
    # Resized while decoding to about half the area: still upright, still not stretched.
    smaller = (round(info.height * 0.75 / 16) * 16, round(info.width * 0.75 / 16) * 16)
    pixels = read_frames(path, frames, whole, smaller, info=info)
    assert pixels.shape == (3, 3, *smaller)
    _check_like_player(kind, path, info, pixels, frames, scale=0.75)


@pytest.mark.parametrize("kind", ["full_range", "hevc10", "gray", "mjpeg"])
def test_levels_survive_decoding(footage, kind):
    """Background 128 and the clock's white/black blocks keep their levels (range and depth right)."""
    info = probe(footage[kind])
    for decoder in ("decord", "pyav"):
        one = dataclasses.replace(info, decoder=decoder)
        pixels = (
            read_frames(footage[kind], [255 % info.num_frames], (0, 0, 96, 160), (96, 160), info=one) + 1
        ) * 127.5
        background = pixels[0, :, 40:60, 40:100].mean().item()
        clock = pixels[0, :, 88:, 40:136]
        assert background == pytest.approx(128, abs=5), (decoder, background)
        assert clock.max().item() > 235 and clock.min().item() < 20, decoder


def test_a_file_decord_fails_on_falls_back_to_pyav_while_training(footage):
    """A file the probe gave to decord that decord then cannot read still trains (PyAV)."""
    info = dataclasses.replace(probe(footage["mpegts"]), decoder="decord")
    pixels = read_frames(footage["mpegts"], [2, 9], (0, 0, 96, 160), (96, 160), info=info)
    assert [read_markers(p.numpy()).index for p in pixels] == [2, 9]


def test_variable_frame_rate_frames_are_one_over_fps_apart_in_seconds(footage):
    info = probe(footage["vfr"])
    times = vfr_times(40)
    indices = select_frames(info.num_frames, info.fps, 8, [13, 9, 5], times=info.times())
    pixels = read_frames(footage["vfr"], indices, (0, 0, 96, 160), (96, 160), info=info)
    clocks = [read_markers(p.numpy()).index for p in pixels]
    assert clocks == list(indices)
    for k, index in enumerate(clocks):
        # Within half a source frame (the local spacing) of k / fps after the first.
        spacing = max(
            times[index] - times[index - 1] if index else 0, times[min(index + 1, 39)] - times[index]
        )
        assert abs(times[index] - times[clocks[0]] - k / 8) <= spacing / 2 + 1e-6, (k, index)
    assert all(b > a for a, b in zip(clocks, clocks[1:]))


def test_constant_rate_sampling_matches_the_stride_rule():
    times = [i / 30 for i in range(90)]
    picks = select_frames(90, 30, 8, [21, 17], times=times)
    assert picks == tuple(math.floor(i * 3.75 + 0.5) for i in range(21))


def test_edit_list_only_shown_frames_count_and_time_runs_forward(footage):
    info = probe(footage["edit_list"])
    indices = select_frames(info.num_frames, info.fps, 8, [13, 9, 5], skip_start=2, times=info.times())
    assert indices[0] == 2 and len(indices) == 13  # 40 frames after the skip, every third
    pixels = read_frames(footage["edit_list"], indices, (0, 0, 96, 160), (96, 160), info=info)
    clocks = [read_markers(p.numpy()).index for p in pixels]
    assert clocks == [30 + i for i in indices]


@pytest.mark.parametrize("bom", [True, False])
def test_listing_with_bom_crlf_trailing_spaces_spaces_and_non_ascii(tmp_path, bom):
    from footage import write_video

    from cogvx_ext.script.data_formats import read_listing

    names = ["clip one é.mp4", "sub dir/ünïcode 视频.mp4", "plain.mp4"]
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        write_video(tmp_path / name, 64, 48, num_frames=6)
    start = "\ufeff" if bom else ""
    (tmp_path / "videos.txt").write_bytes((start + "".join(f"{n}  \r\n" for n in names)).encode("utf-8"))
    (tmp_path / "prompts.txt").write_bytes((start + "a cat \r\nun chat\t\r\n\r\nein Hund").encode("utf-8"))
    entries, skipped = read_listing(tmp_path, "prompts.txt", "videos.txt")
    assert skipped == []
    assert [(e.path, e.prompt) for e in entries] == [
        (str(tmp_path / names[0]), "a cat"),
        (str(tmp_path / names[1]), "un chat"),
        (str(tmp_path / names[2]), "ein Hund"),
    ]
    assert all(probe(e.path).num_frames == 6 for e in entries)
