"""How long cogvx-ext's memory estimate takes for many buckets, and what it says for published runs.

What is measured
    In one fresh process (imports included, caches cold): ``cogvx_ext.model.memory.estimate`` of the
    real-size CogVideoX-5b (42 layers, random nothing: fake tensors, no weights) for ``--buckets``
    shapes (default 30) of aspect_bucket's generated buckets around 1024x576 at 49 frames, batch 1,
    LoRA rank 128, AdamW, bf16, gradient checkpointing, prompts cached (text encoder on the CPU).
    Printed: the wall time of the whole, and per bucket, and each bucket's estimate.

    Then the estimate, term by term, of the configurations with published figures:
    finetrainers' CogVideoX-5b LoRA at 49x480x720 (rank 128, batch 1, gradient checkpointing,
    AdamW, latents and prompt embeddings precomputed: 11.1 GB allocated between steps, 20.7 GB
    reserved at the peak) and THUDM's CogVideoX1.5-5B LoRA at 81x768x1360 (about 35 GB).

    python benchmarks/memory_estimate.py [--buckets 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

STARTED = time.perf_counter()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, default=30, help="how many bucket shapes to estimate")
    parser.add_argument("--json", action="store_true", help="print JSON")
    opts = parser.parse_args()

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
    begun = time.perf_counter()
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
    total_s = time.perf_counter() - STARTED

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

    report = {
        "benchmark": "memory_estimate",
        "buckets": len(rows),
        "total_s": total_s,
        "estimates_s": estimates_s,
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
        f"{len(rows)} buckets: {estimates_s:.1f} s of estimates ({estimates_s / max(1, len(rows)):.2f} s each), "
        f"{total_s:.1f} s with the process start and imports"
    )
    for name, found, figure in published:
        print(
            f"{name}: {found.peak / 2**30:.2f} GiB = {found.peak / 1e9:.2f} GB allocated at the peak (published: {figure})"
        )
        for term, value in found.terms.items():
            print(f"    {term:14} {value / 2**30:7.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
