"""Per-step training time with cogvx-ext's plugins against the stock script, at one fixed size.

What is measured (issue 7)
    A tiny random CogVideoX 5b (``cogvx_ext.testing.build_tiny_model``) is trained with LoRA on
    8 clips that all have one aspect and size (512x288, 17 frames by default), so the plugins
    put every clip in the single bucket the stock script uses and both sides compute the same
    shapes. The same command line runs with no plugin (stock) and with ``--plugins
    aspect_bucket,rope_rescale`` (ours), in alternating order (stock, ours, ours, stock, ...)
    so that machine noise hits both alike. The first ``--warmup`` steps of each run are dropped;
    the next ``--steps`` are measured. We report, per side, the median over runs of each run's
    median step time, and the overhead ``ours / stock - 1``. Goal: at most 3 %.

How a step is timed, the same way on both sides
    A timing plugin of cogvx-ext would activate cogvx-ext on the stock side too (the Accelerator
    and main seams), so stock would no longer be stock; tqdm's printed rate is too coarse. So
    the benchmark puts a ``sitecustomize.py`` on ``PYTHONPATH`` for both runs: at interpreter
    start it wraps ``accelerate.Accelerator.log`` (the class attribute) to record
    ``time.perf_counter()`` before every call, and writes the times at exit. The scripts call
    ``accelerator.log`` once per loop iteration; a step's time is the difference between two
    consecutive calls, so it covers loading the batch, RoPE, forward, backward, optimizer, and
    on our side every hook (cogvx-ext's ``cogvx_step_end`` wraps the instance's ``log`` and
    calls the class's, so it falls inside the interval). The wrapper costs one clock read and
    one list append per step on both sides. The script file and its command line are untouched.

    python benchmarks/step_overhead.py [--trainer SCRIPT] [--python PYTHON] [--json]

The trainer is ``--trainer``, else ``$COGVX_EXT_TRAINER``, else the repository's tiny T2V
trainer; the real diffusers script needs a python with torchvision (``--python``). Exits 1
when the overhead exceeds ``--goal_pct``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMES_ENV = "STEP_OVERHEAD_TIMES"

SITECUSTOMIZE = f"""
import atexit
import json
import os
import time

_path = os.environ.get("{TIMES_ENV}")
if _path:
    import accelerate

    _times = []
    _real_log = accelerate.Accelerator.log

    def _timed_log(self, *args, **kwargs):
        _times.append(time.perf_counter())
        return _real_log(self, *args, **kwargs)

    accelerate.Accelerator.log = _timed_log

    def _write():
        import sys

        # cogvx_ext.script.seams is imported only when a run with plugins starts: proof of which side this was.
        with open(_path, "w", encoding="utf-8") as f:
            json.dump({{"times": _times, "cogvx_ext_active": "cogvx_ext.script.seams" in sys.modules}}, f)

    atexit.register(_write)
