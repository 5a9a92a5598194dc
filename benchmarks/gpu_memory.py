"""Peak GPU memory and step time of a real-size CogVideoX-5b LoRA step, per training size.

What is measured (issue 7)
    A ``CogVideoXTransformer3DModel`` with the released 5b configuration (42 layers, 48 heads of
    64, text 4096, written out below) and random bfloat16 weights, a LoRA adapter of rank 64 on
    ``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` as the training script adds it, gradient
    checkpointing on, AdamW on the LoRA parameters. One training step is: random latents
    ``[1, 13, 16, H/8, W/8]`` (49 frames), random text embeddings ``[1, 226, 4096]``, a random
    timestep, forward, an MSE loss against random targets, backward, optimizer step. Batch 1.

    ours    cogvx-ext's forward hooks installed from a plugin manager with ``rope_rescale``
            (``make_plugin_manager`` + ``load_plugins`` + ``install_forward_hooks``): the rotary
            embedding is computed from the latents that reach the model, cached per shape.
    stock   what the script passes when it trains at ``--height H --width W``: the rotary
            embedding computed again every step from those arguments, by the diffusers
            pipeline's rule (linspace positions fitted into the 480x720 base grid). At a single
            size the stock script runs at every size below; it only breaks when sizes mix.

    For each size (49x480x720, 49x576x1024, 49x720x1280 by default) and each side, a fresh
    process builds the model, runs ``--warmup`` steps, resets the peak counter, and times
    ``--steps`` steps (CUDA-synchronised). Reported: ``torch.cuda.max_memory_allocated`` and
    ``max_memory_reserved`` over the timed steps, the weights' memory, and the median step time.

    Next to each measurement the script prints cogvx-ext's estimate of the same configuration
    (``cogvx_ext.model.memory``: fake tensors on the CPU, computed in this parent process): the
    transformer, LoRA, its gradients and AdamW states, the step's activations; no text encoder or
    VAE (neither is built here). The forward runs under ``torch.autocast`` (bf16), as the scripts
    do under ``accelerate launch --mixed_precision bf16``; ``--no_autocast`` runs it in pure bf16
    (as finetrainers does). On the CPU (``--tiny``) the "measured" column is the peak of the bytes
    the run's storages hold (``cogvx_ext.model.memory.LiveStorageCounter`` from the model's creation).

    Figures must come from a real device: without CUDA the script stops with one line. ``--tiny``
    runs the same code on the CPU with a tiny 5b-shaped model (``cogvx_ext.testing``) at small
    sizes, as a smoke test of the model building and the step; its numbers mean nothing.

    python benchmarks/gpu_memory.py [--sizes 49x480x720,49x576x1024,49x720x1280] [--json]
    python benchmarks/gpu_memory.py --tiny     # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# The released CogVideoX-5b transformer configuration (transformer/config.json of THUDM/CogVideoX-5b).
REAL_5B_CONFIG = dict(
    activation_fn="gelu-approximate",
    attention_bias=True,
    attention_head_dim=64,
    dropout=0.0,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=16,
    max_text_seq_length=226,
    norm_elementwise_affine=True,
    norm_eps=1e-5,
    num_attention_heads=48,
    num_layers=42,
    out_channels=16,
    patch_size=2,
    sample_frames=49,
    sample_height=60,
    sample_width=90,
    spatial_interpolation_scale=1.875,
    temporal_compression_ratio=4,
    temporal_interpolation_scale=1.0,
    text_embed_dim=4096,
    time_embed_dim=512,
    timestep_activation_fn="silu",
    use_learned_positional_embeddings=False,
    use_rotary_positional_embeddings=True,
)
DEFAULT_SIZES = "49x480x720,49x576x1024,49x720x1280"
TINY_SIZES = "9x96x160,9x128x128"
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def parse_size(text: str) -> tuple[int, int, int]:
    frames, height, width = (int(x) for x in text.lower().split("x"))
    if (frames - 1) % 4 or height % 16 or width % 16:
        raise SystemExit(f"size {text}: frames must be 4k+1 and height, width multiples of 16")
    return frames, height, width


def build_transformer(tiny: bool, device, dtype, rank: int):
    """The model with random weights, made directly on ``device`` in ``dtype``, LoRA added."""
    import torch
    from diffusers import CogVideoXTransformer3DModel
    from peft import LoraConfig

    if tiny:
        from cogvx_ext.testing import tiny_transformer_config

        config = tiny_transformer_config("5b")
    else:
        config = dict(REAL_5B_CONFIG)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # 5B parameters: never materialise them in float32 first
    try:
        with torch.device(device):
            transformer = CogVideoXTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    transformer.to(device=device, dtype=dtype)
    transformer.requires_grad_(False)
    transformer.enable_gradient_checkpointing()
    # As the training script adds it: LoRA on the attention projections, init as peft does.
    transformer.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=LORA_TARGETS)
    )
    transformer.train()
    return transformer


def install_ours(transformer, plugins: str):
    """cogvx-ext's forward hooks from a plugin manager with the given plugins, as a training run installs them."""
    from cogvx_ext.data.context import RunContext
    from cogvx_ext.model.facts import ModelInfo
    from cogvx_ext.plugin.forward import install_forward_hooks
    from cogvx_ext.plugin.manager import load_plugins, make_plugin_manager, parse_plugin_list

    pm = make_plugin_manager()
    load_plugins(pm, parse_plugin_list([plugins]))
    parser = argparse.ArgumentParser()
    pm.hook.cogvx_add_arguments(parser=parser)
    args = parser.parse_args([])  # every plugin flag at its default
    model = ModelInfo.from_config(transformer.config)
    run = RunContext("train", args=args, model=model, stages=None)
    pm.hook.cogvx_configure(args=args, run=run)
    if not install_forward_hooks(transformer, pm.hook, model, run):
        raise SystemExit(f"no forward hook among the plugins {plugins}")
    return pm


