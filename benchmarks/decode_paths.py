"""Decode paths on an HD clip: decord (the default) against PyAV (the fallback), and the probe.

What is measured (issue 11)
    One H.264 clip, 1920x1080, 24 fps, 72 frames (written once into ``--data``), decoded the way
    training decodes it for a 1024x576 bucket: ``cogvx_ext.data.video.read_frames`` with the probed
    ``VideoInfo``, once with ``decoder="decord"`` and once with ``decoder="pyav"``, for

    * 17 frames at ``--fps 8`` (every third frame: what aspect_bucket picks at 49 max frames), and
    * 49 consecutive frames (``--fps 24``).

    The probe is timed too: today's (demux every packet, decode the first frame, open decord to
    check it agrees) against the header-and-packets-only probe it replaced (``probe_packets_only``
    below reproduces it). All cases run in this process, interleaved (one run of each per round)
    after a warm-up round; the median and the minimum of ``--repeats`` rounds are printed.

    python benchmarks/decode_paths.py [--data DIR] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np


def write_hd_clip(path: Path, width: int = 1920, height: int = 1080, frames: int = 72, fps: int = 24) -> Path:
    import av

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "20", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            picture = np.stack(
                [
                    128 + 100 * np.sin(2 * np.pi * (xs + 8 * i) / 211) * np.cos(2 * np.pi * ys / 173),
                    128 + 100 * np.sin(2 * np.pi * (xs + ys) / 97 + i / 5),
                    128 + 100 * np.cos(2 * np.pi * (ys - xs) / 131 - i / 7),
                ],
                -1,
            )
            frame = av.VideoFrame.from_ndarray(picture.clip(0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def probe_packets_only(path: str) -> int:
    """The probe before issue 11: open, read the header, count the video packets (no decoding)."""
    import av

    with av.open(path) as container:
        stream = container.streams.best("video")
        _ = stream.codec_context.width, stream.codec_context.height, stream.average_rate
        return sum(1 for packet in container.demux(stream) if packet.size)


def timed(cases: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Median and minimum seconds of each case, the cases interleaved (one run of each per round),
    after one warm-up round: on a shared machine the minimum is the steadier figure."""
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def main() -> int:
    from cogvx_ext.data.video import probe, read_frames

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).parent / ".data"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    clip = data / "hd_1920x1080_24fps_72.mp4"
    if not clip.exists():
        write_hd_clip(clip)
    path = str(clip)
    info = probe(path)
    crop, size = (0, 0, 1080, 1920), (576, 1024)
    frame_sets = {"17 frames at --fps 8": list(range(0, 49, 3)), "49 frames at --fps 24": list(range(49))}
    cases = {
        "probe (packets + first frame + decord check)": lambda: probe(path),
        "probe before issue 11 (packets only)": lambda: probe_packets_only(path),
    }
    for name, indices in frame_sets.items():
        for decoder in ("decord", "pyav"):
            one = dataclasses.replace(info, decoder=decoder)
            cases[f"read_frames {decoder}, {name} -> 1024x576"] = lambda one=one, indices=indices: (
                read_frames(path, indices, crop, size, info=one)
            )
    results = timed(cases, args.repeats)
    if args.json:
        print(
            json.dumps(
                {k: {"median_s": round(m, 4), "min_s": round(n, 4)} for k, (m, n) in results.items()},
                indent=2,
            )
        )
    else:
        width = max(map(len, results))
        print(f"{'':{width}}  {'median':>9}  {'min':>9}")
        for name, (median, least) in results.items():
            print(f"{name.ljust(width)}  {median * 1000:6.1f} ms  {least * 1000:6.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
