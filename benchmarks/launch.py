"""Launch-to-first-step time with the latent cache, cold against warm, on a tiny model on the CPU.

Builds a tiny random CogVideoX 5b and 8 synthetic clips (16:9, 9:16, square and other aspects,
17 to 33 frames), then runs a training script twice with the same command line, one optimizer
step each: the first launch fills an empty ``--latent_cache_dir`` (cold), the second reads it
(warm). A small timing plugin, written next to the data, records ``time.perf_counter()`` when the
transformer has loaded (``cogvx_transformer_loaded``), when the data is ready (the batch sampler
is asked for, right after the encoding pass) and at the end of the first step (``cogvx_step_end``).
The time that matters is from the transformer loaded to the first step: everything the cache
can save (decoding, VAE encoding) happens there. Goal: warm at least 10x shorter.

    python benchmarks/launch.py [--trainer PATH] [--json] [--goal 10]

The trainer is ``--trainer``, else ``$COGVX_EXT_TRAINER``, else the repository's tiny T2V
trainer. Exits 1 when the warm launch is not ``--goal`` times shorter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMING_ENV = "LAUNCH_BENCHMARK_TIMING"

# (width, height, frames): the 288x512 area in several aspects, more frames than 17 in some.
CLIPS = [
    (512, 288, 17),
    (288, 512, 17),
    (384, 384, 17),
    (448, 320, 21),
    (640, 360, 25),
    (320, 448, 17),
    (576, 320, 33),
    (512, 288, 21),
]

TIMING_PLUGIN = f"""
import json
import os
import time

from cogvx_ext import hookimpl

_times = {{}}


@hookimpl
def cogvx_transformer_loaded():
    _times["transformer_loaded"] = time.perf_counter()


@hookimpl(wrapper=True)
def cogvx_batch_sampler():
    _times["data_ready"] = time.perf_counter()  # the script has encoded every sample by now
    return (yield)


@hookimpl
def cogvx_step_end():
    if "first_step" not in _times:
        _times["first_step"] = time.perf_counter()
        with open(os.environ["{TIMING_ENV}"], "w", encoding="utf-8") as f:
            json.dump(_times, f)
"""


def prepare(work: Path, height: int, width: int) -> tuple[Path, Path, Path]:
    from cogvx_ext.testing import build_tiny_model, write_dataset

    model = build_tiny_model(work, "5b")
    data = write_dataset(work / "data", CLIPS)
    plugin = work / "launch_timing.py"
    plugin.write_text(textwrap.dedent(TIMING_PLUGIN))
    return model, data, plugin


def launch(trainer: Path, work: Path, model: Path, data: Path, plugins: str, name: str, opts) -> dict:
    timing = work / f"timing_{name}.json"
    command = [
        sys.executable, str(trainer),
        "--pretrained_model_name_or_path", str(model),
        "--instance_data_root", str(data),
        "--caption_column", "prompts.txt",
        "--video_column", "videos.txt",
        "--height", str(opts.height), "--width", str(opts.width), "--max_num_frames", str(opts.frames),
        "--train_batch_size", "1", "--max_train_steps", "1", "--rank", "4", "--lora_alpha", "4",
        "--seed", "0",
        "--output_dir", str(work / f"out_{name}"),
        "--latent_cache_dir", str(work / "cache"),
        "--plugins", plugins,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **{TIMING_ENV: str(timing)})
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0 or not timing.exists():
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-5000:])
        raise SystemExit(f"the {name} launch failed (exit status {result.returncode})")
    times = json.loads(timing.read_text())
    summary = [line for line in (result.stdout + result.stderr).splitlines() if "latent_cache:" in line]
    return {
        "process_s": wall,
        "load_to_first_step_s": times["first_step"] - times["transformer_loaded"],
        "load_to_data_ready_s": times["data_ready"] - times["transformer_loaded"],
        "first_step_s": times["first_step"] - times["data_ready"],
        "cache_report": summary[-1].split("latent_cache: ", 1)[-1] if summary else None,
    }


def main() -> int:
    from cogvx_ext.trainers import minimal_trainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trainer",
        default=os.environ.get("COGVX_EXT_TRAINER") or str(minimal_trainer("t2v")),
    )
    parser.add_argument(
        "--plugins",
        default="aspect_bucket,rope_rescale,latent_cache",
        help="plugins for both launches (the timing plugin is added)",
    )
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--frames", type=int, default=17, help="--max_num_frames")
    parser.add_argument(
        "--workdir", default=None, help="keep the model, clips and cache here (default: a temporary folder)"
    )
    parser.add_argument(
        "--goal",
        type=float,
        default=10.0,
        help="required cold/warm ratio of transformer-loaded-to-first-step",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cogvx-launch-") as tmp:
        work = Path(opts.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if (work / "cache").exists():
            raise SystemExit(f"{work / 'cache'} exists: the cold launch needs an empty cache")
        model, data, plugin = prepare(work, opts.height, opts.width)
        plugins = f"{opts.plugins},{plugin}"
        cold = launch(Path(opts.trainer), work, model, data, plugins, "cold", opts)
        warm = launch(Path(opts.trainer), work, model, data, plugins, "warm", opts)

    ratio = cold["load_to_first_step_s"] / warm["load_to_first_step_s"]
    result = {
        "trainer": Path(opts.trainer).name,
        "plugins": opts.plugins,
        "clips": len(CLIPS),
        "size": f"{opts.height}x{opts.width}x{opts.frames}",
        "torch_threads": _torch_threads(),
        "cold": cold,
        "warm": warm,
        "speedup": ratio,
        "goal": opts.goal,
    }
    if opts.json:
        print(json.dumps(result, indent=2))
    else:
        rows = [
            ("transformer loaded -> first step", "load_to_first_step_s"),
            ("  of which: -> data ready", "load_to_data_ready_s"),
            ("  of which: first step", "first_step_s"),
            ("whole process", "process_s"),
        ]
        print(f"{result['trainer']}, {len(CLIPS)} clips at {result['size']}, plugins {opts.plugins}")
        print(f"{'':34} {'cold':>9} {'warm':>9} {'cold/warm':>10}")
        for label, key in rows:
            print(f"{label:34} {cold[key]:8.2f}s {warm[key]:8.2f}s {cold[key] / warm[key]:9.1f}x")
        print(f"cold: {cold['cache_report']}\nwarm: {warm['cache_report']}")
        print(
            f"goal: warm >= {opts.goal:g}x shorter after the transformer loads: {'met' if ratio >= opts.goal else 'NOT met'}"
        )
    return 0 if ratio >= opts.goal else 1


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
