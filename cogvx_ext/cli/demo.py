"""``cogvx-ext demo``: the real training script, the built-in plugins, a tiny model, on CPU.

Builds a tiny random CogVideoX-5b (real positional settings) and six short clips of mixed
aspect ratios, trains a few steps with a training script and ``--plugins``, and says what
happened. The script is the one given (``--trainer`` / ``COGVX_EXT_TRAINER``), else the pinned
diffusers script (downloaded once and checked against its sha256) when the network answers and
torchvision loads, else the minimal trainer shipped in this package (the diffusers script's
seams, no torchvision): the demo runs offline. The first line says which. Everything goes to
``./cogvx-demo/`` (or ``--output_dir``), the script's full output to ``train.log`` there.

Image to video (``--i2v``, or a ``--trainer`` that is diffusers' I2V script): a tiny
CogVideoX-5b-I2V, whose learned positional embedding also needs ``posemb_adapt`` at other sizes;
the script is the one given (``--trainer`` / ``COGVX_EXT_I2V_TRAINER``), else the minimal I2V
trainer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cogvx_ext.base.errors import UsageError

# huggingface/diffusers main of 2026-08-23; the script's text is checked before it is used.
PINNED_COMMIT = "58eb52c0803ea9af3abec60841c2a093bdf1f951"
PINNED_SHA256 = "bb2c35429e5467cb95e60ab420f385be94a87c7e4f96aa08428df93b6480ac6f"
PINNED_URL = f"https://raw.githubusercontent.com/huggingface/diffusers/{PINNED_COMMIT}/examples/cogvideo/train_cogvideox_lora.py"

TORCHVISION_HINT = (
    "pip install torch==2.14.1 torchvision==0.29.1 (or another pair released together; the README's set-up "
    "installs it)"
)
# The progress bars shown on the console: the scripts' and ours.
# tqdm draws "NAME: 50%|#####     | 3/6 [00:01<00:01, 2.9it/s, loss=0.87]".
PROGRESS_BAR = re.compile(r"(?P<name>[^|]+?): +\d+%\|[^|]*\| *(?P<count>\d+)/(?P<total>\d+) \[[^\]]*\]")
PROGRESS_BARS = {"Steps", "Encoding videos", "Loading videos", "Loading progress resize and crop videos"}

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


DEFAULT_PLUGINS = {"t2v": "aspect_bucket,rope_rescale", "i2v": "aspect_bucket,rope_rescale,posemb_adapt"}
MODEL_KIND = {"t2v": "5b", "i2v": "5b-I2V"}
I2V_SCRIPT = "train_cogvideox_image_to_video_lora.py"


@dataclass(frozen=True)
class TrainerChoice:
    path: Path
    why: str  # for the demo's first line
    kind: str = "t2v"


def script_kind(path: Path) -> str:
    """``i2v`` for an image-to-video training script (it names the I2V pipeline), else ``t2v``."""
    from cogvx_ext.script.seams.kinds import I2V_PIPELINE

    return "i2v" if I2V_PIPELINE in path.read_text(encoding="utf-8", errors="replace") else "t2v"


def find_trainer(trainer: str | None, i2v: bool = False) -> TrainerChoice:
    """The script to train with: the one given, else the pinned diffusers script (cached or
    downloaded, sha256-checked), else the minimal trainer shipped in this package. Image to video:
    ``i2v``, or a given script that is an I2V one; the minimal I2V trainer when none is given."""
    from cogvx_ext.trainers import minimal_trainer

    if trainer:
        path = Path(trainer).expanduser()
        if not path.is_file():
            raise UsageError(f"--trainer '{trainer}' does not exist")
        kind = script_kind(path)
        if i2v and kind != "i2v":
            raise UsageError(
                f"--i2v needs an image-to-video script (diffusers' {I2V_SCRIPT}); {path.name} is a "
                "text-to-video one: pass the I2V script with --trainer, or leave --i2v out"
            )
        problem = torchvision_problem(path)
        if problem:
            raise UsageError(f"{path.name} imports torchvision, which {problem}")
        return TrainerChoice(path, f"the training script you gave, {path}", kind)
    if i2v:
        return TrainerChoice(
            minimal_trainer("i2v"),
            f"cogvx-ext's minimal image-to-video trainer, with the seams of diffusers' {I2V_SCRIPT} (pass "
            "--trainer PATH or set COGVX_EXT_I2V_TRAINER for the diffusers script)",
            "i2v",
        )

    shipped = minimal_trainer("t2v")
    problem = torchvision_problem(None)
    if problem:
        return TrainerChoice(
            shipped,
            f"cogvx-ext's minimal trainer (diffusers' train_cogvideox_lora.py needs torchvision, which {problem})",
        )
    try:
        pinned = _pinned_script()
    except OSError as exc:
        return TrainerChoice(
            shipped,
            f"cogvx-ext's minimal trainer, with the diffusers script's seams (no diffusers script: pass "
            f"--trainer PATH or set COGVX_EXT_TRAINER; the pinned download failed: {exc})",
        )
    return TrainerChoice(
        pinned, f"diffusers' train_cogvideox_lora.py at {PINNED_COMMIT[:12]} (sha256 checked), {pinned}"
    )


def torchvision_problem(script: Path | None) -> str | None:
    """Why the script cannot import torchvision here, or None. ``None`` script: the pinned one."""
    if script is not None and "torchvision" not in script.read_text(encoding="utf-8"):
        return None
    if importlib.util.find_spec("torchvision") is None:
        return f"is not installed: {TORCHVISION_HINT}"
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # a torchvision built for another torch fails here, not at install time
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"does not load with this torch ({detail}): {TORCHVISION_HINT}"
    return None


def _pinned_script() -> Path:
    cached = (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "cogvx-ext"
        / f"train_cogvideox_lora-{PINNED_COMMIT[:12]}.py"
    )
    if cached.is_file() and hashlib.sha256(cached.read_bytes()).hexdigest() == PINNED_SHA256:
        return cached
    import urllib.request

    # COGVX_EXT_DEMO_SCRIPT_URL: a mirror of the same file (its sha256 is still checked).
    url = os.environ.get("COGVX_EXT_DEMO_SCRIPT_URL") or PINNED_URL
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read()
    if hashlib.sha256(text).hexdigest() != PINNED_SHA256:
        raise OSError("the downloaded file does not match the pinned sha256")
    from cogvx_ext.base.io import write_bytes_atomic

    write_bytes_atomic(cached, text)
    return cached


def run_demo(trainer: str | None, output_dir: str, plugins: str | None, steps: int, i2v: bool = False) -> int:
    choice = find_trainer(trainer, i2v)
    plugins = plugins or DEFAULT_PLUGINS[choice.kind]
    print(f"cogvx-ext demo: training with {choice.why}", flush=True)
    import_chatter = _quiet_libraries()
    from cogvx_ext.data.synthetic import write_dataset
    from cogvx_ext.model.tiny import build_tiny_model

    out = Path(output_dir).resolve()
    started = time.perf_counter()
    model_kind = MODEL_KIND[choice.kind]
    print(
        f"cogvx-ext demo: building a tiny CogVideoX-{model_kind} and {len(DEMO_CLIPS)} clips in {out}",
        flush=True,
    )
    model = build_tiny_model(out / "model", model_kind)
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
    command = [sys.executable, "-m", "cogvx_ext", str(choice.path), *script_args]
    log_path = out / "train.log"
    print(f"cogvx-ext demo: HF_HUB_OFFLINE=1 {shlex.join(command)}", flush=True)
    print(f"cogvx-ext demo: the script's full output goes to {log_path}", flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    status = _run_quietly(command, env, log_path, preamble=import_chatter)
    if status != 0:
        print(
            f"cogvx-ext demo: the training script exited with status {status}; the end of {log_path}:",
            file=sys.stderr,
        )
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
        print("\n".join(tail), file=sys.stderr)
        return status
    _summarise(script_args, lora_dir, steps, time.perf_counter() - started, choice.kind)
    return 0


def _run_quietly(command: list[str], env: dict[str, str], log_path: Path, preamble: str = "") -> int:
    """Run the training; everything it prints goes to ``log_path``, the console sees our lines
    and the progress bars (library load messages and warnings stay in the log)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    live = sys.stdout.isatty()
    shown: set[tuple[str, str]] = set()  # (bar, n/total) already printed, when not live
    with open(log_path, "wb") as log:
        log.write(preamble.encode("utf-8"))
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        pending = b""
        bar_open = False
        while chunk := process.stdout.read1(65536):
            log.write(chunk)
            pending += chunk
            *segments, pending = re.split(rb"[\r\n]", pending)
            for raw in segments:
                segment = raw.decode("utf-8", errors="replace").rstrip()
                bar = PROGRESS_BAR.match(segment)
                if bar and (bar.group("name") in PROGRESS_BARS or bar.group("name").startswith("cogvx-ext")):
                    # A log line may follow the bar's last draw on the same line: show the bar only.
                    if live:
                        sys.stdout.write("\r" + bar.group(0)[: shutil.get_terminal_size().columns - 1])
                        bar_open = True
                    elif (
                        bar.group("count") == bar.group("total")
                        and (bar.group("name"), bar.group("total")) not in shown
                    ):
                        shown.add((bar.group("name"), bar.group("total")))
                        sys.stdout.write(bar.group(0) + "\n")
                elif segment.startswith("cogvx-ext"):
                    sys.stdout.write(("\n" if bar_open else "") + segment + "\n")
                    bar_open = False
                sys.stdout.flush()
        if bar_open:
            sys.stdout.write("\n")
        return process.wait()