"""


def prepare(work: Path, opts) -> tuple[Path, Path, Path]:
    from cogvx_ext.testing import build_tiny_model, write_dataset

    model = build_tiny_model(work, "5b")
    data = write_dataset(work / "data", [(opts.width, opts.height, opts.frames, 8)] * opts.clips)
    site = work / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE).lstrip(), encoding="utf-8")
    return model, data, site


def check_single_shape(data: Path, opts) -> str:
    """Both sides plan the same single target (the core's default is the stock rule)."""
    from cogvx_ext.data.planning import plan_samples
    from cogvx_ext.script.data_formats import read_listing
    from cogvx_ext.script.offline import script_data_parser, start_offline_run

    shapes = {}
    for side, plugins in (("stock", ""), ("ours", opts.plugins)):
        argv = [
            "--instance_data_root", str(data), "--caption_column", "prompts.txt", "--video_column", "videos.txt",
            "--height", str(opts.height), "--width", str(opts.width), "--max_num_frames", str(opts.frames),
            "--model", "5b",
        ] + (["--plugins", plugins] if plugins else [])  # fmt: skip
        run = start_offline_run(script_data_parser("step_overhead", ""), argv, default_plugins=plugins)
        entries, _ = read_listing(data, "prompts.txt", "videos.txt")
        samples, skipped = plan_samples(run.hook, entries, run.context, progress=False)
        shapes[side] = {(s.target.num_frames, s.target.height, s.target.width) for s in samples}
        if skipped:
            raise SystemExit(f"{side}: clips skipped: {skipped}")
    if len(shapes["stock"]) != 1 or shapes["stock"] != shapes["ours"]:
        raise SystemExit(f"the sides would train different shapes: {shapes}")
    frames, height, width = next(iter(shapes["ours"]))
    return f"{frames}x{height}x{width}"


def train(opts, work: Path, model: Path, data: Path, site: Path, side: str, index: int) -> list[float]:
    times_file = work / f"times_{side}_{index}.json"
    command = [
        opts.python, opts.trainer,
        "--pretrained_model_name_or_path", str(model),
        "--instance_data_root", str(data), "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--height", str(opts.height), "--width", str(opts.width), "--max_num_frames", str(opts.frames),
        "--train_batch_size", "1", "--max_train_steps", str(opts.warmup + opts.steps + 1),
        "--rank", "4", "--lora_alpha", "4", "--seed", "0", "--lr_warmup_steps", "0",
        "--output_dir", str(work / f"out_{side}_{index}"),
    ]  # fmt: skip
    if side == "ours":
        command += ["--plugins", opts.plugins]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    env.update(
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        **{TIMES_ENV: str(times_file)},
    )
    if opts.threads:
        env.update(OMP_NUM_THREADS=str(opts.threads), MKL_NUM_THREADS=str(opts.threads))
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0 or not times_file.exists():
        sys.stderr.write(result.stdout[-2000:] + result.stderr[-5000:])
        raise SystemExit(f"the {side} run failed (exit status {result.returncode})")
    recorded = json.loads(times_file.read_text())
    if recorded["cogvx_ext_active"] != (side == "ours"):
        raise SystemExit(f"the {side} run {'did not activate' if side == 'ours' else 'activated'} cogvx-ext")
    stamps = recorded["times"]
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    if len(steps) < opts.warmup + opts.steps:
        raise SystemExit(
            f"the {side} run logged {len(stamps)} steps, {opts.warmup + opts.steps + 1} expected"
        )
    return steps[opts.warmup : opts.warmup + opts.steps]


def main() -> int:
    from cogvx_ext.trainers import minimal_trainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trainer",
        default=os.environ.get("COGVX_EXT_TRAINER") or str(minimal_trainer("t2v")),
    )
    parser.add_argument("--python", default=sys.executable, help="python that runs the trainer")
    # Not --plugins: that flag on this command line would wake cogvx-ext's start-up hook here.
    parser.add_argument(
        "--with_plugins",
        dest="plugins",
        default="aspect_bucket,rope_rescale",
        help="plugins of our side (default: aspect_bucket,rope_rescale)",
    )
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--frames", type=int, default=17, help="frames per clip and --max_num_frames")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps dropped at the start of each run")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of runs (stock and ours), alternating")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch/OpenMP threads of the trainer (0: torch's default). One by default: on a "
        "small shared machine two spinning OpenMP threads make step times hostage to any "
        "other process",
    )
    parser.add_argument("--goal_pct", type=float, default=3.0)
    parser.add_argument("--json", action="store_true", help="print JSON")
    opts = parser.parse_args()

    per_run: dict[str, list[float]] = {"stock": [], "ours": []}
    pooled: dict[str, list[float]] = {"stock": [], "ours": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cogvx-steps-") as tmp:
        work = Path(tmp)
        model, data, site = prepare(work, opts)
        shape = check_single_shape(data, opts)
        for r in range(opts.rounds):
            order = ("stock", "ours") if r % 2 == 0 else ("ours", "stock")
            for side in order:
                print(f"round {r + 1}/{opts.rounds}: {side} ...", file=sys.stderr, flush=True)
                steps = train(opts, work, model, data, site, side, r)
                per_run[side].append(statistics.median(steps))
                pooled[side] += steps

    stock = statistics.median(per_run["stock"])
    ours = statistics.median(per_run["ours"])
    overhead = (ours / stock - 1) * 100
    met = overhead <= opts.goal_pct
    result = {
        "benchmark": "step_overhead",
        "trainer": opts.trainer,
        "python": opts.python,
        "plugins": opts.plugins,
        "shape": shape,
        "cpus": os.cpu_count(),
        "threads": opts.threads or "default",
        "steps_per_run": opts.steps,
        "rounds": opts.rounds,
        "median_step_ms": {"stock": stock * 1000, "ours": ours * 1000},
        "run_medians_ms": {k: [round(v * 1000, 2) for v in vs] for k, vs in per_run.items()},
        "pooled_median_ms": {k: statistics.median(vs) * 1000 for k, vs in pooled.items()},
        "overhead_pct": overhead,
        "wall_s": time.perf_counter() - started,
        "summary": [
            {
                "metric": f"median step time at {shape} (ms)",
                "ours": ours * 1000,
                "stock": stock * 1000,
                "ratio": ours / stock,
                "goal": f"<= {opts.goal_pct:g}% overhead",
                "met": met,
                "against": "stock",
            }
        ],
    }
    if opts.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{Path(opts.trainer).name}, tiny 5b, {opts.clips} clips at {shape} (frames x height x width), "
            f"batch 1, {opts.rounds} runs per side of {opts.steps} steps after {opts.warmup} warm-up"
        )
        print(f"{'side':6} {'median ms':>10} {'pooled ms':>10}  run medians (ms)")
        for side in ("stock", "ours"):
            print(
                f"{side:6} {result['median_step_ms'][side]:10.2f} {result['pooled_median_ms'][side]:10.2f}  "
                f"{', '.join(f'{v:.1f}' for v in result['run_medians_ms'][side])}"
            )
        print(
            f"overhead of --plugins {opts.plugins}: {overhead:+.1f}% "
            f"(goal <= {opts.goal_pct:g}%: {'met' if met else 'NOT met'})"
        )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
