"""`cogvx-ext demo` and the rest of the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cogvx_ext import UsageError, __version__
from cogvx_ext.cli import demo
from cogvx_ext.trainers import minimal_trainer

BIN = Path(sys.executable).parent
HERE = Path(__file__).parent


def cli(*args, **kwargs):
    return subprocess.run([str(BIN / "cogvx-ext"), *map(str, args)], capture_output=True, text=True, **kwargs)


def check_demo_output(result, lora, first_line):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    assert json.loads((lora / "cogvx_ext.json").read_text())["plugins"] == ["aspect_bucket", "rope_rescale"]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"cogvx-ext demo: training with {first_line}"), lines[0]
    # The full command, ready to copy: it names the script, the data and every flag.
    (command,) = [line for line in lines if line.startswith("cogvx-ext demo: HF_HUB_OFFLINE=1 ")]
    assert "..." not in command and "--plugins aspect_bucket,rope_rescale" in command
    assert "--instance_data_root" in command and "--output_dir" in command
    # Our lines and the progress bars; the libraries' load messages stay in the log.
    log = lora.parent / "train.log"
    assert log.is_file() and log.stat().st_size > 0
    head = lines[: lines.index("cogvx-ext demo: what happened")]
    assert all(line.startswith(("cogvx-ext", "Steps", "Encoding videos")) or not line for line in head), head
    assert any(line.startswith("Steps") and "6/6" in line for line in head), head
    out = result.stdout
    assert "160x96" in out and "96x160" in out  # landscape and portrait buckets
    assert f"LoRA: {lora / 'pytorch_lora_weights.safetensors'}" in out
    assert "trained 6 optimizer steps" in out


@pytest.mark.slow
def test_demo_trains_mixed_aspects_and_says_where_the_lora_went(t2v_trainer, tmp_path):
    result = cli(
        "demo", "--trainer", t2v_trainer, "--output_dir", tmp_path / "demo", cwd=tmp_path, timeout=600
    )
    check_demo_output(result, tmp_path / "demo" / "lora", f"the training script you gave, {t2v_trainer}")


@pytest.mark.slow
def test_demo_with_no_flags_runs_offline_with_the_shipped_trainer(tmp_path):
    # A fresh machine: no script given, nothing cached, no network (nothing listens there).
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), COGVX_EXT_DEMO_SCRIPT_URL=UNREACHABLE)
    result = cli("demo", cwd=tmp_path, timeout=600, env=env)
    check_demo_output(result, tmp_path / "cogvx-demo" / "lora", "cogvx-ext's minimal trainer")


UNREACHABLE = "http://127.0.0.1:9/train_cogvideox_lora.py"  # the discard port: nothing listens


def test_demo_without_a_script_falls_back_to_the_shipped_trainer(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("COGVX_EXT_DEMO_SCRIPT_URL", UNREACHABLE)
    choice = demo.find_trainer(None)
    assert choice.path == minimal_trainer("t2v")
    assert "pass --trainer PATH or set COGVX_EXT_TRAINER" in choice.why or "torchvision" in choice.why


def test_demo_uses_a_cached_pinned_copy_only_if_its_hash_matches(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("COGVX_EXT_DEMO_SCRIPT_URL", UNREACHABLE)
    cached = tmp_path / "cogvx-ext" / f"train_cogvideox_lora-{demo.PINNED_COMMIT[:12]}.py"
    cached.parent.mkdir(parents=True)
    cached.write_text("print('tampered')\n")
    assert demo.find_trainer(None).path == minimal_trainer("t2v")


def test_demo_names_a_missing_trainer():
    with pytest.raises(UsageError, match="--trainer 'no/such/script.py' does not exist"):
        demo.find_trainer("no/such/script.py")


def test_version_and_plugins_listing():
    assert cli("--version").stdout.strip() == f"cogvx-ext {__version__}"
    listing = cli("plugins").stdout
    for name, hook in [("aspect_bucket", "cogvx_clip_targets"), ("rope_rescale", "cogvx_rotary_embedding"),
                       ("posemb_adapt", "cogvx_pipeline_loaded")]:  # fmt: skip
        assert name in listing and hook in listing
    rows = json.loads(cli("plugins", "--json").stdout)
    assert {r["name"] for r in rows} >= {"aspect_bucket", "rope_rescale", "posemb_adapt"}
    assert all(r["version"] == __version__ for r in rows if r["name"] in ("aspect_bucket", "rope_rescale"))


def test_plan_prints_the_table_and_writes_json(tmp_path):
    from cogvx_ext.testing import write_bad_clips, write_dataset

    data = write_dataset(tmp_path / "data", [(256, 144, 25), (144, 256, 25), (192, 144, 25)])
    bad = write_bad_clips(data / "bad")
    with open(data / "videos.txt", "a") as v, open(data / "prompts.txt", "a") as p:
        v.write(f"{bad['truncated'].relative_to(data)}\n")
        p.write("broken\n")
    flags = ["--instance_data_root", data, "--caption_column", "prompts.txt", "--video_column", "videos.txt",
             "--height", 96, "--width", 160, "--max_num_frames", 17, "--train_batch_size", 1]  # fmt: skip
    result = cli("plan", *flags, "--json", tmp_path / "plan.json")
    assert result.returncode == 0, result.stderr
    assert "tokens/sample" in result.stdout and "96x160" in result.stdout
    assert f"{bad['truncated']}: not a video file, or corrupt or truncated" in result.stdout
    plan = json.loads((tmp_path / "plan.json").read_text())
    statuses = {Path(c["path"]).name: c["status"] for c in plan["clips"]}
    assert statuses["truncated.mp4"] == "skipped" and list(statuses.values()).count("ok") == 3
    for clip in plan["clips"]:
        assert {"path", "status", "width", "height", "frames", "crop"} <= set(clip)
    strict = cli("plan", *flags, "--bucket_strict")
    assert strict.returncode == 2 and strict.stderr.startswith("cogvx-ext: --bucket_strict: 1 clip(s)")
    bad_flag = cli("plan", *flags, "--bucket_max_aspect", "0.5")
    assert bad_flag.returncode == 2 and len(bad_flag.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_demo_with_an_i2v_script_trains_a_tiny_5b_i2v(i2v_trainer, tmp_path):
    # An image-to-video --trainer alone chooses the I2V demo (it built a T2V model for it before).
    result = cli(
        "demo", "--trainer", i2v_trainer, "--steps", 2, "--output_dir", tmp_path / "demo", cwd=tmp_path, timeout=600
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == f"cogvx-ext demo: training with the training script you gave, {i2v_trainer}"
    assert lines[1].startswith("cogvx-ext demo: building a tiny CogVideoX-5b-I2V and 6 clips")
    lora = tmp_path / "demo" / "lora"
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    meta = json.loads((lora / "cogvx_ext.json").read_text())
    assert meta["plugins"] == ["aspect_bucket", "rope_rescale", "posemb_adapt"] and meta["model"] == "5b-I2V"
    assert "96x160" in result.stdout and "160x96" in result.stdout  # portrait and landscape buckets
    assert "CogVideoXImageToVideoPipeline.from_pretrained(MODEL)" in result.stdout


def test_demo_i2v_picks_the_i2v_trainer_and_refuses_a_t2v_one():
    choice = demo.find_trainer(None, i2v=True)
    assert (choice.path, choice.kind) == (minimal_trainer("i2v"), "i2v")
    result = cli("demo", "--i2v", "--trainer", minimal_trainer("t2v"), timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "cogvx-ext: --i2v needs an image-to-video script (diffusers' train_cogvideox_image_to_video_lora.py); "
        "tiny_t2v_trainer.py is a text-to-video one: pass the I2V script with --trainer, or leave --i2v out"
    ]
