"""``cogvx-ext demo``: the real training script, the built-in plugins, a tiny model, on CPU.

Builds a tiny random CogVideoX-5b (real positional settings) and six short clips of mixed
aspect ratios, trains a few steps with the unmodified diffusers script and ``--plugins``, and says
what happened. Everything goes to ``./cogvx-demo/`` (or ``--output_dir``); nothing is downloaded
except, when no script is given, a pinned copy of the script, checked against its sha256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cogvx_ext.errors import UsageError

# huggingface/diffusers main of 2026-08-23; the script's text is checked before it is used.
PINNED_COMMIT = "58eb52c0803ea9af3abec60841c2a093bdf1f951"
PINNED_SHA256 = "bb2c35429e5467cb95e60ab420f385be94a87c7e4f96aa08428df93b6480ac6f"
PINNED_URL = f"https://raw.githubusercontent.com/huggingface/diffusers/{PINNED_COMMIT}/examples/cogvideo/train_cogvideox_lora.py"

# (width, height, frames): 16:9 twice, 9:16, 4:3, 1:1 and 21:9, three seconds at 8 fps.
DEMO_CLIPS = [(256, 144, 25), (320, 176, 25), (144, 256, 25), (192, 144, 25), (160, 160, 25), (336, 144, 25)]
DEMO_PROMPTS = [
    "a wide landscape shot",
    "a wide city street",
    "a tall portrait shot",
    "a classic 4:3 scene",
    "a square social media clip",
    "a cinemascope panorama",
]


def find_trainer(trainer: str | None) -> Path:
    if trainer:
        path = Path(trainer).expanduser()
        if not path.is_file():
            raise UsageError(f"--trainer '{trainer}' does not exist")
        return path
    cached = (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "cogvx-ext"
        / f"train_cogvideox_lora-{PINNED_COMMIT[:12]}.py"
    )
    if cached.is_file() and hashlib.sha256(cached.read_bytes()).hexdigest() == PINNED_SHA256:
        return cached
    try:
        import urllib.request

        with urllib.request.urlopen(PINNED_URL, timeout=20) as response:
            text = response.read()
        if hashlib.sha256(text).hexdigest() != PINNED_SHA256:
            raise OSError("the downloaded file does not match the pinned sha256")
        from cogvx_ext.io import write_bytes_atomic

        write_bytes_atomic(cached, text)
        return cached
    except OSError as exc:
        raise UsageError(
            "no training script: pass --trainer PATH or set COGVX_EXT_TRAINER to diffusers' "
            "examples/cogvideo/train_cogvideox_lora.py (git clone --depth 1 https://github.com/huggingface/diffusers); "
            f"downloading the pinned copy failed: {exc}"
        ) from None


def run_demo(trainer: str | None, output_dir: str, plugins: str, steps: int) -> int:
    script = find_trainer(trainer)
    if (
        "import torchvision" in script.read_text(encoding="utf-8")
        and importlib.util.find_spec("torchvision") is None
    ):
        raise UsageError(
            f"{script.name} imports torchvision, which is not installed: pip install torchvision (the build that "
            "matches your torch)"
        )
    from cogvx_ext.testing import build_tiny_model, write_dataset

    out = Path(output_dir).resolve()
    started = time.perf_counter()
    print(f"cogvx-ext demo: building a tiny CogVideoX-5b and {len(DEMO_CLIPS)} clips in {out}", flush=True)
    model = build_tiny_model(out / "model", "5b")
    data = write_dataset(out / "data", DEMO_CLIPS, prompts=DEMO_PROMPTS)
    lora_dir = out / "lora"
    script_args = [
        "--pretrained_model_name_or_path", str(model), "--instance_data_root", str(data),
        "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--height", "96", "--width", "160", "--fps", "8", "--max_num_frames", "17",
        "--train_batch_size", "1", "--max_train_steps", str(steps), "--checkpointing_steps", str(max(1, steps // 2)),
        "--rank", "8", "--lora_alpha", "8", "--learning_rate", "1e-3", "--seed", "0",
        "--output_dir", str(lora_dir), "--plugins", plugins,
    ]  # fmt: skip
    command = [sys.executable, "-m", "cogvx_ext", str(script), *script_args]
    print("cogvx-ext demo: " + " ".join(command[1:4]) + " ... --plugins " + plugins, flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        print(f"cogvx-ext demo: the training script exited with status {result.returncode}", file=sys.stderr)
        return result.returncode
    _summarise(script_args, lora_dir, steps, time.perf_counter() - started)
    return 0


def _summarise(script_args: list[str], lora_dir: Path, steps: int, seconds: float) -> None:
    from cogvx_ext.dataset import plan_samples, read_listing
    from cogvx_ext.offline import script_data_parser, start_offline_run
    from cogvx_ext.plan import build_report, format_report

    # The same plan the run made, from the same flags (the plan skips the training-only ones).
    wanted = {"--pretrained_model_name_or_path", "--instance_data_root", "--caption_column", "--video_column",
              "--height", "--width", "--fps", "--max_num_frames", "--train_batch_size", "--seed", "--plugins"}  # fmt: skip
    plan_argv = [
        x for i in range(0, len(script_args), 2) if script_args[i] in wanted for x in script_args[i : i + 2]
    ]
    run = start_offline_run(
        script_data_parser("cogvx-ext demo", ""), plan_argv, default_plugins="aspect_bucket"
    )
    entries, skipped = read_listing(
        run.args.instance_data_root, run.args.caption_column, run.args.video_column
    )
    samples, more = plan_samples(run.hook, entries, run.args, run.model, progress=False)
    print("\ncogvx-ext demo: what happened")
    print(format_report(build_report(samples, skipped + more, run.args, run.model, run.hook)))
    weights = lora_dir / "pytorch_lora_weights.safetensors"
    meta_path = lora_dir / "cogvx_ext.json"
    print(f"trained {steps} optimizer steps in {seconds:.0f} s; checkpoints in {lora_dir}/checkpoint-*")
    print(f"LoRA: {weights} ({weights.stat().st_size // 1024} KiB)")
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        print(
            f"recorded for inference ({meta_path.name}): plugins {', '.join(meta['plugins'])}; "
            f"rope_mode {meta['settings'].get('rope_mode', '-')}"
        )
        print(
            "load it with: cogvx_ext.inference.prepare_pipeline(CogVideoXPipeline.from_pretrained(MODEL), LORA_DIR)"
        )
