"""Run every benchmark and print one summary table: metric, ours, the other side, ratio, goal, met.

Each benchmark runs as its own subprocess with ``--json``, exactly as one would run it by hand;
this script only collects their JSON and puts the rows side by side:

* ``startup.py``       interpreter start-up with cogvx-ext's ``.pth`` hook installed (ms)
* ``dataset_prep.py``  preparing 6 and 24 clips for 1024x576x49: time, peak RSS, crop
* ``step_overhead.py`` per-step time with ``aspect_bucket,rope_rescale`` against stock
* ``launch.py``        launch-to-first-step with the latent cache, cold against warm (if present)
* ``gpu_memory.py``    real-size 5b memory and step time (only where CUDA is available)
* ``fill_overlap.py``  filling the latent cache against decode-only and encode-only times; with
                       CUDA the GPU check (the released VAE in bf16 at 1024x576x49)

    python benchmarks/run_all.py [--skip dataset_prep,step_overhead] [--quick] [--json] [--out FILE]

``--trainer`` and ``--stock_python`` are passed on to the benchmarks that take them. Exits 1
when a goal is missed or a benchmark fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = ("startup", "dataset_prep", "step_overhead", "launch", "gpu_memory", "fill_overlap")
# fill_overlap on a GPU machine: the released VAE on the device, the decoding on the CPU cores.
FILL_OVERLAP_GPU = ["--device", "cuda", "--vae", "released", "--dtype", "bf16", "--size", "1024x576",
                    "--frames", "49", "--fps", "30", "--threads", "8"]  # fmt: skip


def command_for(name: str, opts) -> list[str] | None:
    script = HERE / f"{name}.py"
    if not script.exists():
        return None
    command = [sys.executable, str(script), "--json"]
    if name == "startup" and opts.quick:
        command += ["--runs", "50"]
    if name == "dataset_prep":
        if opts.trainer:
            command += ["--trainer", opts.trainer]
        if opts.stock_python:
            command += ["--stock_python", opts.stock_python]
        if opts.quick:
            command += ["--counts", "6", "--repeats", "1"]
    if name == "step_overhead":
        if opts.trainer:
            command += ["--trainer", opts.trainer]
        if opts.trainer_python:
            command += ["--python", opts.trainer_python]
        if opts.quick:
            command += ["--rounds", "2", "--steps", "20"]
    if name == "launch" and opts.trainer:
        command += ["--trainer", opts.trainer]
    if name == "fill_overlap":
        if has_cuda():
            command += FILL_OVERLAP_GPU
        if opts.quick:
            command += ["--counts", "6", "--repeats", "1"]
    return command


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def run(name: str, command: list[str]) -> dict:
    print(f"== {name}: {' '.join(command)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    # stderr is passed through line by line, so progress shows, and its last line is kept as the
    # reason when a benchmark fails; stdout holds the JSON.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    # stdout is drained on its own thread, so that neither pipe can fill up and stall the child.
    reader = threading.Thread(target=lambda: out.append(process.stdout.read()))
    reader.start()
    last = ""
    for line in process.stderr:
        sys.stderr.write(line)
        last = line.strip() or last
    reader.join()
    status = process.wait()
    text = out[0] if out else ""
    elapsed = time.perf_counter() - start
    try:
        data = json.loads(text[text.index("{") :])
    except ValueError:
        return {"error": f"exit status {status}: {last[:120]}", "elapsed_s": elapsed}
    data["exit_status"] = status
    data["elapsed_s"] = elapsed
    return data


def rows_for(name: str, data: dict) -> list[dict]:
    """The summary rows of one benchmark; startup and launch are read from their own keys."""
    if "error" in data:
        return [_row(f"{name}: FAILED ({data['error']})", None, None, None, "", False, "")]
    if "summary" in data:
        return [dict(r, metric=f"{name}: {r['metric']}") for r in data["summary"]]
    if name == "startup":
        with_, without = data.get("median_with_ms"), data.get("median_without_ms")
        difference = data.get("difference_ms")
        return [
            _row(
                "startup: python -c pass, median (ms)",
                with_,
                without,
                with_ / without if with_ and without else None,
                "<= +5 ms",
                None if difference is None else difference <= 5,
                "not installed",
            )
        ]
    if name == "launch":
        cold, warm = data.get("cold", {}), data.get("warm", {})
        key = "load_to_first_step_s"
        speedup, goal = data.get("speedup"), data.get("goal", 10)
        return [
            _row(
                "launch: transformer loaded -> first step (s)",
                warm.get(key),
                cold.get(key),
                speedup,
                f">= {goal:g}x shorter warm",
                None if speedup is None else speedup >= goal,
                "cold cache",
            )
        ]
    return [_row(f"{name}: exit status {data.get('exit_status')}", None, None, None, "", None, "")]


def _row(metric, ours, other, ratio, goal, met, against):
    return {
        "metric": metric,
        "ours": ours,
        "stock": other,
        "ratio": ratio,
        "goal": goal,
        "met": met,
        "against": against,
    }


def _fmt(value) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def print_table(rows: list[dict]) -> None:
    width = max(len(r["metric"]) for r in rows)
    print(f"{'metric':{width}} {'ours':>9} {'other':>9} {'vs':14} {'ratio':>7}  {'goal':26} met?")
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(
            f"{r['metric']:{width}} {_fmt(r['ours']):>9} {_fmt(r['stock']):>9} {r.get('against') or '':14} "
            f"{_fmt(r['ratio']):>7}  {r['goal']:26} {met}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--skip", default="", help=f"comma list of benchmarks to leave out ({', '.join(NAMES)})"
    )
    parser.add_argument("--only", default="", help="comma list of benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer runs and repeats (a few minutes in all)")
    parser.add_argument(
        "--trainer", default=None, help="training script for dataset_prep, step_overhead, launch"
    )
    parser.add_argument("--stock_python", default=None, help="python for dataset_prep's sides")
    parser.add_argument("--trainer_python", default=None, help="python that runs step_overhead's trainer")
    parser.add_argument("--json", action="store_true", help="print all results as JSON")
    parser.add_argument("--out", default=None, help="also write all results as JSON to this file")
    opts = parser.parse_args()

    skip = {s.strip() for s in opts.skip.split(",") if s.strip()}
    only = {s.strip() for s in opts.only.split(",") if s.strip()}
    unknown = (skip | only) - set(NAMES)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; choose from {', '.join(NAMES)}")
    results, rows, notes = {}, [], []
    for name in NAMES:
        if name in skip or (only and name not in only):
            continue
        if name == "gpu_memory" and not has_cuda():
            notes.append("gpu_memory skipped: no CUDA device")
            continue
        command = command_for(name, opts)
        if command is None:
            notes.append(f"{name} skipped: benchmarks/{name}.py does not exist")
            continue
        results[name] = run(name, command)
        rows += rows_for(name, results[name])

    report = {"cpus": os.cpu_count(), "results": results, "summary": rows, "notes": notes}
    if opts.out:
        Path(opts.out).write_text(json.dumps(report, indent=2), encoding="utf-8")
    if opts.json:
        print(json.dumps(report, indent=2))
    else:
        if rows:
            print_table(rows)
        for note in notes:
            print("note:", note)
    failed = any(r["met"] is False for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
