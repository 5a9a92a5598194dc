"""Compatibility matrix: every release of diffusers' CogVideoX LoRA scripts, on the installed
diffusers and on the oldest one cogvx-ext claims, with one and two processes (issue 21).

The scripts' own git history (``git log`` on ``examples/cogvideo/train_cogvideox_lora.py`` and
``train_cogvideox_image_to_video_lora.py``, every release tag from v0.31.0 to main) has four
behaviourally different T2V versions and three I2V ones; between the tags of one family only the
copyright, ``check_min_version``, message texts and type hints change:

    T2V  v0.31.0 | v0.32.x | v0.33.0 - v0.36.0 | v0.37.0 - main (encoding split across processes)
    I2V  v0.31.0 | v0.32.x | v0.33.0 - main

One script per family (the family's first release; main for the last) is taken from a diffusers
git directory (``--git``, default the mirror below) or from ``--scripts DIR`` (one folder per
version label holding the two scripts, e.g. ``DIR/v0.31.0/train_cogvideox_lora.py``). Each is
run for 2 optimizer steps on a tiny random model (5b for T2V, 5b-I2V for I2V) and 3 clips in two
aspect buckets, offline (``HF_HUB_OFFLINE=1``: the scripts' final LoRA reload included), with
the built-in plugins (T2V: aspect_bucket, rope_rescale, latent_cache; I2V: plus posemb_adapt),
as one process and as two (``torchrun``, gloo on the CPU), under:

* the installed diffusers / transformers / accelerate / peft (this interpreter's);
* the floor: the oldest versions pyproject.toml claims (``FLOOR`` below), installed from PyPI
  with ``pip install --no-deps --target`` into a temporary folder that is put first on
  ``PYTHONPATH`` (torch, decord, ... still come from this interpreter);
* the floor's diffusers with the installed transformers (one run: it cannot import CogVideoX,
  and the cell shows the line that says what to install).

A cell is ``pass`` (trained, the LoRA file written, seconds), or the run's one ``cogvx-ext:``
line, or the last error line of its traceback. Not in CI (it needs the diffusers history and
PyPI); about 15 minutes on 2 loaded cores.

    python benchmarks/compat.py [--git DIR | --scripts DIR] [--skip_floor] [--processes 1,2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIRROR = "/work/.mirror/huggingface+diffusers/repo"
SCRIPTS = {"t2v": "train_cogvideox_lora.py", "i2v": "train_cogvideox_image_to_video_lora.py"}
# kind -> [(family, the git ref or --scripts folder that stands for it)]
FAMILIES = {
    "t2v": [("v0.31.0", "v0.31.0"), ("v0.32.x", "v0.32.2"), ("v0.33.0-v0.36.0", "v0.33.0"), ("v0.37.0-main", "main")],
    "i2v": [("v0.31.0", "v0.31.0"), ("v0.32.x", "v0.32.2"), ("v0.33.0-main", "main")],
}  # fmt: skip
PLUGINS = {"t2v": "aspect_bucket,rope_rescale,latent_cache", "i2v": "aspect_bucket,rope_rescale,posemb_adapt,latent_cache"}  # fmt: skip
MODEL = {"t2v": "5b", "i2v": "5b-I2V"}
# The oldest versions pyproject.toml claims; huggingface_hub and tokenizers as transformers 4.44 needs them.
FLOOR = [
    "diffusers==0.32.2",
    "transformers==4.44.2",
    "tokenizers==0.19.1",
    "huggingface_hub==0.36.2",
    "accelerate==1.0.1",
    "peft==0.12.0",
]
CLIPS = [(256, 144, 17), (144, 256, 17), (320, 176, 17)]  # 16:9, 9:16, 16:9: two buckets


def extract_scripts(args, into: Path) -> dict[tuple[str, str], Path]:
    """{(kind, family): script path} from the git directory or the --scripts folder."""
    found = {}
    for kind, families in FAMILIES.items():
        for family, ref in families:
            if args.scripts:
                path = Path(args.scripts) / ref / SCRIPTS[kind]
                if not path.is_file():
                    print(f"compat: no {path}; {kind} {family} left out", file=sys.stderr)
                    continue
            else:
                rev = "HEAD" if ref == "main" else ref
                text = subprocess.run(
                    ["git", "--git-dir", args.git, "show", f"{rev}:examples/cogvideo/{SCRIPTS[kind]}"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                path = into / ref / SCRIPTS[kind]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            found[(kind, family)] = path
    return found


def install_floor(target: Path, packages: list[str]) -> None:
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *packages]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def models_for_transformers_4(models: dict[str, Path], into: Path) -> dict[str, Path]:
    """Copies of the tiny models that transformers 4 reads: the tokenizer files written by
    transformers 5 name the fast T5 tokenizer differently and list extra special tokens."""
    adapted = {}
    for kind, folder in models.items():
        copy = into / folder.name
        shutil.copytree(folder, copy)
        config_path = copy / "tokenizer" / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["extra_special_tokens"] = {}
        config["tokenizer_class"] = "T5TokenizerFast"
        config_path.write_text(json.dumps(config, indent=2))
        index_path = copy / "model_index.json"
        index = json.loads(index_path.read_text())
        index["tokenizer"] = ["transformers", "T5TokenizerFast"]
        index_path.write_text(json.dumps(index, indent=2))
        adapted[kind] = copy
    return adapted


def versions(pythonpath: str | None) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
        "('diffusers', 'transformers', 'accelerate', 'peft', 'torch')}))"
    )
    env = {**os.environ, "COGVX_EXT_DISABLE": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def train(
    script: Path, kind: str, model: Path, data: Path, work: Path, processes: int, pythonpath: str | None
):
    """One run; returns (result, seconds)."""
    out = work / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    if processes > 1:
        env["ACCELERATE_USE_CPU"] = "1"
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
        ]
    else:
        launcher = [sys.executable]
    command = [
        *launcher, str(script), "--pretrained_model_name_or_path", str(model), "--instance_data_root", str(data),
        "--caption_column", "prompts.txt", "--video_column", "videos.txt", "--height", "96", "--width", "160",
        "--max_num_frames", "9", "--fps", "8", "--train_batch_size", "1", "--max_train_steps", "2",
        "--rank", "4", "--lora_alpha", "4", "--learning_rate", "1e-3", "--seed", "0", "--output_dir", str(out),
        "--plugins", PLUGINS[kind], "--latent_cache_dir", str(work / "cache"),
    ]  # fmt: skip
    started = time.perf_counter()
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return "timed out after 900 s", 900.0
    seconds = time.perf_counter() - started
    (work / "log.txt").write_text(result.stdout + result.stderr, encoding="utf-8")
    if result.returncode == 0 and (out / "pytorch_lora_weights.safetensors").is_file():
        return f"pass ({seconds:.0f} s)", seconds
    return describe_failure(result), seconds


def describe_failure(result) -> str:
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("cogvx-ext: ") and "%|" not in line]
    if ours:
        return f"stops (exit {result.returncode}): {ours[-1]}"
    errors = [
        line.split("]: ", 1)[-1]
        for line in lines
        if ("Error" in line or "Exception" in line) and not line.startswith(("File ", "torch.distributed"))
    ]
    return f"fails (exit {result.returncode}): {errors[-1] if errors else lines[-1] if lines else '?'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--git", default=MIRROR, help=f"a diffusers git directory (default {MIRROR})")
    parser.add_argument("--scripts", help="a folder of script versions instead: DIR/<ref>/<script>")
    parser.add_argument("--processes", default="1,2", help="process counts (default 1,2)")
    parser.add_argument("--skip_floor", action="store_true", help="the installed versions only")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs of every run)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--render", metavar="JSON", help="only print the tables of a --json run's rows")
    args = parser.parse_args()
    if args.render:
        rows = json.loads(Path(args.render).read_text())
        print(markdown(rows, sorted({r["processes"] for r in rows})))
        return 0

    from cogvx_ext.testing import build_tiny_model, write_dataset

    work = Path(tempfile.mkdtemp(prefix="cogvx-compat-"))
    rows = []
    try:
        scripts = extract_scripts(args, work / "scripts")
        models = {kind: build_tiny_model(work / "models", MODEL[kind]) for kind in SCRIPTS}
        data = write_dataset(work / "data", CLIPS, prompts=[f"clip {i}" for i in range(len(CLIPS))])
        environments = [("installed", None, models, list(scripts))]
        if not args.skip_floor:
            floor = work / "floor"
            install_floor(floor, FLOOR)
            old_models = models_for_transformers_4(models, work / "models-transformers4")
            environments.append(("floor", str(floor), old_models, list(scripts)))
            # The floor's diffusers beside the installed transformers: the import that fails.
            diffusers_only = work / "floor-diffusers"
            diffusers_only.mkdir()
            for entry in floor.iterdir():
                if entry.name.startswith("diffusers"):
                    (diffusers_only / entry.name).symlink_to(entry)
            environments.append(("floor diffusers", str(diffusers_only), models, [("t2v", "v0.31.0")]))
        counts = [int(n) for n in args.processes.split(",")]
        for name, pythonpath, env_models, keys in environments:
            found = versions(pythonpath)
            label = f"diffusers {found['diffusers']}, transformers {found['transformers']}, accelerate {found['accelerate']}, peft {found['peft']}"  # fmt: skip
            for kind, family in keys:
                for processes in counts if name != "floor diffusers" else [1]:
                    run_dir = work / "runs" / f"{name}-{kind}-{family}-{processes}".replace(" ", "_")
                    run_dir.mkdir(parents=True)
                    result, seconds = train(
                        scripts[(kind, family)], kind, env_models[kind], data, run_dir, processes, pythonpath
                    )
                    row = {"environment": name, "versions": label, "script": kind.upper(), "family": family,
                           "processes": processes, "result": result, "seconds": round(seconds, 1)}  # fmt: skip
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        if args.keep:
            print(f"compat: runs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(markdown(rows, counts))
    return 0 if all(r["result"].startswith(("pass", "stops")) for r in rows) else 1


def markdown(rows, counts) -> str:
    """One table per set of versions; a run that stopped at start is a numbered note under it
    (its one line; under torchrun each rank exits 2 and torchrun itself 1)."""
    out, notes = [], {}
    for label in dict.fromkeys(r["versions"] for r in rows):
        out.append(f"\n{label}:\n")
        out.append(
            "| script | version | " + " | ".join(f"{n} process{'es' if n > 1 else ''}" for n in counts) + " |"
        )
        out.append("|---|---|" + "---|" * len(counts))
        cells: dict[tuple[str, str], dict[int, str]] = {}
        for r in rows:
            if r["versions"] != label:
                continue
            text = r["result"]
            if text.startswith("stops"):
                line = text.split(": ", 1)[1]
                text = f"stops at start [{notes.setdefault(line, len(notes) + 1)}]"
            cells.setdefault((r["script"], r["family"]), {})[r["processes"]] = text
        for (script, family), by_count in cells.items():
            out.append(f"| {script} | {family} | " + " | ".join(by_count.get(n, "-") for n in counts) + " |")
    out.append("")
    out.extend(f"[{n}] `{line}`  " for line, n in notes.items())
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