def stock_rotary(config, height: int, width: int, latent_frames: int, device):
    """The embedding the script computes each step from --height/--width (the pipeline's rule)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    patch = 8 * config.patch_size  # VAE 8x, then the transformer's patches
    grid = (height // patch, width // patch)
    base_h, base_w = config.sample_height // config.patch_size, config.sample_width // config.patch_size
    crops = get_resize_crop_region_for_grid(grid, base_w, base_h)
    return get_3d_rotary_pos_embed(
        embed_dim=config.attention_head_dim,
        crops_coords=crops,
        grid_size=grid,
        temporal_size=latent_frames,
        device=device,
    )


def worker(opts) -> int:
    import contextlib

    counter = contextlib.nullcontext()
    if opts.tiny:
        from cogvx_ext.model.memory.trace import LiveStorageCounter

        counter = LiveStorageCounter()  # the CPU's allocated bytes, counted from the model's creation
    with counter:
        return _work(opts, counter)


def _work(opts, counter) -> int:
    import torch

    device = torch.device("cpu" if opts.tiny else "cuda")
    dtype = torch.bfloat16
    frames, height, width = parse_size(opts.size)
    latent = ((frames - 1) // 4 + 1, height // 8, width // 8)
    torch.manual_seed(0)

    transformer = build_transformer(opts.tiny, device, dtype, opts.rank)
    config = transformer.config
    rope_matches_stock = None
    if opts.side == "ours":
        pm = install_ours(transformer, opts.plugins)
        # The hook must supply RoPE (the step passes None), and at a single size it should be the
        # stock embedding exactly: otherwise the two columns would not train the same thing.
        from cogvx_ext.model.facts import ModelInfo

        ours_rope = pm.hook.cogvx_rotary_embedding(
            model=ModelInfo.from_config(config), latent_shape=latent, device=device
        )
        if ours_rope is None:
            raise SystemExit(f"no plugin among {opts.plugins} supplies the rotary embedding")
        stock_rope = stock_rotary(config, height, width, latent[0], device)
        rope_matches_stock = all(torch.equal(a, b) for a, b in zip(ours_rope, stock_rope))
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-4, eps=1e-8)
    channels = config.in_channels
    text = torch.randn(1, config.max_text_seq_length, config.text_embed_dim, device=device, dtype=dtype)
    weights_bytes = _allocated(device)

    def step():
        latents = torch.randn(1, latent[0], channels, latent[1], latent[2], device=device, dtype=dtype)
        target = torch.randn_like(latents)
        timestep = torch.randint(0, 1000, (1,), device=device)
        rotary = None if opts.side == "ours" else stock_rotary(config, height, width, latent[0], device)
        with torch.autocast(device.type, dtype=dtype, enabled=opts.autocast):  # accelerate's bf16
            output = transformer(
                hidden_states=latents,
                encoder_hidden_states=text,
                timestep=timestep,
                image_rotary_emb=rotary,  # ours: replaced by the forward hook
                return_dict=False,
            )[0]
        loss = torch.nn.functional.mse_loss(output.float(), target.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)

    for _ in range(opts.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(opts.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    result = {
        "side": opts.side,
        "size": opts.size,
        "latent": list(latent),
        "tokens": latent[0] * (latent[1] // config.patch_size) * (latent[2] // config.patch_size),
        "step_s": statistics.median(times),
        "step_all_s": [round(t, 4) for t in times],
        "weights_gib": weights_bytes / 2**30,
        "lora_params": sum(p.numel() for p in params),
        "rope_matches_stock": rope_matches_stock,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (tiny smoke test)",
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        result["max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["max_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    else:
        result["counted_peak_gib"] = counter.peak / 2**30
        import resource

        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


def _allocated(device) -> int:
    import torch

    return torch.cuda.memory_allocated() if device.type == "cuda" else 0


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_one(opts, size: str, side: str) -> dict:
    command = [
        sys.executable, __file__, "--worker", "--size", size, "--side", side,
        "--steps", str(opts.steps), "--warmup", str(opts.warmup), "--rank", str(opts.rank),
        "--with_plugins", opts.plugins,
    ] + (["--tiny"] if opts.tiny else []) + ([] if opts.autocast else ["--no_autocast"])  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if result.returncode != 0 or not lines:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        if "OutOfMemoryError" in result.stderr or "out of memory" in result.stderr:
            return {"side": side, "size": size, "error": "out of memory"}
        sys.stderr.write(result.stdout[-2000:] + result.stderr[-4000:])
        return {"side": side, "size": size, "error": tail[:200]}
    return json.loads(lines[-1].split(" ", 1)[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help=f"FRAMESxHEIGHTxWIDTH list (default {DEFAULT_SIZES})")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per size and side")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rank", type=int, default=64, help="LoRA rank (and alpha)")
    parser.add_argument("--sides", default="stock,ours")
    # Not --plugins: that flag on this command line would wake cogvx-ext's start-up hook.
    parser.add_argument("--with_plugins", dest="plugins", default="rope_rescale", help="plugins of our side")
    parser.add_argument(
        "--tiny", action="store_true", help="CPU smoke test with a tiny model (numbers mean nothing)"
    )
    parser.add_argument(
        "--no_autocast",
        dest="autocast",
        action="store_false",
        help="pure bf16 forward (finetrainers' way) instead of accelerate's bf16 autocast",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=("stock", "ours"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        return worker(opts)

    if not opts.tiny:
        import torch

        if not torch.cuda.is_available():
            print(
                "gpu_memory: no CUDA device here; run it on a machine with a GPU (or --tiny for a CPU smoke test)",
                file=sys.stderr,
            )
            return 2
    sizes = (opts.sizes or (TINY_SIZES if opts.tiny else DEFAULT_SIZES)).split(",")
    for size in sizes:
        parse_size(size)
    sides = [s.strip() for s in opts.sides.split(",") if s.strip()]
    rows = []
    for size in sizes:
        estimated = estimate_gib(opts, size)
        for side in sides:
            print(f"{size} {side} ...", file=sys.stderr, flush=True)
            rows.append({**run_one(opts, size, side), "estimate_gib": estimated})
    report = {
        "benchmark": "gpu_memory",
        "tiny": opts.tiny,
        "autocast": opts.autocast,
        "rank": opts.rank,
        "plugins": opts.plugins,
        "results": rows,
        "summary": summary_rows(rows, sizes),
    }
    if opts.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0 if not any("error" in r and r["error"] != "out of memory" for r in rows) else 1


def estimate_gib(opts, size: str) -> float:
    """cogvx-ext's estimate of the worker's configuration at this size (cogvx_ext.model.memory)."""
    from cogvx_ext.model.memory.estimate import estimate
    from cogvx_ext.model.memory.setup import TrainingSetup

    if opts.tiny:
        from cogvx_ext.testing import tiny_transformer_config

        config = tiny_transformer_config("5b")
    else:
        config = dict(REAL_5B_CONFIG)
    setup = TrainingSetup.build(
        config,
        rank=opts.rank,
        lora_alpha=opts.rank,
        optimizer="adamw",
        mixed_precision="bf16",
        gradient_checkpointing=True,
        text_encoder_on_device=False,  # the benchmark builds no text encoder
        vae_on_device=False,  # nor a VAE
        autocast=opts.autocast,
    )
    frames, height, width = parse_size(size)
    return estimate(setup, ((frames - 1) // 4 + 1, height // 8, width // 8), 1).peak / 2**30


def summary_rows(rows: list[dict], sizes: list[str]) -> list[dict]:
    found = {(r["size"], r["side"]): r for r in rows}
    out = []
    for size in sizes:
        ours, stock = found.get((size, "ours"), {}), found.get((size, "stock"), {})
        memory_key = "max_allocated_gib" if "max_allocated_gib" in ours else "counted_peak_gib"
        for label, key in ((f"peak memory {size} (GiB)", memory_key), (f"step time {size} (s)", "step_s")):
            a, b = ours.get(key), stock.get(key)
            out.append(
                {
                    "metric": label,
                    "ours": a,
                    "stock": b,
                    "ratio": a / b if a and b else None,
                    "goal": "(table)",
                    "met": None,
                    "against": "stock",
                }
            )
    return out


def print_table(report: dict) -> None:
    rows = report["results"]
    device = next((r["device"] for r in rows if "device" in r), "?")
    print(
        f"CogVideoX-5b{' (TINY, CPU smoke test)' if report['tiny'] else ''} LoRA rank {report['rank']}, "
        f"batch 1, gradient checkpointing, bf16 {'autocast' if report['autocast'] else '(no autocast)'}, on {device}"
    )
    # The tiny model's figures are MiB; the real ones GiB.
    unit, scale = ("MiB", 1024) if report["tiny"] else ("GiB", 1)
    memory = f"max alloc {unit}" if not report["tiny"] else f"counted {unit}"
    print(
        f"{'size (FxHxW)':14} {'side':6} {'tokens':>7} {'weights ' + unit:>11} {memory:>14} {'estimate ' + unit:>12} "
        f"{'est./meas.':>10} {'reserved ' + unit:>12} {'step s':>8}"
    )
    for r in rows:
        if "error" in r:
            print(
                f"{r['size']:14} {r['side']:6} {r['error']}  (estimate {r['estimate_gib'] * scale:.2f} {unit})"
            )
            continue
        peak = r.get("max_allocated_gib", r.get("counted_peak_gib"))
        reserved = r.get("max_reserved_gib")
        print(
            f"{r['size']:14} {r['side']:6} {r['tokens']:>7} {r['weights_gib'] * scale:11.2f} {peak * scale:14.2f} "
            f"{r['estimate_gib'] * scale:12.2f} {r['estimate_gib'] / peak - 1:+10.1%} "
            f"{'-' if reserved is None else f'{reserved * scale:.2f}':>12} {r['step_s']:8.3f}"
        )


if __name__ == "__main__":
    sys.exit(main())
