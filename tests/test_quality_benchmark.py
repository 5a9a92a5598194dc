"""benchmarks/quality: the experiment's code path on its smallest setting, and its measuring parts.

The benchmark lives in the repository, not in the package; these tests run it from the checkout
next to them (skipped where it is absent, e.g. a test run from an unpacked wheel's tests only).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "quality"
pytestmark = pytest.mark.skipif(not (BENCHMARK / "run.py").is_file(), reason="no benchmarks/quality here")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"quality_{name}", BENCHMARK / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quality():
    return _load("run")


def test_smoke_run_writes_every_arm_seed_and_aspect(tmp_path, quality):
    """Data, model, four trainings per seed through the trainer, evaluation, results.json and the
    plot: one optimizer step each, so it measures nothing but keeps the whole path working; a
    rerun with the same --out reuses every (seed, arm)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    out = tmp_path / "quality"
    command = [sys.executable, str(BENCHMARK / "run.py"), "--out", str(out), "--preset", "smoke",
               "--threads", "1", "--arms", "a,b,c,d", "--seeds", "0,1"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and set(results["per_seed"]) == {"0", "1"}
    for summary in (results, *results["per_seed"].values()):
        assert set(summary["arms"]) == {"untrained", "a", "b", "c", "d"}
        for arm, per_aspect in summary["arms"].items():
            assert set(per_aspect) == {"16:9", "9:16", "4:3", "1:1"}, arm
            for aspect, entry in per_aspect.items():
                for key in ("loss", "edge_loss", "own_loss"):
                    low, high = entry[f"{key}_ci95"]
                    assert math.isfinite(entry[key]) and low <= entry[key] <= high, (arm, aspect, key)
        assert set(summary["paired"]) == {"b-a", "c-a", "b-c", "d-b", "d-a"}
        assert "loss_ci95" in summary["paired"]["d-b"]["9:16"]
        assert set(summary["sampling"]["d"]) == set(quality.SAMPLE_SIZES)
    # Each trained arm's LoRA reached the evaluated transformer: its losses differ from the untrained model's.
    for arm in ("a", "b", "c", "d"):
        assert results["arms"][arm]["16:9"]["loss"] != results["arms"]["untrained"]["16:9"]["loss"], arm
    # Arm d is scored under its own schedule too (the shift of each clip's size), the others not.
    assert results["arms"]["d"]["1:1"]["own_loss"] != results["arms"]["d"]["1:1"]["loss"]
    assert results["arms"]["b"]["1:1"]["own_loss"] == results["arms"]["b"]["1:1"]["loss"]
    assert results["sampling"]["d"]["160x160"]["snr_shift"] == pytest.approx(300 / 450)
    # Arm a ran the stock data path (no plugins); b, c and d trained at the buckets, d with the shift.
    arms = out / "seed0" / "arms"
    assert "--plugins" not in (arms / "a" / "train.log").read_text().splitlines()[0]
    assert (arms / "b" / "cogvx_ext.json").is_file()
    assert json.loads((arms / "d" / "cogvx_ext.json").read_text())["settings"]["snr_shifts"]
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A rerun trains and evaluates nothing again.
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "): training" not in again.stdout, again.stdout[-3000:]
    assert again.stdout.count("reused") == 10
    assert json.loads((out / "results.json").read_text())["arms"] == results["arms"]


@pytest.mark.parametrize(
    ("aspect", "cut_rows", "cut_columns"),
    [
        # 256x144 covers 240x160 at scale 10/9: 216 of 256 columns kept, 20 px (2.5 latent columns) cut each side
        ("16:9", 0, 2),
        # 144x256 at scale 5/3: 96 of 256 rows kept, 80 px (10 latent rows) cut at top and bottom
        ("9:16", 10, 0),
        # 192x144 at scale 5/4: 128 of 144 rows kept, 8 px (1 latent row) each side
        ("4:3", 1, 0),
        # 160x160 at scale 3/2: 106.7 of 160 rows kept, 26.7 px (3.3 latent rows) each side
        ("1:1", 3, 0),
    ],
)
def test_edge_region_is_what_the_stock_crop_cuts(quality, aspect, cut_rows, cut_columns):
    width, height = quality.ASPECTS[aspect]
    mask = quality.edge_mask(width, height, height // 8, width // 8)
    expected = torch.zeros(height // 8, width // 8, dtype=torch.bool)
    if cut_rows:
        expected[:cut_rows] = expected[-cut_rows:] = True
    if cut_columns:
        expected[:, :cut_columns] = expected[:, -cut_columns:] = True
    assert torch.equal(mask, expected)


def test_arm_c_rope_is_the_stock_grid_stretched_not_the_pipeline(tiny_models):
    """Arm c's positions equal the pipeline's at the stock size, and differ at other aspects
    (most for portrait): the difference the arm measures."""
    from cogvx_ext.model import rope
    from cogvx_ext.model.facts import ModelInfo

    stock_rope = _load("stock_rope")
    model = ModelInfo.from_pretrained(str(tiny_models["5b"]))
    stock = (160, 240)  # --height, --width
    same = stock_rope.stretched_stock_rope(model, stock, (3, 20, 30), "cpu")
    pipeline = rope.rotary_embedding(model, (3, 20, 30), "cpu")
    assert torch.allclose(same[0], pipeline[0]) and torch.allclose(same[1], pipeline[1])
    portrait = stock_rope.stretched_stock_rope(model, stock, (3, 32, 18), "cpu")
    assert not torch.allclose(portrait[0], rope.rotary_embedding(model, (3, 32, 18), "cpu")[0], atol=1e-3)


def test_timestep_grid_and_interval(quality):
    import numpy as np

    assert quality.timestep_grid(4, 1000) == [125, 375, 625, 875]
    values = np.array([1.0, 2.0, 3.0, 4.0])
    low, high = quality.bootstrap_interval(values, np.random.default_rng(0))
    assert 1.0 <= low < values.mean() < high <= 4.0
