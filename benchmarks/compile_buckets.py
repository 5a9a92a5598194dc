"""torch.compile (inductor) with buckets, on the CPU: compile time and per-step time, whole model
against regional (issues 14 and 24).

What is measured
    A tiny random CogVideoX 5b transformer (the ``cogvx_ext.testing.build_tiny_model`` config,
    real 5b positional settings, ``--layers`` blocks, default 8) with the built-in forward hooks
    (``aspect_bucket,rope_rescale``: RoPE per batch shape, as in training) takes training steps
    (forward, MSE loss, backward, SGD) on random latents, 1, 9 and 35 latent shapes in turn,
    ``--rounds`` times. Each side runs in a process of its own with an empty inductor cache of its
    own, so that dynamo and inductor start cold:

    eager      no compilation (reference)
    whole      ``torch.compile`` of the whole transformer, static shapes, the recompile limit
               raised to the shapes (cogvx-ext's set-up before issue 24)
    regional   each ``transformer_blocks[i]`` compiled in place (``cogvx_ext.script.compiling``,
               as under accelerate's dynamo backend): the first shape static, one dynamic
               recompile (symbolic sequence length), the rest reuse it
    static     regional with ``COGVX_EXT_COMPILE_STATIC=1``: one static block graph per token count
    warm       regional again, 35 shapes, on the cache the cold regional 35-shape side left
               (a relaunch)

    Compile time is dynamo's own count (``compile_seconds``: frames traced and compiled, AOT
    autograd, inductor, the lazy backward compile); first round = wall time of the first round
    minus the median rounds' time for the same steps. Per-step time is the median over rounds
    2.., per shape, averaged over the shapes; "first shape" is the step time at the shape every
    side runs. Goals (issue 24): regional 35 shapes compile in <= 3x the time of regional 1 shape;
    regional per-step time within 10 % of the whole model compiled for one shape.

    python benchmarks/compile_buckets.py [--quick] [--whole_35] [--json]

--quick: 1 and 9 shapes, 3 rounds, no static/warm sides. The whole model at 35 shapes is
measured only with --whole_35 (about 35 whole-model compiles; otherwise it is extrapolated from
the 9-shape side per shape and marked so). Inductor needs a C++ compiler (gcc) on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def latent_shapes(count: int) -> list[tuple[int, int, int]]:
    """``count`` latent FxHxW shapes of distinct token counts, around one bucket's area (the 5b's
    buckets hold about the same area at every aspect), frames 2..7."""
    aspects = [(18, 32), (32, 18), (20, 28), (28, 20), (22, 26), (26, 22), (24, 24), (16, 34), (34, 16)]
    shapes, tokens = [], set()
    for f in (3, 5, 2, 4, 7, 6, 9, 8, 11, 13):
        for h, w in aspects:
            n = f * (h // 2) * (w // 2)
            if n not in tokens:
                tokens.add(n)
                shapes.append((f, h, w))
    assert len(shapes) >= count, len(shapes)
    return shapes[:count]


def side(mode: str, count: int, rounds: int, layers: int) -> dict:
    import torch
    from diffusers import CogVideoXTransformer3DModel
    from torch._dynamo.utils import counters

    from cogvx_ext.data.context import RunContext
    from cogvx_ext.inference import make_inference_plugin_manager, recorded_args
    from cogvx_ext.model.facts import ModelInfo
    from cogvx_ext.model.tiny import tiny_transformer_config
    from cogvx_ext.plugin.forward import install_forward_hooks
    from cogvx_ext.script.compiling import CompileWatch, compile_blocks, compile_seconds

    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(**{**tiny_transformer_config("5b"), "num_layers": layers})
    pm = make_inference_plugin_manager(["aspect_bucket", "rope_rescale"])
    args = recorded_args(pm, {})
    info = ModelInfo.from_config(transformer.config)
    run = RunContext("inference", args=args, model=info, stages=None)
    pm.hook.cogvx_configure(args=args, run=run)
    install_forward_hooks(transformer, pm.hook, info, run)
    optimizer = torch.optim.SGD(transformer.parameters(), lr=1e-4)
    shapes = latent_shapes(count)
    model = transformer
    if mode == "whole":
        CompileWatch("inductor", count)
        model = torch.compile(transformer, backend="inductor")
    elif mode in ("regional", "static", "warm"):
        blocks = compile_blocks(transformer, backend="inductor")
        CompileWatch("inductor", count, blocks=blocks, dynamic=mode != "static")
    channels = transformer.config.in_channels
    text = torch.randn(1, 226, transformer.config.text_embed_dim)
    times: list[list[float]] = []
    for _ in range(rounds):
        row = []
        for f, h, w in shapes:
            x = torch.randn(1, f, channels, h, w)
            start = time.perf_counter()
            out = model(
                hidden_states=x, encoder_hidden_states=text, timestep=torch.tensor([10]), return_dict=False
            )[0]
            out.float().pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            row.append(time.perf_counter() - start)
        times.append(row)
    later = [statistics.median(times[r][i] for r in range(1, rounds)) for i in range(len(shapes))]
    return {
        "mode": mode,
        "shapes": count,
        "first_shape_step_ms": round(1000 * later[0], 2),
        "mean_step_ms": round(1000 * statistics.mean(later), 2),
        "compile_s": round(compile_seconds(), 1),
        "first_round_extra_s": round(sum(times[0]) - sum(later), 1),
        "graphs": int(counters["stats"]["unique_graphs"]),
    }


def run_side(mode: str, count: int, rounds: int, layers: int, cache: str) -> dict:
    command = [sys.executable, __file__, "--side", mode, "--count", str(count), "--rounds", str(rounds)]
    command += ["--layers", str(layers)]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        last = [line for line in lines if "Error" in line][-1:] or lines[-1:]
        return {"mode": mode, "shapes": count, "failed": last[0] if last else f"exit {done.returncode}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - start, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 9 shapes, 3 rounds, no static/warm")
    parser.add_argument("--whole_35", action="store_true", help="also compile the whole model for 35 shapes")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per side (default 4; --quick 3)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", help="these sides alone, e.g. regional:35,warm:35")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 4)
    if args.side:
        print(json.dumps(side(args.side, args.count, rounds, args.layers)))
        return 0
    counts = [1, 9] if args.quick else [1, 9, 35]
    plan = [("eager", 9)] + [("whole", n) for n in counts if n != 35 or args.whole_35]
    plan += [("regional", n) for n in counts]
    if not args.quick:
        plan += [("static", 9), ("warm", 35)]
    if args.only:
        plan = [(mode, int(n)) for mode, n in (item.split(":") for item in args.only.split(","))]
    root = tempfile.mkdtemp(prefix="compile-buckets-")
    results = []
    try:
        for mode, count in plan:
            # A cold cache per side; "warm" reuses the cold regional 35-shape side's.
            cache = os.path.join(root, "regional-35" if mode == "warm" else f"{mode}-{count}")
            results.append(run_side(mode, count, rounds, args.layers, cache))
            print(f"done: {mode} {count} shape(s)", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    found = {(r["mode"], r["shapes"]): r for r in results if "failed" not in r}
    whole_9 = found.get(("whole", 9))
    if ("whole", 35) not in found and whole_9 and ("whole", 1) in found and not args.quick:
        per_shape = (whole_9["compile_s"] - found[("whole", 1)]["compile_s"]) / 8
        extrapolated = dict(whole_9, shapes=35, graphs=None, first_round_extra_s=None, process_s=None)
        extrapolated.update(compile_s=round(whole_9["compile_s"] + 26 * per_shape, 1), extrapolated=True)
        results.append(extrapolated)
    goals = {}
    one, most = found.get(("regional", 1)), found.get(("regional", max(counts)))
    single = found.get(("whole", 1))
    if one and most:
        goals[f"regional compile, {max(counts)} shapes / 1 shape (goal <= 3)"] = (
            most["compile_s"] / one["compile_s"]
        )
    if single and most:
        goals["regional step / whole model one shape, first shape (goal <= 1.10)"] = (
            most["first_shape_step_ms"] / single["first_shape_step_ms"]
        )
    if args.json:
        print(json.dumps({"sides": results, "goals": goals}, indent=1))
    else:
        print(
            "| side | shapes | graphs | compile s | first round extra s | step ms, first shape | mean step ms |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in results:
            if "failed" in r:
                print(f"| {r['mode']} | {r['shapes']} | failed: {r['failed'][:120]} | | | | |")
                continue
            mark = " (extrapolated)" if r.get("extrapolated") else ""
            print(
                f"| {r['mode']}{mark} | {r['shapes']} | {r['graphs'] if r['graphs'] is not None else '-'} | "
                f"{r['compile_s']} | {r['first_round_extra_s'] if r['first_round_extra_s'] is not None else '-'} | "
                f"{r['first_shape_step_ms'] if not mark else '-'} | {r['mean_step_ms'] if not mark else '-'} |"
            )
        for name, ratio in goals.items():
            print(f"{name}: {ratio:.2f}")
    met = [ratio <= (3 if "compile" in name else 1.10) for name, ratio in goals.items()]
    return 0 if met and all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
