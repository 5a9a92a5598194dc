"""Which GPU a plan needs: reserved memory, card verdicts, the cheapest change, the VAE encode,
latent_cache's VAE tiling, the trace store, and the plan's header (model rules, rounded sizes)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from cogvx_ext.model.memory import store, trace
from cogvx_ext.model.memory.cards import CARDS, HEADROOM, reserved_bytes
from cogvx_ext.model.memory.configs import released_transformer_config
from cogvx_ext.model.memory.encoding import models_at_start, vae_encode_bytes
from cogvx_ext.model.memory.estimate import LATENT_CACHE, Run, estimate, fitting_change
from cogvx_ext.model.memory.setup import TrainingSetup
from cogvx_ext.model.memory.trace import LiveStorageCounter, vae_encode_peak
from cogvx_ext.testing import write_dataset

FLAGS = ["--caption_column", "prompts.txt", "--video_column", "videos.txt"]


def five_b(**kw) -> TrainingSetup:
    kw.setdefault("rank", 128)
    kw.setdefault("mixed_precision", "bf16")
    kw.setdefault("gradient_checkpointing", True)
    return TrainingSetup.build(released_transformer_config("5b"), **kw)


def plan(tmp_path, data, *extra):
    from cogvx_ext.cli.plan.command import run_plan

    out = tmp_path / "plan.json"
    code = run_plan(["--instance_data_root", str(data), *FLAGS, *map(str, extra), "--json", str(out)])
    return code, json.loads(out.read_text()) if out.exists() else None


# -- the cheapest change ----------------------------------------------------------------------------


def test_the_cheapest_change_is_latent_cache_alone_or_with_fewer_frames():
    # Prodigy and checkpointing on: latent_cache is the one change that keeps what is trained.
    setup = five_b(optimizer="prodigy")
    latent = (5, 18, 32)  # 256x144x17
    off = replace(setup, text_encoder_on_device=False)
    # Room for the step without the text encoder: latent_cache alone.
    change, other = fitting_change(Run(setup, latent), estimate(off, latent).peak)
    assert change.steps == (LATENT_CACHE,) and other is None
    # Room for 9 frames without the text encoder: latent_cache and the most frames that fit.
    allowed = estimate(off, (3, 18, 32)).peak
    assert estimate(off, (4, 18, 32)).peak > allowed
    change, other = fitting_change(Run(setup, latent), allowed, size=(256, 144))
    assert change.steps == (LATENT_CACHE, "--max_num_frames 9") and change.peak <= allowed
    assert other.steps[0] == LATENT_CACHE and other.steps[1].startswith("--width ") and other.peak <= allowed
    # A batch that is too large (latent_cache chosen): the largest smaller batch that fits.
    change, _ = fitting_change(Run(off, latent, 4), estimate(off, latent, 2).peak)
    assert change.steps == ("--train_batch_size 2",)


# -- card verdicts in the plan ----------------------------------------------------------------------


def test_plan_gives_each_card_a_verdict_from_the_reserved_estimate(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", [(720, 480, 9), (720, 480, 9)])
    code, report = plan(
        tmp_path, data, "--model", "5b", "--height", 480, "--width", 720, "--max_num_frames", 9,
        "--train_batch_size", 1, "--gradient_checkpointing", "--mixed_precision", "bf16", "--rank", 128,
        "--optimizer", "adamw", "--plugins", "aspect_bucket,rope_rescale", "--memory",
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    memory = report["summary"]["memory"]
    setup = five_b(optimizer="adamw")
    latent = tuple(report["buckets"][0]["latent"])
    allocated = estimate(setup, latent).peak
    assert memory["peak_bytes"] == allocated
    assert memory["reserved_bytes"] == reserved_bytes(allocated) > allocated * 1.15
    cards = memory["cards"]
    assert sorted(map(int, cards)) == [gb for gb, _, _ in CARDS]
    # 5b with the text encoder on the device: about 20.5 GiB allocated, 24 GiB reserved.
    small = cards["24"]
    assert small["verdict"] == "does not fit" and small["change"]["changes"] == [LATENT_CACHE]
    assert small["change"]["reserved_bytes"] <= small["card_bytes"] * (1 - HEADROOM)
    batches = []
    for gb in ("40", "48", "80", "141"):
        card = cards[gb]
        assert card["verdict"] == "fits" and card["reserved_bytes"] <= card["card_bytes"] * (1 - HEADROOM)
        size = card["max_batch"]
        fits = reserved_bytes(estimate(setup, latent, size).peak) <= card["card_bytes"] * (1 - HEADROOM)
        over = reserved_bytes(estimate(setup, latent, size + 1).peak) > card["card_bytes"] * (1 - HEADROOM)
        assert fits and over, (gb, size)
        batches.append(size)
    assert batches == sorted(batches) and batches[0] < batches[-1]
    assert "GPU verdict" in text and "24 GB (RTX 4090)   does not fit (" in text
    assert f"fits with {LATENT_CACHE} (" in text
    assert "reserved: about " in text and "x 1.155" in text
    encode = memory["encode"]
    assert encode["bucket"] == "720x480x9" and encode["activation_bytes"] > 0


def test_budget_advice_names_a_bucket_of_the_plan_and_counts_latent_cache(tmp_path, capsys):
    from cogvx_ext.base.errors import UsageError
    from cogvx_ext.cli.plan.command import run_plan

    data = write_dataset(tmp_path / "data", [(256, 144, 9)])
    setup = five_b(optimizer="adamw")
    latent = (3, 18, 32)
    off = estimate(replace(setup, text_encoder_on_device=False), latent).peak
    budget = int((off + 2**28) / 0.85)  # room without the text encoder, not with it
    with pytest.raises(UsageError) as caught:
        run_plan([
            "--instance_data_root", str(data), *FLAGS, "--model", "5b", "--height", "144", "--width", "256",
            "--max_num_frames", "9", "--bucket_frames", "max", "--gradient_checkpointing", "--mixed_precision",
            "bf16", "--rank", "128", "--optimizer", "adamw", "--plugins", "aspect_bucket,rope_rescale",
            "--bucket_memory_budget", str(budget), "--memory",
        ])  # fmt: skip
    message = str(caught.value)
    assert message.startswith(f"--bucket_memory_budget {budget}: bucket 256x144x9 needs about "), message
    assert f"it would fit with {LATENT_CACHE}: " in message


# -- the VAE encode ---------------------------------------------------------------------------------


def _tiny_vae(dtype=torch.float32):
    from diffusers import AutoencoderKLCogVideoX

    from cogvx_ext.model.tiny import _tiny_vae_config

    torch.manual_seed(0)
    return AutoencoderKLCogVideoX(**_tiny_vae_config("5b")).to(dtype).eval()


@pytest.mark.parametrize("tiled", [False, True], ids=["whole", "tiled"])
def test_fake_vae_encode_matches_a_real_cpu_encode(tiled):
    vae = _tiny_vae()
    if tiled:
        vae.enable_tiling()
    frames, height, width = 9, 256, 400  # wider than the tiny VAE's 360 px tiles
    counter = LiveStorageCounter()
    counter.exclude([*vae.parameters(), *vae.buffers()])
    with counter, torch.no_grad():
        vae.encode(torch.zeros(1, 3, frames, height, width))
    fake = vae_encode_bytes(vae, frames, height, width)
    assert counter.peak > 1_000_000
    assert abs(fake - counter.peak) <= 0.02 * counter.peak, (fake, counter.peak)
    if tiled:
        assert fake < vae_encode_bytes(vae, frames, height, width, tiled=False)


def test_released_vae_encode_grows_with_the_area_and_tiling_keeps_it_small():
    config = TrainingSetup.vae
    whole = vae_encode_peak(config, "bf16", 49, 576, 1024)
    smaller = vae_encode_peak(config, "bf16", 49, 480, 720)
    tiled = vae_encode_peak(config, "bf16", 49, 576, 1024, ())
    assert smaller < whole and tiled < whole / 3


# -- latent_cache turns tiling on -------------------------------------------------------------------


@pytest.mark.slow
def test_cache_fill_tiles_the_encodes_that_would_not_fit_the_budget(tiny_models, tmp_path, capsys):
    from cogvx_ext.cli.cache import run_cache
    from cogvx_ext.model.memory.configs import model_configs

    model = str(tiny_models["5b"])
    data = write_dataset(tmp_path / "data", [(400, 256, 9)])
    transformer, text, vae_config = model_configs(model, None)
    setup = TrainingSetup.build(transformer, text, vae_config, rank=128, lora_alpha=128, mixed_precision="no")
    vae = _tiny_vae()
    at_start = models_at_start(setup)
    whole = vae_encode_bytes(vae, 9, 256, 400, tiled=False)
    tiled = vae_encode_bytes(vae, 9, 256, 400, tiled=True)
    budget = int((at_start + (whole + tiled) / 2) / 0.85)

    def fill(*extra):
        code = run_cache([
            "fill", "--pretrained_model_name_or_path", model, "--instance_data_root", str(data), *FLAGS,
            "--height", "256", "--width", "400", "--max_num_frames", "9", "--latent_cache_dir",
            str(tmp_path / "cache"), *extra,
        ])  # fmt: skip
        return code, capsys.readouterr()

    code, out = fill("--bucket_memory_budget", str(budget))
    assert code == 0, out.err
    assert (
        "cogvx-ext: latent_cache: VAE tiling on for 400x256x9: encoding it needs about " in out.out + out.err
    )
    entries = list((tmp_path / "cache").rglob("*.safetensors"))
    fields = [json.loads(_metadata(path)["cogvx_ext.fields"]) for path in entries]
    assert [f["vae"]["settings"]["use_tiling"] for f in fields] == [True]
    # The same budget finds the tiled entry; room for the whole encode makes (and finds) its own.
    code, out = fill("--bucket_memory_budget", str(budget))
    assert code == 0 and "1 already cached, 0 encoded" in out.out
    code, out = fill("--bucket_memory_budget", str(int((at_start + whole) / 0.85) + 1))
    assert code == 0 and "0 already cached, 1 encoded" in out.out and "VAE tiling on" not in out.out + out.err


def _metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


# -- the trace store --------------------------------------------------------------------------------


def test_traces_are_kept_on_disk_and_served_from_there(tmp_path, monkeypatch):
    path = tmp_path / "traces.json"
    monkeypatch.setenv(store.ENV_CACHE, str(path))
    setup = five_b()
    latent = (3, 6, 10)
    trace._step_activation_peak.cache_clear()
    traced = trace.step_activation_peak(setup, latent, 1, 2)
    entries = json.loads(path.read_text())["entries"]
    assert traced in entries.values()
    # A new process (the caches cleared) reads the figure instead of tracing: change it on disk.
    key = next(k for k, v in entries.items() if v == traced)
    path.write_text(json.dumps({"format": 1, "entries": {**entries, key: 12345}}))
    trace._step_activation_peak.cache_clear()
    store._store = None
    assert trace.step_activation_peak(setup, latent, 1, 2) == 12345
    # Other tracing code (or another torch, diffusers, peft) traces again.
    monkeypatch.setattr(store, "_code_digest", lambda: "other code")
    trace._step_activation_peak.cache_clear()
    store._store = None
    assert trace.step_activation_peak(setup, latent, 1, 2) == traced
    trace._step_activation_peak.cache_clear()
    store._store = None


# -- the plan's header ------------------------------------------------------------------------------


def test_a_released_hub_id_plans_offline_and_the_header_names_the_rules(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = write_dataset(tmp_path / "data", [(256, 144, 9)])
    code, report = plan(tmp_path, data, "--pretrained_model_name_or_path", "THUDM/CogVideoX-5b",
                        "--height", 144, "--width", 256, "--max_num_frames", 9)  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "model: 5b (RoPE 1.0 fitted to 720x480, trained on 49 frames; from THUDM/CogVideoX-5b, " in text
    assert report["summary"]["model"]["name"] == "5b" and report["summary"]["rounded"] == []
    code, report = plan(tmp_path, data, "--pretrained_model_name_or_path", "THUDM/CogVideoX1.5-5B-I2V",
                        "--height", 144, "--width", 256, "--max_num_frames", 9, "--plugins", "aspect_bucket,rope_rescale")  # fmt: skip
    assert report["summary"]["model"]["name"] == "1.5-5B-I2V"


def test_rounded_sizes_and_frames_are_said_in_one_line(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", [(256, 144, 12)])
    code, report = plan(
        tmp_path, data, "--model", "5b", "--height", 140, "--width", 256, "--max_num_frames", 10
    )
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("rounded: ")]
    assert lines == [
        "rounded: --height 140 -> 144 (256x144: sides are multiples of 16); "
        "--max_num_frames 10 -> 9 (frame counts are 4k+1)"
    ]
    assert [b["width"] for b in report["buckets"]] == [256] and report["buckets"][0]["height"] == 144
    assert len(report["summary"]["rounded"]) == 2


# -- training checks its planned shapes -------------------------------------------------------------


@pytest.mark.slow
def test_training_stops_once_its_clips_are_planned_when_their_bucket_does_not_fit(
    tiny_models, t2v_trainer, train, tmp_path
):
    import argparse

    from cogvx_ext.model.memory.setup import setup_from_args

    model = str(tiny_models["5b"])
    data = write_dataset(tmp_path / "data", [(160, 96, 9)])
    flags = argparse.Namespace(
        pretrained_model_name_or_path=model, rank=4, lora_alpha=4, mixed_precision="no", optimizer="adam"
    )
    setup = setup_from_args(flags)
    planned, smallest = setup.model.latent_shape(9, 96, 160), setup.model.latent_shape(9, 96, 96)
    # Room for the smallest bucket the run can make (the check before the models load passes),
    # not for the one the clip is planned at.
    budget = int((estimate(setup, smallest).peak + estimate(setup, planned).peak) / 2 / 0.85)
    assert estimate(setup, smallest).peak < budget * 0.85 < estimate(setup, planned).peak
    args = [
        "--pretrained_model_name_or_path", model, "--instance_data_root", data, *FLAGS,
        "--height", 96, "--width", 160, "--max_num_frames", 9, "--train_batch_size", 1, "--max_train_steps", 1,
        "--output_dir", tmp_path / "out", "--rank", 4, "--lora_alpha", 4,
        "--plugins", "aspect_bucket,rope_rescale", "--buckets", "160x96,96x96", "--bucket_frames", "max",
        "--bucket_memory_budget", budget,
    ]  # fmt: skip
    result = train(t2v_trainer, args)
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"cogvx-ext: --bucket_memory_budget {budget}: bucket 160x96x9 needs about "), line
    assert "decoding and encoding clips" not in result.stderr
