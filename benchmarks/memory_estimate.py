"""How long cogvx-ext's memory estimate takes for many buckets, and what it says for published runs.

What is measured
    In one fresh process (imports included, caches cold, the on-disk trace store off unless
    ``--store PATH``): ``cogvx_ext.model.memory.estimate`` of the real-size CogVideoX-5b (42
    layers, random nothing: fake tensors, no weights) for ``--buckets`` shapes (default 30) of
    aspect_bucket's generated buckets around 1024x576 at 49 frames, batch 1, LoRA rank 128, AdamW,
    bf16, gradient checkpointing, prompts cached (text encoder on the CPU).
    Printed: the wall time of the whole, and per bucket, and each bucket's estimate.

    With ``--budget_error``: the time of ``cogvx-ext plan ... --bucket_memory_budget 24GiB`` (the
    README's 5b command at 1024x576x49, without latent_cache) on 6 synthetic clips of 6 aspects,
    which stops with one line naming a bucket and the cheapest change; wall and CPU seconds of the
    process, store off (cold) and then warm (a second run with a store). The clips are written once
    to ``benchmarks/.data/memory_plan/``.

    Then the estimate, term by term, of the configurations with published figures:
    finetrainers' CogVideoX-5b LoRA at 49x480x720 (rank 128, batch 1, gradient checkpointing,
    AdamW, latents and prompt embeddings precomputed: 11.1 GB allocated between steps, 20.7 GB
    reserved at the peak) and THUDM's CogVideoX1.5-5B LoRA at 81x768x1360 (about 35 GB).

    python benchmarks/memory_estimate.py [--buckets 30] [--store PATH] [--budget_error] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()
HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, default=30, help="how many bucket shapes to estimate")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--store", default="off", help="the trace store (COGVX_EXT_MEMORY_CACHE): off (default) or a file"
    )
    parser.add_argument(
        "--budget_error", action="store_true", help="also time the plan that stops for a budget too small"
    )
    opts = parser.parse_args()
    os.environ["COGVX_EXT_MEMORY_CACHE"] = opts.store

    from cogvx_ext.model.memory.configs import released_transformer_config
    from cogvx_ext.model.memory.estimate import estimate
    from cogvx_ext.model.memory.setup import TrainingSetup
    from cogvx_ext_plugins.aspect_bucket.buckets import generate_bucket_ladder

    setup = TrainingSetup.build(
        released_transformer_config("5b"),
        rank=128,
        optimizer="adamw",
        mixed_precision="bf16",
        gradient_checkpointing=True,
        text_encoder_on_device=False,
    )
    model = setup.model
    rungs = generate_bucket_ladder(1024 * 576, 256, 2048, 2.4, 0.03, 16, [(576, 1024)])
    buckets = [bucket for rung in rungs for bucket in rung][: opts.buckets]
    begun, begun_cpu = time.perf_counter(), time.process_time()
    rows = []
    for height, width in buckets:
        latent = model.latent_shape(49, height, width)
        rows.append(
            {
                "size": f"{width}x{height}x49",
                "tokens": model.tokens(latent),
                "peak_bytes": estimate(setup, latent).peak,
            }
        )
    estimates_s = time.perf_counter() - begun
    estimates_cpu_s = time.process_time() - begun_cpu
    total_s = time.perf_counter() - STARTED
    total_cpu_s = time.process_time()

    published = []
    finetrainers = estimate(setup, model.latent_shape(49, 480, 720))
    published.append(
        ("finetrainers 5b LoRA 720x480x49 (script: bf16 autocast)", finetrainers, "20.7 GB reserved")
    )
    pure = estimate(
        TrainingSetup(**{**setup.__dict__, "autocast": False, "vae_on_device": False}), (13, 60, 90)
    )
    published.append(("the same, pure bf16 and no VAE (finetrainers' own way)", pure, "20.7 GB reserved"))
    thudm = TrainingSetup.build(
        released_transformer_config("1.5-5B"),
        rank=128,
        optimizer="adamw",
        mixed_precision="bf16",
        gradient_checkpointing=True,
        text_encoder_on_device=False,
    )
    big = estimate(thudm, thudm.model.latent_shape(81, 768, 1360))
    published.append(("THUDM 1.5-5B LoRA 1360x768x81", big, "about 35 GB"))

    budget_runs = budget_error_runs() if opts.budget_error else []
    report = {
        "benchmark": "memory_estimate",
        "budget_error": budget_runs,
        "buckets": len(rows),
        "total_s": total_s,
        "estimates_s": estimates_s,
        "estimates_cpu_s": estimates_cpu_s,
        "total_cpu_s": total_cpu_s,
        "per_bucket_s": estimates_s / max(1, len(rows)),
        "rows": rows,
        "published": [
            {"run": name, "published": figure, **found.to_json()} for name, found, figure in published
        ],
    }
    if opts.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{setup.describe()}")
    for row in rows:
        print(f"  {row['size']:>14}  {row['tokens']:>6} tokens  {row['peak_bytes'] / 2**30:6.2f} GiB")
    print(
        f"{len(rows)} buckets: {estimates_s:.1f} s of estimates ({estimates_s / max(1, len(rows)):.2f} s each; "
        f"{estimates_cpu_s:.1f} s CPU), {total_s:.1f} s with the process start and imports ({total_cpu_s:.1f} s CPU)"
    )
    for name, found, figure in published:
        print(
            f"{name}: {found.peak / 2**30:.2f} GiB = {found.peak / 1e9:.2f} GB allocated at the peak (published: {figure})"
        )
        for term, value in found.terms.items():
            print(f"    {term:14} {value / 2**30:7.2f} GiB")
    for run in budget_runs:
        print(
            f"plan with a budget too small ({run['store']}): {run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s CPU, "
            f"exit {run['exit']}: {run['line']}"
        )
    return 0


PLAN = [
    "--caption_column", "prompts.txt", "--video_column", "videos.txt", "--model", "5b", "--height", "576",
    "--width", "1024", "--max_num_frames", "49", "--train_batch_size", "1", "--gradient_checkpointing",
    "--rank", "128", "--optimizer", "adamw", "--mixed_precision", "bf16", "--plugins", "aspect_bucket,rope_rescale",
    "--memory", "--bucket_memory_budget", "24GiB",
]  # fmt: skip
CLIPS = [(1024, 576, 49), (576, 1024, 49), (720, 480, 49), (960, 720, 49), (768, 768, 49), (1280, 544, 49)]


def budget_error_runs() -> list[dict]:
    """``cogvx-ext plan`` with a budget its largest bucket does not fit, in fresh processes."""
    from cogvx_ext.data.synthetic import write_dataset

    data = HERE / ".data" / "memory_plan"
    if not (data / "videos.txt").exists():
        write_dataset(data, CLIPS)
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for name, store in (("cold, store off", "off"), ("cold store", f"{folder}/t.json"),
                            ("warm store", f"{folder}/t.json")):  # fmt: skip
            env = {**os.environ, "COGVX_EXT_MEMORY_CACHE": store}
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            began = time.perf_counter()
            result = subprocess.run(
                [sys.executable, "-m", "cogvx_ext", "plan", "--instance_data_root", str(data), *PLAN],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
            wall = time.perf_counter() - began
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            line = (result.stderr.strip().splitlines() or [""])[-1]
            runs.append(
                {"store": name, "wall_s": wall, "cpu_s": cpu, "exit": result.returncode, "line": line}
            )
    return runs


if __name__ == "__main__":
    sys.exit(main())
