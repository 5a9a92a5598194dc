"""cogvx_ext.data.video on real mp4 files: probe, read_frames, stock frame rule, bad files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import decord
import imageio_ffmpeg
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from decord.bridge import to_torch

from cogvx_ext.base.errors import SkipClip
from cogvx_ext.data.video import ClipError, decode_size, probe, read_frames, stock_frame_indices
from cogvx_ext.testing import write_bad_clips, write_clip


def write_texture(path, width: int, height: int, num_frames: int, fps: int = 8):
    """A smooth periodic texture: any misplacement of a crop shows, resamplers barely differ."""
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        output_params=["-crf", "10"],
        ffmpeg_log_level="error",
    )
    writer.send(None)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(num_frames):
        frame = np.stack(
            [
                128 + 100 * np.sin(2 * np.pi * (xs + 2 * i) / 53) * np.cos(2 * np.pi * ys / 47),
                128 + 100 * np.sin(2 * np.pi * (xs + ys) / 61 + i / 3),
                128 + 100 * np.cos(2 * np.pi * (ys - xs) / 71 - i / 5),
            ],
            -1,
        )
        writer.send(np.ascontiguousarray(frame.clip(0, 255).astype(np.uint8)))
    writer.close()
    return path


def remux_faststart(source, target):
    """Move the index (moov) to the front, so a file cut short still opens: truncation shows mid-decode."""
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(source)]
        + ["-c", "copy", "-movflags", "+faststart", str(target)],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture(scope="module")
def texture(tmp_path_factory):
    return write_texture(tmp_path_factory.mktemp("video") / "texture.mp4", 320, 240, 9)


def write_noise(path, width: int, height: int, num_frames: int):
    """Random pixels: every frame is a large packet, so a cut lands inside one."""
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=8,
        codec="libx264",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        output_params=["-crf", "23"],
        ffmpeg_log_level="error",
    )
    writer.send(None)
    rng = np.random.default_rng(0)
    for _ in range(num_frames):
        writer.send(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    writer.close()
    return path


def packets(path) -> list[tuple[int, int]]:
    """(byte offset, size) of every video packet."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [(p.pos, p.size) for p in container.demux(stream) if p.size]


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    clips = write_bad_clips(root)
    # With the index (moov) in front, a file cut short still opens: the damage shows later.
    whole = remux_faststart(write_noise(root / "noise.mp4", 320, 180, 12), root / "faststart.mp4")
    data = whole.read_bytes()
    offset, size = packets(whole)[8]
    clips["cut_between_frames"] = root / "cut_between_frames.mp4"
    clips["cut_between_frames"].write_bytes(data[:offset])  # holds frames 0-7 of 12
    clips["cut_inside_frame"] = root / "cut_inside_frame.mp4"
    clips["cut_inside_frame"].write_bytes(data[: offset + size // 2])  # frame 8 is half there
    return clips


def decode_all(path, indices):
    frames = to_torch(decord.VideoReader(str(path)).get_batch(list(indices)))
    return frames.permute(0, 3, 1, 2).float() / 127.5 - 1


# -- probe -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "width,height,num_frames,fps", [(320, 180, 25, 24), (96, 160, 9, 8), (250, 250, 13, 30)]
)
def test_probe_reads_size_frames_and_rate(tmp_path, width, height, num_frames, fps):
    path = write_clip(tmp_path / "clip.mp4", width, height, num_frames, fps=fps)
    info = probe(path)
    assert (info.width, info.height, info.num_frames) == (width, height, num_frames)
    assert info.fps == pytest.approx(fps)
    # The count is the one decord indexes, so every index below it decodes.
    assert info.num_frames == len(decord.VideoReader(str(path)))
    header = probe(path, count_frames=False)  # header only: no times, no decoder check
    assert (header.width, header.height, header.num_frames, header.fps) == (
        width,
        height,
        num_frames,
        info.fps,
    )


@pytest.mark.parametrize(
    "name,reason",
    [
        ("not_a_video", "not a video file"),
        ("truncated", "corrupt or truncated"),
        ("zero_frames", "no video stream"),
        ("one_frame", "only one frame"),
        ("cut_between_frames", "truncated: its header lists 12 frames, the file holds 8"),
        ("cut_inside_frame", "truncated: its header lists 12 frames"),
    ],
)
def test_probe_names_what_is_wrong_with_a_bad_file(bad, name, reason):
    with pytest.raises(ClipError, match=reason) as caught:
        probe(bad[name])
    assert isinstance(caught.value, SkipClip)  # the core skips it like any other refused clip


def test_probe_missing_folder_and_empty_files(tmp_path):
    with pytest.raises(ClipError, match="file does not exist"):
        probe(tmp_path / "nowhere.mp4")
    with pytest.raises(ClipError, match="is a folder"):
        probe(tmp_path)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ClipError, match="empty file"):
        probe(tmp_path / "empty.mp4")


