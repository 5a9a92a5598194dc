"""Compatibility with the diffusers scripts' releases: fewer clips than processes, the seams' shapes,
the floors of diffusers and transformers (README, "Script versions"; benchmarks/compat.py runs the
whole matrix against the real scripts)."""

from __future__ import annotations

import pytest
from test_e2e import RECORDER, by_event, mixed_dataset, ok, script_args, training_shapes
from tests_support import read_events


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, plugins",
    [
        ("5b", "aspect_bucket,rope_rescale"),
        ("5b", "aspect_bucket,rope_rescale,latent_cache"),
        ("5b-I2V", "aspect_bucket,rope_rescale,posemb_adapt,latent_cache"),
    ],
)
def test_one_clip_trains_on_two_processes(
    tiny_models, t2v_trainer, i2v_trainer, train, tmp_path, kind, plugins
):
    # The v0.37+ T2V script (and the minimal one) splits its encoding loop across processes and
    # takes a shape from each process's first result: a process with no clip raised StopIteration.
    data = mixed_dataset(tmp_path / "data", [(256, 144, 17)])
    record, out = tmp_path / "events", tmp_path / "out"
    extra = ["--latent_cache_dir", tmp_path / "cache"] if "latent_cache" in plugins else []
    trainer = i2v_trainer if "I2V" in kind else t2v_trainer
    args = script_args(
        tiny_models[kind], data, out, "--plugins", f"{RECORDER},{plugins}", "--recorder_out", record,
        *extra, steps=2,
    )  # fmt: skip
    ok(train(trainer, args, nproc=2))
    ranks = read_events(record)
    assert sorted(ranks) == ["events-rank0.jsonl", "events-rank1.jsonl"]
    encoded = [e["path"] for events in ranks.values() for e in by_event(events, "encode_sample")]
    assert len(encoded) == 1  # one rank encoded the clip, the other none
    for name, events in ranks.items():
        assert training_shapes(events) == [[3, 12, 20]] * 2, name  # both processes train every step
    assert (out / "pytorch_lora_weights.safetensors").is_file()
