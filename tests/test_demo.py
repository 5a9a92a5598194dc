"""`cogvx-ext demo` and the rest of the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cogvx_ext import UsageError, __version__, demo

BIN = Path(sys.executable).parent
HERE = Path(__file__).parent


def cli(*args, **kwargs):
    return subprocess.run([str(BIN / "cogvx-ext"), *map(str, args)], capture_output=True, text=True, **kwargs)


@pytest.mark.slow
def test_demo_trains_mixed_aspects_and_says_where_the_lora_went(t2v_trainer, tmp_path):
    result = cli(
        "demo", "--trainer", t2v_trainer, "--output_dir", tmp_path / "demo", cwd=tmp_path, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lora = tmp_path / "demo" / "lora"
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    assert json.loads((lora / "cogvx_ext.json").read_text())["plugins"] == ["aspect_bucket", "rope_rescale"]
    out = result.stdout
    assert "96x160" in out and "160x96" in out  # portrait and landscape buckets
    assert f"LoRA: {lora / 'pytorch_lora_weights.safetensors'}" in out
    assert "trained 6 optimizer steps" in out


def test_demo_without_a_script_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(demo, "PINNED_URL", "http://127.0.0.1:9/train_cogvideox_lora.py")  # nothing listens
    with pytest.raises(UsageError) as info:
        demo.find_trainer(None)
    message = str(info.value)
    assert "pass --trainer PATH or set COGVX_EXT_TRAINER" in message and "git clone" in message


def test_demo_uses_a_cached_pinned_copy_only_if_its_hash_matches(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(demo, "PINNED_URL", "http://127.0.0.1:9/train_cogvideox_lora.py")
    cached = tmp_path / "cogvx-ext" / f"train_cogvideox_lora-{demo.PINNED_COMMIT[:12]}.py"
    cached.parent.mkdir(parents=True)
    cached.write_text("print('tampered')\n")
    with pytest.raises(UsageError):
        demo.find_trainer(None)


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