def _quiet_libraries() -> str:
    """No load messages or progress bars from building the tiny model in this process; returns
    what the imports printed, for the log (deepspeed, when installed, is imported by the
    libraries and announces on stdout which accelerator it found)."""
    import contextlib
    import io

    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        import diffusers
        import transformers

        if importlib.util.find_spec("deepspeed") is not None:
            # Imported later by the libraries anyway; its logger writes to the stdout of that moment.
            import deepspeed  # noqa: F401

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
    return chatter.getvalue()


def _summarise(script_args: list[str], lora_dir: Path, steps: int, seconds: float, kind: str) -> None:
    from cogvx_ext.cli.plan.report import build_report
    from cogvx_ext.cli.plan.text import format_report
    from cogvx_ext.data.planning import plan_samples
    from cogvx_ext.script.data_formats import read_listing
    from cogvx_ext.script.offline import script_data_parser, start_offline_run

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
    samples, more = plan_samples(run.hook, entries, run.context, progress=False)
    print("\ncogvx-ext demo: what happened")
    print(format_report(build_report(samples, skipped + more, run.context, run.hook)))
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
        from cogvx_ext.script.seams.kinds import I2V_PIPELINE, T2V_PIPELINE

        pipeline = I2V_PIPELINE if kind == "i2v" else T2V_PIPELINE
        print(
            f"load it with: cogvx_ext.inference.prepare_pipeline({pipeline}.from_pretrained(MODEL), LORA_DIR)"
        )
