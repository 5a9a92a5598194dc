"""Dataset preparation for 1024x576x49: cogvx-ext's data path against the script's VideoDataset.

What is measured (issue 4)
    Six H.264 clips of 72 frames (1920x1080, 1080x1920, 1440x1080, 1080x1080, 2560x1080,
    1280x720; 24 and 30 fps) are prepared for training at 1024x576 with 49 frames, and the same
    listing repeated four times (24 clips). Each side runs in a fresh process of its own; we
    record the wall time of the preparation and the process's peak RSS (``ru_maxrss``), and the
    RSS just before it starts (the baseline: interpreter, torch, the imported training script).

    stock        the training script's own ``VideoDataset`` class, constructed as ``main`` does
                 (``height=576, width=1024, max_num_frames=49, fps=8``). The script is imported
                 under another name, so ``main`` never runs. Its constructor decodes every clip at
                 full size, converts to float, resizes and crops, and keeps all of them.
    ours         what cogvx-ext does inside that constructor when a data plugin is chosen, with
                 ``aspect_bucket``: read the listing, probe every header and plan the samples
                 (``cogvx_ext.script.data_formats.read_listing`` / ``plan_samples``), then decode one sample at
                 a time straight to its bucket with the core's ``cogvx_load_pixels`` (decord
                 resizes while decoding) and drop it. Run with ``--fps 30`` so that every clip
                 gives the same 49 frames as stock (at ``--fps 8`` the plugin would sample a 24 fps
                 clip every third frame and train 17 frames: less work, an unfair comparison).
    decode-only  decord decoding the same 49 frames of each clip at the native size, no resize,
                 no float conversion, dropped at once: the floor for any data path.

    The VAE encode is left out on both sides: the stock script encodes after its dataset is
    built (the time and memory of its kept float clips are what we measure), ours encodes each
    clip right after decoding it and keeps only the latents. All three sides import the training
    script first, so their baselines match and absolute peaks compare; the table also gives the
    growth above the baseline (what the data path itself holds).

    Goals: ours >= 4x faster and >= 8x lower peak RSS than stock (checked on the absolute peaks
    and on the peaks above the baseline); our peak flat from 6 to 24 clips (within 10 %); our
    time within 1.3x of decode-only. Times are medians over ``--repeats`` processes, with the
    sides interleaved; peaks are the largest seen.

    Crop table: a mixed-aspect set (the six clips plus 3:4, 3:2, 2:3, 5:4, 4:5, 2:1, 1:2,
    1.85:1, 2.39:1 and 9:16 ones) is planned twice from its headers: with no plugin (the core's
    default targets, the stock rule: one 1024x576 cover crop) and with ``aspect_bucket``. The
    cropped fraction of a clip is ``1 - kept area / source area`` of its target's crop box.

Clips are written once (about 2 minutes) into ``benchmarks/.data`` (or ``--data``) and reused.

    python benchmarks/dataset_prep.py [--trainer SCRIPT] [--stock_python PYTHON] [--json]

``--trainer`` defaults to ``$COGVX_EXT_TRAINER``, else the repository's tiny T2V trainer (its
VideoDataset does what the real one does, without torchvision); the stock side runs under
``--stock_python`` (default ``/work/venv-real/bin/python`` when it exists, which has
torchvision for the real script). Exits 1 when a goal is missed.
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

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "benchmarks" / ".data"
DEFAULT_STOCK_PYTHON = "/work/venv-real/bin/python"
HEIGHT, WIDTH, FRAMES = 576, 1024, 49

# (width, height, frames, fps): what the issue names, 72 frames each.
BENCH_CLIPS = [
    (1920, 1080, 72, 24),
    (1080, 1920, 72, 30),
    (1440, 1080, 72, 24),
    (1080, 1080, 72, 30),
    (2560, 1080, 72, 24),
    (1280, 720, 72, 30),
]
# More aspects for the crop table only: short clips, 720 px on the short side (cheap to write).
CROP_EXTRA = [
    (720, 960, 17, 30),  # 3:4
    (1080, 720, 17, 30),  # 3:2
    (720, 1080, 17, 30),  # 2:3
    (900, 720, 17, 30),  # 5:4
    (720, 900, 17, 30),  # 4:5
    (1440, 720, 17, 30),  # 2:1
    (720, 1440, 17, 30),  # 1:2
    (1332, 720, 17, 30),  # 1.85:1
    (1720, 720, 17, 30),  # 2.39:1
    (720, 1280, 17, 30),  # 9:16
]


# ---------------------------------------------------------------------------------------------
# Data


def clip_name(width: int, height: int, frames: int, fps: int) -> str:
    return f"videos/clip_{width}x{height}x{frames}_{fps}fps.mp4"


def ensure_clips(root: Path, clips: list[tuple[int, int, int, int]]) -> list[str]:
    """Write the clips that are not there yet; return their names relative to ``root``."""
    from cogvx_ext.testing import write_clip

    names = []
    for seed, (width, height, frames, fps) in enumerate(clips):
        name = clip_name(width, height, frames, fps)
        path = root / name
        if not path.exists():
            print(f"writing {name} (once)", file=sys.stderr, flush=True)
            # Written under another name first, so an interrupted write is never taken for a clip.
            partial = path.with_name(path.stem + ".partial.mp4")
            write_clip(partial, width, height, frames, fps=fps, seed=seed)
            os.replace(partial, path)
        names.append(name)
    return names


def write_listing(root: Path, tag: str, names: list[str]) -> tuple[str, str]:
    videos, prompts = f"videos_{tag}.txt", f"prompts_{tag}.txt"
    (root / videos).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    (root / prompts).write_text(
        "".join(f"a moving square, clip {i}\n" for i in range(len(names))), encoding="utf-8"
    )
    return videos, prompts


# ---------------------------------------------------------------------------------------------
# Workers: one process per measurement; each prints one JSON line.


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _load_trainer(path: str):
    import importlib.util

    # Another module name than __main__: the script's `if __name__ == "__main__"` does not run.
    spec = importlib.util.spec_from_file_location("cogvx_bench_trainer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _stock(module, root: str, videos: str, prompts: str) -> tuple[object, int, int]:
    dataset = module.VideoDataset(
        instance_data_root=root,
        caption_column=prompts,
        video_column=videos,
        height=HEIGHT,
        width=WIDTH,
        max_num_frames=FRAMES,
        fps=8,
    )
    frames = sum(int(v.shape[0]) for v in dataset.instance_videos)
    return dataset, len(dataset.instance_videos), frames  # the dataset stays alive, as in main()


def _ours_setup(root: str, videos: str, prompts: str, plugins: str):
    from cogvx_ext.script.offline import script_data_parser, start_offline_run

    argv = [
        "--instance_data_root", root, "--caption_column", prompts, "--video_column", videos,
        "--height", str(HEIGHT), "--width", str(WIDTH), "--max_num_frames", str(FRAMES),
        "--fps", "30", "--model", "5b", "--plugins", plugins,
    ]  # fmt: skip
    return start_offline_run(script_data_parser("dataset_prep", ""), argv, default_plugins=plugins)


def _ours(run) -> tuple[None, int, int]:
    from cogvx_ext.data.planning import plan_samples
    from cogvx_ext.script.data_formats import read_listing

    args = run.args
    entries, skipped = read_listing(args.instance_data_root, args.caption_column, args.video_column)
    samples, more = plan_samples(run.hook, entries, run.context, progress=False)
    if skipped or more:
        raise SystemExit(f"clips were skipped: {[s.reason for s in skipped + more]}")
    frames = 0
    for sample in samples:
        pixels = run.hook.cogvx_load_pixels(sample=sample, args=args, run=run.context)
        frames += int(pixels.shape[0])
        del pixels  # the VAE would consume it here
    return None, len(samples), frames


def _decode_only(root: str, videos: str) -> tuple[None, int, int]:
    import decord

    from cogvx_ext.data.video import stock_frame_indices

    paths = [Path(root, line.strip()) for line in Path(root, videos).read_text().splitlines() if line.strip()]
    frames = 0
    for path in paths:
        reader = decord.VideoReader(str(path))  # native size: no resize
        indices = stock_frame_indices(len(reader), FRAMES, 0, 0)  # = ours at --fps 30: frames 0..48
        batch = reader.get_batch(indices)  # decord NDArray, uint8; decoded here
        frames += int(batch.shape[0])
        del batch, reader
    return None, len(paths), frames


def worker(opts) -> int:
    import torch

    module = _load_trainer(opts.trainer) if opts.trainer else None
    run = (
        _ours_setup(opts.root, opts.videos, opts.prompts, opts.ours_plugins)
        if opts.worker == "ours"
        else None
    )
    baseline = _rss_now_mb()
    start = time.perf_counter()
    if opts.worker == "stock":
        kept = _stock(module, opts.root, opts.videos, opts.prompts)
    elif opts.worker == "ours":
        kept = _ours(run)
    else:
        kept = _decode_only(opts.root, opts.videos)
    wall = time.perf_counter() - start
    _, clips, frames = kept
    result = {
        "variant": opts.worker,
        "clips": clips,
        "frames": frames,
        "wall_s": wall,
        "peak_rss_mb": _peak_rss_mb(),
        "baseline_rss_mb": baseline,
        "torch_threads": torch.get_num_threads(),
        "python": sys.executable,
        "torch": torch.__version__,
    }
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


def measure(python: str, variant: str, root: Path, listing: tuple[str, str], opts) -> dict:
    videos, prompts = listing
    command = [
        python, __file__, "--worker", variant, "--root", str(root), "--videos", videos,
        "--prompts", prompts, "--ours_plugins", opts.ours_plugins,
    ]  # fmt: skip
    if opts.trainer:
        command += ["--trainer", opts.trainer]
    # cogvx-ext's start-up hook stays off (no --plugins for a training script); nothing from outside leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    process = time.perf_counter() - start
    lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if result.returncode != 0 or not lines:
        sys.stderr.write(result.stdout[-2000:] + result.stderr[-4000:])
        raise SystemExit(f"the {variant} worker failed (exit status {result.returncode})")
    out = json.loads(lines[-1].split(" ", 1)[1])
    out["process_s"] = process
    return out


# ---------------------------------------------------------------------------------------------
# Crop table: computed from the plans, headers only.


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def crop_table(root: Path, listing: tuple[str, str]) -> dict:
    from cogvx_ext.data.planning import plan_samples
    from cogvx_ext.script.data_formats import read_listing
    from cogvx_ext.script.offline import script_data_parser, start_offline_run

    videos, prompts = listing
    base = [
        "--instance_data_root", str(root), "--caption_column", prompts, "--video_column", videos,
        "--height", str(HEIGHT), "--width", str(WIDTH), "--max_num_frames", str(FRAMES),
        "--fps", "30", "--model", "5b",
    ]  # fmt: skip
    sides = {}
    for side, plugins in (("stock", ""), ("ours", "aspect_bucket,rope_rescale")):
        # No plugin: the core's default targets, which are the stock rule (one cover crop).
        argv = base + (["--plugins", plugins] if plugins else [])
        run = start_offline_run(script_data_parser("dataset_prep", ""), argv, default_plugins=plugins)
        entries, skipped = read_listing(root, prompts, videos)
        samples, more = plan_samples(run.hook, entries, run.context, progress=False)
        rows = {}
        for sample in samples:
            info, target = sample.clip.info, sample.target
            _, _, crop_h, crop_w = target.crop
            rows[sample.clip.path] = {
                "source": f"{info.width}x{info.height}",
                "target": f"{target.width}x{target.height}",
                "crop": 1.0 - (crop_h * crop_w) / (info.height * info.width),
            }
        crops = [r["crop"] for r in rows.values()]
        sides[side] = {
            "clips": rows,
            "skipped": [s.path for s in skipped + more],
            "mean": statistics.fmean(crops),
            "p95": _percentile(crops, 0.95),
            "max": max(crops),
        }
    return sides


# ---------------------------------------------------------------------------------------------
# Parent


def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def stock_estimate_mb(clips: int) -> float:
    """What the stock dataset will hold: every clip as float32 at the target, plus one clip's transient."""
    kept = clips * FRAMES * 3 * HEIGHT * WIDTH * 4 / 2**20
    transient = 72 * 1080 * 2560 * 3 / 2**20 + 2 * FRAMES * 3 * 1080 * 2560 * 4 / 2**20  # widest clip
    return kept + transient + 1500  # + interpreter, torch and the script's imports