def test_probe_unreadable_file(tmp_path):
    import subprocess
    import sys
    import tempfile

    folder = Path(tempfile.mkdtemp())
    folder.chmod(0o755)
    path = write_clip(folder / "locked.mp4", 64, 64, 5)
    path.chmod(0)
    # Root reads any file, so when the tests run as root the child imports what it needs, then
    # drops to an unprivileged user before touching the file.
    code = (
        "import os, sys\n"
        "import av, decord, torch\n"
        "from cogvx_ext.data.video import ClipError, probe, read_frames\n"
        "if os.geteuid() == 0:\n"
        "    os.setgid(65534)\n"
        "    os.setuid(65534)\n"
        "for call in (lambda: probe(sys.argv[1]),\n"
        "             lambda: read_frames(sys.argv[1], [0], (0, 0, 64, 64), (64, 64), source_size=(64, 64))):\n"
        "    try:\n"
        "        call()\n"
        "    except ClipError as exc:\n"
        "        print(exc)\n"
    )
    try:
        result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    finally:
        path.chmod(0o644)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all("permission denied" in line for line in lines)


# -- read_frames -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "crop,size",
    [
        ((0, 0, 240, 320), (96, 128)),  # whole picture, downscaled
        ((30, 0, 180, 320), (144, 256)),  # 16:9 band of a 4:3 source
        ((0, 70, 240, 180), (256, 192)),  # portrait crop, enlarged
        ((8, 16, 200, 150), (240, 176)),  # off-centre, enlarged
        ((10, 20, 200, 100), (96, 48)),  # decodes 48 wide, which decord cannot return: widened
        ((40, 60, 160, 120), (64, 48)),
    ],
)
def test_read_frames_is_crop_then_resize(texture, crop, size):
    indices = [0, 4, 8]
    got = read_frames(texture, indices, crop, size, source_size=(240, 320))
    assert got.shape == (3, 3, *size) and got.dtype == torch.float32 and got.is_contiguous()
    assert -1.0 <= got.min() and got.max() <= 1.0
    full = decode_all(texture, indices)

    def error(dt: int, dl: int) -> float | None:
        top, left, height, width = crop[0] + dt, crop[1] + dl, crop[2], crop[3]
        if top < 0 or left < 0 or top + height > 240 or left + width > 320:
            return None
        region = full[:, :, top : top + height, left : left + width]
        expected = F.interpolate(region, size=size, mode="bilinear", antialias=True, align_corners=False)
        return (got - expected).abs().mean().item()

    # decord scales the YUV planes before converting to RGB, so colours differ slightly from
    # converting first; geometry must agree: the stated crop beats the same crop 4 px away.
    exact = error(0, 0)
    assert exact < 0.06
    for shift in [(0, 4), (4, 0), (0, -4), (-4, 0)]:
        moved = error(*shift)
        if moved is not None:
            assert exact < 0.5 * moved, shift


def test_read_frames_without_resize_is_the_decoded_region(texture):
    got = read_frames(texture, [1, 2], (30, 16, 180, 288), (180, 288))
    assert torch.equal(got, decode_all(texture, [1, 2])[:, :, 30:210, 16:304])


