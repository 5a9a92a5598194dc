"""The sampler report protocol: what the plan table, the compile bound and the memory log know of
a run's batches, whoever made the sampler (tests/plugins/pair_sampler.py is a third party's)."""

from __future__ import annotations

import json

import pytest
from tests_support import HERE

from cogvx_ext.api import LatentShape, SamplerReport, ShapeRow
from cogvx_ext.cli.plan.command import run_plan
from cogvx_ext.data.clips import Clip, Sample, Target, VideoInfo
from cogvx_ext.data.sampling import sampler_report
from cogvx_ext.model.facts import released_model
from cogvx_ext.testing import write_dataset

PAIRS = f"{HERE / 'plugins' / 'pair_sampler.py'}:PairSampler"
MODEL = released_model("5b")
# Three samples at 160x96 and one at 96x160, 9 frames: the sampler pairs the three (2 + 1) and
# leaves the fourth alone.
CLIPS = [(160, 96, 9)] * 3 + [(96, 160, 9)]
# Training and the plan: four clips of the run's size, two pairs.
RUN_CLIPS = [(160, 96, 9)] * 4


def sample(width: int, height: int) -> Sample:
    info = VideoInfo(width=width, height=height, num_frames=9, fps=8.0)
    clip = Clip(index=0, path=f"{width}x{height}.mp4", prompt="", info=info)
    return Sample(
        clip, Target(height=height, width=width, frame_indices=tuple(range(9)), crop=(0, 0, height, width))
    )


SAMPLES = [sample(w, h) for w, h, _ in CLIPS]
LANDSCAPE, PORTRAIT = LatentShape(3, 12, 20), LatentShape(3, 20, 12)


def test_the_base_sampler_describes_any_subclass_by_its_batches(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE / "plugins"))
    from pair_sampler import PairBatches

    keys = [tuple(MODEL.latent_shape(9, s.target.height, s.target.width)) for s in SAMPLES]
    report = PairBatches(keys, num_replicas=1).describe(SAMPLES, MODEL)
    assert report == SamplerReport((ShapeRow(LANDSCAPE, 3, 2, 2), ShapeRow(PORTRAIT, 1, 1, 1)))
    assert str(LANDSCAPE) == "20x12x3"  # WIDTHxHEIGHTxFRAMES, in latent units


def test_samplers_that_do_not_derive_from_the_base():
    listed = sampler_report([[0, 1], [2], [3]], SAMPLES, MODEL, batch_size=4)
    assert listed.rows == (ShapeRow(LANDSCAPE, 3, 2, 2), ShapeRow(PORTRAIT, 1, 1, 1)) and listed.described
    stock = sampler_report(None, SAMPLES, MODEL, batch_size=2)  # the script's own DataLoader
    assert stock.rows == (ShapeRow(LANDSCAPE, 3, 2, 2), ShapeRow(PORTRAIT, 1, 2, 1)) and stock.described
    opaque = sampler_report(iter([[0, 1]]), SAMPLES, MODEL, batch_size=2)  # cannot be looked into
    assert opaque.rows == stock.rows and not opaque.described


def test_the_plan_shows_a_third_party_samplers_batches_and_budget(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", RUN_CLIPS, prompts=list("abcd"))
    code = run_plan([
        "--instance_data_root", str(data), "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--model", "5b", "--height", "96", "--width", "160", "--max_num_frames", "9", "--train_batch_size", "1",
        "--plugins", f"rope_rescale,{PAIRS}", "--pair_sampler_budget", "24GiB", "--json", str(tmp_path / "plan.json"),
    ])  # fmt: skip
    assert code == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    rows = {
        (b["width"], b["height"]): (b["clips"], b["batch_size"], b["batches_per_epoch"])
        for b in plan["buckets"]
    }
    assert rows == {(160, 96): (4, 2, 2)}  # not batches of --train_batch_size 1
    assert plan["summary"]["batches_per_epoch"] == 2
    assert plan["summary"]["memory"] == {"budget_bytes": 24 * 2**30, "margin": 0.1}
    assert "sampler_note" not in plan["summary"]


@pytest.mark.slow
def test_the_memory_log_sizes_a_third_party_samplers_largest_batch(tiny_models, t2v_trainer, train, tmp_path):
    data = write_dataset(tmp_path / "data", RUN_CLIPS, prompts=list("abcd"))
    args = [
        "--pretrained_model_name_or_path", tiny_models["5b"], "--instance_data_root", data,
        "--caption_column", "prompts.txt", "--video_column", "videos.txt", "--height", 96, "--width", 160,
        "--max_num_frames", 9, "--fps", 8, "--train_batch_size", 1, "--max_train_steps", 1,
        "--output_dir", tmp_path / "out", "--rank", 4, "--lora_alpha", 4, "--plugins", f"rope_rescale,{PAIRS}",
    ]  # fmt: skip
    result = train(t2v_trainer, args)
    assert result.returncode == 0, result.stderr[-4000:]
    # The pairs' shape, at the sampler's batch of 2 (the script's --train_batch_size is 1).
    assert "(largest batch: latent 20x12x3 (WIDTHxHEIGHTxFRAMES) x 2;" in result.stderr, result.stderr[-4000:]