def summarise(runs: list[dict]) -> dict:
    # Median time over repeats; the largest peak (memory does not get luckier with repeats).
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "wall_min_s": min(r["wall_s"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "baseline_rss_mb": statistics.median(r["baseline_rss_mb"] for r in runs),
        "growth_mb": max(r["peak_rss_mb"] - r["baseline_rss_mb"] for r in runs),
        "frames": runs[0]["frames"],
        "clips": runs[0]["clips"],
        "runs": len(runs),
        "wall_all_s": [round(r["wall_s"], 3) for r in runs],
    }


def main() -> int:
    from cogvx_ext.trainers import minimal_trainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trainer",
        default=os.environ.get("COGVX_EXT_TRAINER") or str(minimal_trainer("t2v")),
        help="training script whose VideoDataset is the stock side",
    )
    parser.add_argument(
        "--stock_python",
        default=DEFAULT_STOCK_PYTHON if os.path.exists(DEFAULT_STOCK_PYTHON) else sys.executable,
        help="python for all three sides (needs torchvision for the real script)",
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="where the clips are written once")
    parser.add_argument("--counts", default="6,24", help="clip counts to measure (the 6 clips repeated)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="processes per count for ours and decode-only (median time, largest peak)",
    )
    parser.add_argument(
        "--stock_repeats", type=int, default=1, help="the same for stock (slow, far from the goals)"
    )
    # Not named --plugins: that flag on a command line wakes cogvx-ext's start-up hook.
    parser.add_argument("--ours_plugins", default="aspect_bucket,rope_rescale", help="plugins for our side")
    parser.add_argument(
        "--skip_stock_above",
        type=int,
        default=None,
        help="measure stock only up to this many clips (default: as many as memory allows)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    # Worker mode (internal).
    parser.add_argument("--worker", choices=("stock", "ours", "decode"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--videos", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        return worker(opts)

    root = Path(opts.data)
    names = ensure_clips(root, BENCH_CLIPS)
    crop_names = names + ensure_clips(root, CROP_EXTRA)
    counts = [int(c) for c in opts.counts.split(",") if c.strip()]
    listings = {n: write_listing(root, str(n), (names * (n // len(names) + 1))[:n]) for n in counts}

    results: dict[str, dict[int, dict]] = {"stock": {}, "ours": {}, "decode": {}}
    notes = []
    for n in counts:
        runs: dict[str, list[dict]] = {"stock": [], "ours": [], "decode": []}
        stock_ok = opts.skip_stock_above is None or n <= opts.skip_stock_above
        if stock_ok and stock_estimate_mb(n) > 0.9 * _available_mb():
            stock_ok = False
            notes.append(
                f"stock at {n} clips skipped: needs about {stock_estimate_mb(n) / 1024:.1f} GB, "
                f"{_available_mb() / 1024:.1f} GB available"
            )
        for i in range(max(opts.repeats, opts.stock_repeats)):
            # Interleaved, so that machine noise hits every side alike.
            for variant in ("decode", "ours", "stock"):
                if i >= (opts.stock_repeats if variant == "stock" else opts.repeats):
                    continue
                if variant == "stock" and not stock_ok:
                    continue
                print(f"{variant}, {n} clips ...", file=sys.stderr, flush=True)
                runs[variant].append(measure(opts.stock_python, variant, root, listings[n], opts))
        for variant, done in runs.items():
            if done:
                results[variant][n] = summarise(done)
        if runs["ours"] and runs["decode"] and runs["ours"][0]["frames"] != runs["decode"][0]["frames"]:
            notes.append(
                f"{n} clips: ours decoded {runs['ours'][0]['frames']} frames, decode-only "
                f"{runs['decode'][0]['frames']}"
            )

    crops = crop_table(root, write_listing(root, "crop", crop_names))
    report = build_report(results, crops, counts, opts, notes)
    if opts.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if all(row["met"] is not False for row in report["summary"]) else 1


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def build_report(results, crops, counts, opts, notes) -> dict:
    stock, ours, decode = results["stock"], results["ours"], results["decode"]
    summary = []
    for n in counts:
        s, o, d = stock.get(n), ours.get(n), decode.get(n)
        speed = _ratio(s and s["wall_s"], o and o["wall_s"])
        memory = _ratio(s and s["peak_rss_mb"], o and o["peak_rss_mb"])
        growth = _ratio(s and s["growth_mb"], o and o["growth_mb"])
        floor = _ratio(o and o["wall_s"], d and d["wall_s"])
        summary += [
            _row(
                f"prep time, {n} clips (s)",
                o and o["wall_s"],
                s and s["wall_s"],
                speed,
                ">= 4x faster",
                None if speed is None else speed >= 4,
            ),
            _row(
                f"peak RSS, {n} clips (MB)",
                o and o["peak_rss_mb"],
                s and s["peak_rss_mb"],
                memory,
                ">= 8x less",
                None if memory is None else memory >= 8,
            ),
            # The same peaks less the common baseline (interpreter, torch, the script's imports):
            # what each data path itself holds.
            _row(
                f"peak RSS above baseline, {n} clips (MB)",
                o and o["growth_mb"],
                s and s["growth_mb"],
                growth,
                ">= 8x less",
                None if growth is None else growth >= 8,
            ),
            _row(
                f"prep time vs decode-only, {n} clips (s)",
                o and o["wall_s"],
                d and d["wall_s"],
                floor,
                "<= 1.3x decode-only",
                None if floor is None else floor <= 1.3,
                stock_label="decode-only",
            ),
        ]
    if len(counts) >= 2 and counts[0] in ours and counts[-1] in ours:
        first, last = ours[counts[0]], ours[counts[-1]]
        flat = last["peak_rss_mb"] / first["peak_rss_mb"]
        summary.append(
            _row(
                f"our peak RSS, {counts[-1]} vs {counts[0]} clips (MB)",
                last["peak_rss_mb"],
                first["peak_rss_mb"],
                flat,
                "flat (<= 1.1x)",
                flat <= 1.1,
                stock_label=f"ours at {counts[0]}",
            )
        )
    summary.append(
        _row(
            "mean cropped fraction, mixed aspects",
            crops["ours"]["mean"],
            crops["stock"]["mean"],
            _ratio(crops["ours"]["mean"], crops["stock"]["mean"]),
            "(info)",
            None,
        )
    )
    return {
        "benchmark": "dataset_prep",
        "target": f"{WIDTH}x{HEIGHT}x{FRAMES}",
        "trainer": opts.trainer,
        "python": opts.stock_python,
        "cpus": os.cpu_count(),
        "plugins": opts.ours_plugins,
        "results": {k: {str(n): v for n, v in r.items()} for k, r in results.items()},
        "crop": crops,
        "notes": notes,
        "summary": summary,
    }


def _row(metric, ours, stock, ratio, goal, met, stock_label="stock"):
    return {
        "metric": metric,
        "ours": ours,
        "stock": stock,
        "ratio": ratio,
        "goal": goal,
        "met": met,
        "against": stock_label,
    }


def _fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def print_report(report: dict) -> None:
    print(
        f"dataset preparation for {report['target']}: {Path(report['trainer']).name}'s VideoDataset (stock) "
        f"vs cogvx-ext with {report['plugins']} (ours), under {report['python']}, {report['cpus']} CPUs"
    )
    print(
        f"{'':10} {'clips':>5} {'frames':>6} {'runs':>4} {'median s':>8} {'min s':>7} {'peak RSS MB':>12} "
        f"{'baseline MB':>12} {'growth MB':>10}"
    )
    for variant in ("stock", "ours", "decode"):
        for n, r in report["results"][variant].items():
            print(
                f"{variant:10} {n:>5} {r['frames']:>6} {r['runs']:>4} {r['wall_s']:8.2f} {r['wall_min_s']:7.2f} "
                f"{r['peak_rss_mb']:12.0f} {r['baseline_rss_mb']:12.0f} {r['growth_mb']:10.0f}"
            )
    print()
    print(f"{'metric':46} {'ours':>9} {'other':>9} {'ratio':>7}  goal")
    for row in report["summary"]:
        met = "" if row["met"] is None else ("met" if row["met"] else "NOT met")
        digits = 3 if "fraction" in row["metric"] else 2 if "time" in row["metric"] else 0
        print(
            f"{row['metric']:46} {_fmt(row['ours'], digits):>9} {_fmt(row['stock'], digits):>9} "
            f"{_fmt(row['ratio']):>7}  {row['goal']} {met}  (other = {row['against']})"
        )
    print()
    crops = report["crop"]
    print(
        f"cropped fraction, mixed-aspect set ({len(crops['stock']['clips'])} clips): "
        f"stock {WIDTH}x{HEIGHT} cover crop vs aspect buckets"
    )
    print(f"{'source':>10} {'stock':>7} {'bucket':>10} {'ours':>7}")
    for path, row in crops["stock"]["clips"].items():
        mine = crops["ours"]["clips"].get(path)
        print(
            f"{row['source']:>10} {row['crop']:7.1%} {mine['target'] if mine else 'skipped':>10} "
            f"{(mine['crop'] if mine else float('nan')):7.1%}"
        )
    for side in ("stock", "ours"):
        c = crops[side]
        print(
            f"{side:6} mean {c['mean']:.1%}  p95 {c['p95']:.1%}  max {c['max']:.1%}  skipped {len(c['skipped'])}"
        )
    for note in report["notes"]:
        print("note:", note)


if __name__ == "__main__":
    sys.exit(main())