def test_decode_size_rounding():
    # 1920x1080 source, its centred 4:3 region (1440 wide) to 768x576: scale 0.4 exactly.
    assert decode_size((1080, 1920), (0, 240, 1080, 1440), (576, 768)) == ((576, 1024), (0, 128))
    # A crop touching the far edge stays inside the decoded picture after rounding.
    (dec_h, dec_w), (top, left) = decode_size((101, 333), (0, 200, 101, 133), (64, 80))
    assert left + 80 <= dec_w and top + 64 <= dec_h
    with pytest.raises(ValueError, match="not inside"):
        decode_size((100, 100), (0, 50, 100, 60), (16, 16))


def test_read_frames_bad_files_raise_clip_error(bad, tmp_path):
    whole = (0, 0, 180, 320)
    # read_frames may meet a truncated file that was never probed: it must still refuse cleanly.
    with pytest.raises(ClipError, match="decoding failed, the file may be truncated"):
        read_frames(bad["cut_inside_frame"], list(range(9)), whole, (96, 160), source_size=(180, 320))
    with pytest.raises(ClipError, match="frame 11 requested, decord reads 8 frames"):
        read_frames(bad["cut_between_frames"], [0, 11], whole, (96, 160), source_size=(180, 320))
    # What is there decodes.
    assert (
        read_frames(bad["cut_between_frames"], [0, 7], whole, (96, 160), source_size=(180, 320)).shape[0] == 2
    )
    with pytest.raises(ClipError, match="decord cannot open"):
        read_frames(bad["not_a_video"], [0], (0, 0, 64, 64), (64, 64), source_size=(64, 64))
    with pytest.raises(ClipError, match="does not exist"):
        read_frames(tmp_path / "gone.mp4", [0], (0, 0, 64, 64), (64, 64), source_size=(64, 64))
    with pytest.raises(ClipError, match="not a video"):
        read_frames(bad["not_a_video"], [0], (0, 0, 64, 64), (64, 64))  # probes for the source size


def test_read_frames_probes_the_source_size_when_not_given(tmp_path):
    path = write_clip(tmp_path / "clip.mp4", 200, 120, 9)
    assert torch.equal(
        read_frames(path, [0, 8], (0, 40, 120, 120), (64, 64)),
        read_frames(path, [0, 8], (0, 40, 120, 120), (64, 64), source_size=(120, 200)),
    )


# -- the stock frame rule ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_frames,max_frames,skip_start,skip_end,expected",
    [
        (100, 49, 0, 0, list(range(0, 97, 2))),  # stride 100 // 49 = 2, 49 kept
        (50, 49, 0, 0, list(range(49))),  # 50 > 49: stride 1, first 49
        (30, 49, 0, 0, list(range(29))),  # all 30, trimmed to 4k+1
        (49, 49, 0, 0, list(range(49))),
        (40, 49, 5, 5, list(range(5, 34))),  # 30 frames left, trimmed to 29
        (3, 49, 0, 0, [0]),
        (10, 49, 4, 8, [4]),  # the skips leave nothing: the frame at the start
        (10, 49, 12, 0, [9]),  # the scripts would index frame 10 of 10 here
        (200, 50, 0, 0, list(range(0, 200, 4))[:49]),  # 50 frames at stride 4, trimmed to 49
    ],
)
def test_stock_frame_indices(num_frames, max_frames, skip_start, skip_end, expected):
    assert stock_frame_indices(num_frames, max_frames, skip_start, skip_end) == expected


def test_stock_frame_indices_are_always_4k_plus_1_and_inside_the_clip():
    for num_frames in range(1, 120):
        for skip in (0, 3):
            indices = stock_frame_indices(num_frames, 49, skip, skip)
            assert (len(indices) - 1) % 4 == 0 and len(indices) <= 49
            assert all(0 <= i < num_frames for i in indices)
    assert stock_frame_indices(0, 49, 0, 0) == []
