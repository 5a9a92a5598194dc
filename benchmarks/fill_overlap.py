"""Filling the latent cache: does decoding the next clip while this one encodes bring the fill down
to the slower of decoding and encoding?

What is measured (issue 24)
    The six H.264 clips of ``dataset_prep.py`` (1920x1080, 1080x1920, 1440x1080, 1080x1080,
    2560x1080, 1280x720; 72 frames) and the same listing repeated four times (24 clips), planned
    with ``aspect_bucket,rope_rescale`` for ``--size`` and ``--frames`` at ``--fps``, through the
    hooks and core functions training uses. Each side runs in a fresh process of its own, on the
    same samples; we record the wall time of its loop and the process's peak RSS (``ru_maxrss``;
    with CUDA also the peak allocated), after one untimed warm-up sample (decoder and kernels set
    up):

    decode       ``cogvx_load_pixels`` for every sample (decode straight to the bucket, crop,
                 float), dropped: the decode-only time.
    encode       every sample's pixels are decoded first, untimed, then ``cogvx_encode_sample``
                 (the script's recipe: VAE encode, posterior) is timed on them alone: the
                 encode-only time.
    sequential   ``encode_samples`` (the streaming encode of a training run's latent_cache fill
                 and of ``cogvx-ext cache fill``) with ``COGVX_EXT_DECODE_AHEAD=0``: decode, then
                 encode, one sample at a time (before issue 24).
    overlap      ``encode_samples`` as it runs now: the next sample decodes in a thread while this
                 one encodes (``cogvx_ext.data.decode_ahead``).

    Goals: overlap within 1.2x of the slower of decode and encode; its peak RSS flat from 6 to 24
    clips (within 10 %); its peak beside sequential's is reported (one decoded sample more, and
    the second thread's own buffers). Times are the minimum over
    ``--repeats`` processes (the median is in the JSON), the sides interleaved; peaks are the
    largest seen.

The VAE: ``--vae tiny`` is ``cogvx_ext.testing``'s (the released architecture: four blocks, 8x
in space, 4x in time, frame batches and causal caches; 8 channels), ``--vae released`` the
released configuration (random weights). On the CPU the tiny VAE encodes a 1024x576x49 sample in
about 39 s (one thread) against a 1.2 s decode, where any overlap hides the decode; the default
bucket (256x144, 17 frames) is where the two cost about the same on the CPU, the hardest case.

    nice -n 10 python benchmarks/fill_overlap.py [--counts 6,24] [--repeats 3] [--threads 1] [--json]
    # a GPU machine (the device check): the released VAE, bf16, at 1024x576x49
    python benchmarks/fill_overlap.py --device cuda --vae released --dtype bf16 \\
        --size 1024x576 --frames 49 --fps 30 --threads 8 --counts 6,24 --repeats 2

Exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from dataset_prep import BENCH_CLIPS, DEFAULT_DATA, ensure_clips, write_listing  # noqa: E402

from cogvx_ext.api import hookimpl  # noqa: E402

SIDES = ("decode", "encode", "sequential", "overlap")


# ---------------------------------------------------------------------------------------------
# Worker: one process per measurement; prints one JSON line.


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def build_vae(kind: str, device: str, dtype: str):
    import torch
    from diffusers import AutoencoderKLCogVideoX

    from cogvx_ext.model.tiny import _tiny_vae_config

    torch.manual_seed(0)
    config = _tiny_vae_config("5b") if kind == "tiny" else {}  # {}: diffusers' defaults, the released VAE
    vae = AutoencoderKLCogVideoX(**config).eval().requires_grad_(False)
    return vae.to(device, dtype={"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype])


class ServePixels:
    """Answers ``cogvx_load_pixels`` with pixels decoded beforehand (the encode-only side)."""

    def __init__(self):
        self.sample, self.pixels = None, None

    @hookimpl(tryfirst=True)
    def cogvx_load_pixels(self, sample):
        return self.pixels if sample is self.sample else None


def worker(opts) -> int:
    import torch

    from cogvx_ext.data.encoding import LatentPosterior, encode_samples
    from cogvx_ext.data.planning import plan_samples
    from cogvx_ext.script.data_formats import read_listing
    from cogvx_ext.script.offline import script_data_parser, start_offline_run
    from cogvx_ext.script.seams.dataset import ScriptEncoding

    torch.set_num_threads(opts.threads)
    width, height = (int(v) for v in opts.size.split("x"))
    argv = [
        "--instance_data_root", opts.root, "--caption_column", opts.prompts, "--video_column", opts.videos,
        "--height", str(height), "--width", str(width), "--max_num_frames", str(opts.frames),
        "--fps", str(opts.fps), "--model", "5b", "--plugins", "aspect_bucket,rope_rescale",
    ]  # fmt: skip
    run = start_offline_run(
        script_data_parser("fill_overlap", ""), argv, default_plugins="aspect_bucket,rope_rescale"
    )
    run.pm.register(ScriptEncoding(run), name="cogvx_ext.script_encoding")
    serve = ServePixels()
    run.pm.register(serve, name="serve_pixels")
    entries, skipped = read_listing(opts.root, opts.prompts, opts.videos)
    samples, more = plan_samples(run.hook, entries, run.context, progress=False)
    if skipped or more:
        raise SystemExit(f"clips were skipped: {[s.reason for s in skipped + more]}")
    vae = build_vae(opts.vae, opts.device, opts.dtype)
    if opts.tiling:
        vae.enable_tiling()
    cuda = opts.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def load(sample):
        return run.hook.cogvx_load_pixels(sample=sample, args=run.args, run=run.context)

    def encode(sample):
        encoded = run.hook.cogvx_encode_sample(
            sample=sample, vae=vae, kind="t2v", args=run.args, run=run.context
        )
        return LatentPosterior.from_distribution(encoded)

    with torch.no_grad():  # warm-up, untimed: decoder, allocator and kernels set up
        serve.sample, serve.pixels = samples[0], load(samples[0])
        encode(samples[0])
        serve.sample = serve.pixels = None
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    baseline = _rss_now_mb()
    frames = sum(s.target.num_frames for s in samples)
    seconds = 0.0
    if opts.worker in ("sequential", "overlap"):
        os.environ["COGVX_EXT_DECODE_AHEAD"] = "0" if opts.worker == "sequential" else "1"
        start = time.perf_counter()
        posteriors, failed = encode_samples(run.hook, samples, vae, "t2v", run.context, 0, 1, progress=False)
        sync()
        seconds = time.perf_counter() - start
        assert not failed and all(p is not None for p in posteriors)
    else:
        with torch.no_grad():
            for sample in samples:
                if opts.worker == "decode":
                    start = time.perf_counter()
                    pixels = load(sample)
                    seconds += time.perf_counter() - start
                    del pixels
                else:
                    serve.sample, serve.pixels = sample, load(sample)
                    sync()
                    start = time.perf_counter()
                    encode(sample)
                    sync()
                    seconds += time.perf_counter() - start
                    serve.sample = serve.pixels = None
    result = {
        "side": opts.worker,
        "samples": len(samples),
        "frames": frames,
        "shapes": sorted({f"{s.target.width}x{s.target.height}x{s.target.num_frames}" for s in samples}),
        "wall_s": seconds,
        "largest_sample_mb": max(
            3 * s.target.num_frames * s.target.height * s.target.width * 4 for s in samples
        )
        / 2**20,
        "peak_rss_mb": _peak_rss_mb(),
        "baseline_rss_mb": baseline,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }
    if cuda:
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


def measure(side: str, root: Path, listing: tuple[str, str], opts) -> dict:
    videos, prompts = listing
    command = [
        sys.executable, __file__, "--worker", side, "--root", str(root), "--videos", videos, "--prompts", prompts,
        "--size", opts.size, "--frames", str(opts.frames), "--fps", str(opts.fps), "--threads", str(opts.threads),
        "--vae", opts.vae, "--device", opts.device, "--dtype", opts.dtype,
    ]  # fmt: skip
    if opts.tiling:
        command.append("--tiling")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if result.returncode != 0 or not lines:
        sys.stderr.write(result.stdout[-2000:] + result.stderr[-4000:])
        raise SystemExit(f"the {side} worker failed (exit status {result.returncode})")
    return json.loads(lines[-1].split(" ", 1)[1])


# ---------------------------------------------------------------------------------------------
# Parent


def summarise(runs: list[dict]) -> dict:
    out = {
        # The least disturbed run: on a shared machine other jobs only ever add time.
        "wall_s": min(r["wall_s"] for r in runs),
        "wall_median_s": statistics.median(r["wall_s"] for r in runs),
        "wall_all_s": [round(r["wall_s"], 2) for r in runs],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "growth_mb": max(r["peak_rss_mb"] - r["baseline_rss_mb"] for r in runs),
        "samples": runs[0]["samples"],
        "largest_sample_mb": runs[0]["largest_sample_mb"],
        "shapes": runs[0]["shapes"],
    }
    if "peak_cuda_mb" in runs[0]:
        out["peak_cuda_mb"] = max(r["peak_cuda_mb"] for r in runs)
    return out


def _row(metric, ours, other, against, goal="", met=None) -> dict:
    # The rows of benchmarks/run_all.py's table.
    ratio = None if not other else ours / other
    return {"metric": metric, "ours": ours, "stock": other, "ratio": ratio, "goal": goal, "met": met,
            "against": against}  # fmt: skip


def build_report(results: dict[int, dict[str, dict]], opts) -> dict:
    rows = []
    counts = sorted(results)
    for n in counts:
        r = results[n]
        slower = max(("decode", "encode"), key=lambda side: r[side]["wall_s"])
        overlap, sequential, decode = r["overlap"]["wall_s"], r["sequential"]["wall_s"], r["decode"]["wall_s"]
        limit = r[slower]["wall_s"]
        rows += [
            _row(f"fill, {n} clips, overlap (s)", overlap, limit, f"{slower}-only", "<= 1.2x",
                 overlap <= 1.2 * limit),
            _row(f"fill, {n} clips, sequential (s)", sequential, limit, f"{slower}-only"),
            _row(f"fill, {n} clips, overlap (s)", overlap, sequential, "sequential"),
            _row(f"fill, {n} clips, decode time hidden (s)", sequential - overlap, decode, "decode-only"),
            _row(f"fill, {n} clips, peak RSS (MB; a sample's pixels {r['overlap']['largest_sample_mb']:.0f} MB)",
                 r["overlap"]["peak_rss_mb"], r["sequential"]["peak_rss_mb"], "sequential"),
        ]  # fmt: skip
    if len(counts) > 1:
        low, high = counts[0], counts[-1]
        peak_high, peak_low = results[high]["overlap"]["peak_rss_mb"], results[low]["overlap"]["peak_rss_mb"]
        rows.append(
            _row(f"fill, overlap peak RSS, {high} clips (MB)", peak_high, peak_low, f"{low} clips", "<= 1.10x",
                 peak_high <= 1.10 * peak_low)
        )  # fmt: skip
    return {
        "settings": {
            k: getattr(opts, k) for k in ("size", "frames", "fps", "threads", "vae", "device", "dtype")
        },
        "results": {str(n): results[n] for n in counts},
        "summary": rows,
    }


def print_report(report: dict) -> None:
    s = report["settings"]
    print(
        f"fill_overlap: bucket area of {s['size']}, {s['frames']} frames at --fps {s['fps']}, VAE {s['vae']} "
        f"({s['dtype']}, {s['device']}), torch threads {s['threads']}"
    )
    print(
        f"  {'clips':>5} {'side':<11}{'time s':>9}{'all runs':>24}{'peak RSS MB':>13}{'above start MB':>16}"
    )
    for n, sides in report["results"].items():
        for side in SIDES:
            r = sides[side]
            runs = ", ".join(f"{v:.2f}" for v in r["wall_all_s"])
            cuda = f"  CUDA peak {r['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in r else ""
            print(
                f"  {n:>5} {side:<11}{r['wall_s']:>9.2f}{runs:>24}{r['peak_rss_mb']:>13.0f}"
                f"{r['growth_mb']:>16.0f}{cuda}"
            )
    for row in report["summary"]:
        met = "" if row["met"] is None else ("  met" if row["met"] else "  NOT MET")
        goal = f"  (goal {row['goal']})" if row["goal"] else ""
        print(
            f"  {row['metric']}: {row['ours']:.2f} against {row['stock']:.2f} {row['against']}: "
            f"{row['ratio']:.2f}x{goal}{met}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="where the clips are written once")
    parser.add_argument("--counts", default="6,24", help="clip counts (the 6 clips repeated)")
    parser.add_argument("--repeats", type=int, default=3, help="processes per side and count")
    parser.add_argument("--size", default="256x144", help="the bucket area, WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the encoder's)")
    parser.add_argument("--vae", choices=("tiny", "released"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--tiling", action="store_true", help="VAE tiling on")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--videos", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        return worker(opts)

    root = Path(opts.data)
    names = ensure_clips(root, BENCH_CLIPS)
    counts = [int(c) for c in opts.counts.split(",") if c.strip()]
    listings = {n: write_listing(root, f"fill{n}", (names * (n // len(names) + 1))[:n]) for n in counts}
    runs: dict[int, dict[str, list[dict]]] = {n: {side: [] for side in SIDES} for n in counts}
    for i in range(opts.repeats):
        for n in counts:
            for side in SIDES:  # interleaved, so that machine noise hits every side alike
                print(f"round {i + 1}: {side}, {n} clips ...", file=sys.stderr, flush=True)
                runs[n][side].append(measure(side, root, listings[n], opts))
    report = build_report(
        {n: {side: summarise(r) for side, r in sides.items()} for n, sides in runs.items()}, opts
    )
    if opts.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if all(row["met"] is not False for row in report["summary"]) else 1


if __name__ == "__main__":
    sys.exit(main())
