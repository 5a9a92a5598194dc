"""cogvx_ext.model.memory: the fake-tensor estimate against real CPU runs, its terms, and the budget."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import pytest
import torch
from tests_support import configured

from cogvx_ext.base.errors import UsageError
from cogvx_ext.data.clips import Clip, Sample, VideoInfo
from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.model.memory import configs, resident, trace
from cogvx_ext.model.memory.configs import released_transformer_config
from cogvx_ext.model.memory.estimate import advice, estimate, largest_batch
from cogvx_ext.model.memory.setup import TrainingSetup
from cogvx_ext.model.memory.trace import LiveStorageCounter, step_activation_peak, trace_step
from cogvx_ext.model.memory.units import parse_bytes
from cogvx_ext.testing import tiny_transformer_config, write_dataset
from cogvx_ext_plugins.aspect_bucket import AspectBucket


def tiny_setup(layers: int = 4, **kw) -> TrainingSetup:
    config = dict(tiny_transformer_config(kw.pop("kind", "5b")), num_layers=layers)
    kw.setdefault("rank", 4)
    kw.setdefault("text_encoder_on_device", False)
    kw.setdefault("vae_on_device", False)  # the released VAE would dwarf a tiny transformer
    return TrainingSetup.build(config, **kw)


def test_counter_counts_storages_once_and_frees_them():
    counter = LiveStorageCounter()
    with counter:
        a = torch.empty(1000, 250)  # 1 MB
        view = a[:10].t()  # a view is no new memory
        b = a * 2
        assert counter.current == 2_000_000
        del b
        assert counter.current == 1_000_000
        c = torch.empty(500, 250)
        assert counter.peak == 2_000_000 and counter.current == 1_500_000
    del view, c


def test_views_of_weights_made_before_counting_are_not_new_memory():
    weight = torch.empty(1000, 250)
    for excluded, expected in ((False, 1_000_000), (True, 0)):
        counter = LiveStorageCounter()
        if excluded:
            counter.exclude([weight])
        with counter:
            transposed = weight.t()  # what F.linear does with every weight
        assert counter.current == expected
        del transposed


@pytest.mark.parametrize(
    "settings",
    [
        dict(mixed_precision="bf16", gradient_checkpointing=True),
        dict(mixed_precision="bf16", gradient_checkpointing=False),
        dict(mixed_precision="no", gradient_checkpointing=True),
        dict(mixed_precision="fp16", gradient_checkpointing=False),
        dict(mixed_precision="bf16", gradient_checkpointing=True, kind="1.5-5B-I2V"),
        dict(mixed_precision="bf16", gradient_checkpointing=False, kind="2b"),
    ],
    ids=["bf16-ckpt", "bf16", "fp32-ckpt", "fp16", "1.5-I2V", "2b"],
)
def test_fake_trace_matches_a_real_cpu_step(settings):
    # The same step on real CPU tensors of a tiny model: the fake trace must see the same storages
    # (same kernels, dtypes, saved tensors), so the two counts agree to the byte or nearly.
    setup = tiny_setup(layers=2, **settings)
    latent = (4, 12, 20)
    fake = step_activation_peak(setup, latent, 2, 2)
    torch.manual_seed(0)
    real_model = trace._build_transformer(setup, trace._trace_config(setup, 2), device="cpu")
    real = trace_step(real_model, setup, latent, 2)
    assert real > 100_000
    assert abs(fake - real) <= 0.02 * real, (fake, real)


def test_depth_and_batch_extrapolation_match_direct_traces():
    setup = tiny_setup(layers=6, mixed_precision="bf16", gradient_checkpointing=True)
    latent = (5, 16, 24)
    direct = step_activation_peak(setup, latent, 1, 6)
    assert trace.activation_peak(setup, latent, 1) == pytest.approx(direct, rel=0.02)
    direct_batch = step_activation_peak(setup, latent, 3, 6)
    assert estimate(setup, latent, 3).terms["activations"] == pytest.approx(direct_batch, rel=0.03)


def test_larger_shapes_batches_and_no_checkpointing_estimate_larger():
    setup = tiny_setup(mixed_precision="bf16", gradient_checkpointing=True)
    peaks = [estimate(setup, latent).peak for latent in [(3, 12, 20), (5, 12, 20), (5, 16, 28), (9, 16, 28)]]
    assert peaks == sorted(peaks) and len(set(peaks)) == len(peaks)
    assert estimate(setup, (5, 16, 28), 2).peak > estimate(setup, (5, 16, 28), 1).peak
    off = replace(setup, gradient_checkpointing=False)
    assert estimate(off, (5, 16, 28)).peak > estimate(setup, (5, 16, 28)).peak


def test_resident_terms_follow_the_script():
    base = TrainingSetup.build(released_transformer_config("5b"), rank=64, mixed_precision="bf16")
    weights = resident.transformer_bytes(base)
    # peft's LoRA on to_q, to_k, to_v, to_out.0 of 42 blocks of width 3072, in the base dtype.
    assert weights.lora_count == 42 * 4 * 64 * (3072 + 3072)
    assert weights.lora == 2 * weights.lora_count
    assert 5.5e9 < weights.base / 2 < 5.7e9  # CogVideoX-5b: 5.57 B parameters
    fp16 = resident.transformer_bytes(replace(base, mixed_precision="fp16"))
    assert fp16.lora == 4 * weights.lora_count  # the scripts upcast the LoRA for fp16
    states = {
        name: resident.optimizer_state_bytes(replace(base, **kw), weights)[0]
        for name, kw in [
            ("adamw", {}),
            ("8bit", {"use_8bit_adam": True}),
            ("prodigy", {"optimizer": "prodigy"}),
        ]
    }
    assert states["adamw"] == 2 * weights.lora
    # bitsandbytes: one byte per state and parameter, and a float32 absmax per 256.
    assert states["8bit"] == 2 * (weights.lora_count + 4 * weights.lora_count // 256)
    assert states["8bit"] < states["adamw"] < states["prodigy"] == 4 * weights.lora
    on = estimate(base, (2, 8, 8))
    off = estimate(replace(base, text_encoder_on_device=False), (2, 8, 8))
    assert on.terms["text_encoder"] == pytest.approx(4.76e9 * 2, rel=0.01)  # T5 v1.1 XXL encoder
    assert off.terms["text_encoder"] == 0 and on.peak - off.peak == on.terms["text_encoder"]


def test_validation_peak_counts_the_pipeline():
    setup = tiny_setup(mixed_precision="bf16", gradient_checkpointing=True)
    with_validation = replace(setup, validation=(9, 96, 160), vae=json.dumps(_tiny_vae()))
    found = estimate(with_validation, (3, 12, 20))
    assert found.validation_peak is not None and found.peak >= found.validation_peak
    assert found.validation_terms["text_encoder"] > 0  # the pipeline brings it back
    assert "lora_grads" not in found.validation_terms
    assert estimate(setup, (3, 12, 20)).validation_peak is None


def _tiny_vae():
    return dict(
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
    )


def test_largest_batch_and_advice():
    setup = tiny_setup(mixed_precision="bf16", gradient_checkpointing=False)
    small, large = (3, 12, 20), (9, 24, 40)
    budget = int(estimate(setup, large, 1).peak * 1.2 / 0.85)
    assert largest_batch(setup, large, budget) == 1
    size = largest_batch(setup, small, budget)
    assert size > 2
    assert estimate(setup, small, size).peak <= budget * 0.85 < estimate(setup, small, size + 1).peak
    tight = int(estimate(setup, large, 1).peak * 0.9 / 0.85)
    assert largest_batch(setup, large, tight) == 0
    # Recomputing is enough here, and it keeps what is trained: the cheapest change is named alone.
    assert advice(setup, large, tight).startswith("--gradient_checkpointing: ")
    # Nothing cheap is left with checkpointing on: fewer frames, or a smaller area.
    on = replace(setup, gradient_checkpointing=True)
    tips = advice(on, large, int(estimate(on, large, 1).peak * 0.9 / 0.85))
    assert "--max_num_frames " in tips and "area" in tips


def test_parse_bytes():
    assert parse_bytes("24GiB") == parse_bytes("24G") == 24 * 2**30
    assert parse_bytes("80GB") == 80 * 10**9 and parse_bytes("1.5 TiB") == int(1.5 * 2**40)
    with pytest.raises(UsageError, match="24 bananas"):
        parse_bytes("24 bananas")


def test_released_model_names_from_hub_ids(tmp_path):
    assert configs._released_name_from_id("THUDM/CogVideoX1.5-5B-I2V") == "1.5-5B-I2V"
    assert configs._released_name_from_id("THUDM/CogVideoX-5b-I2V") == "5b-I2V"
    assert configs._released_name_from_id("THUDM/CogVideoX-2b") == "2b"
    assert configs.model_configs("THUDM/CogVideoX-5b", None)[0]["num_layers"] == 42
    folder = tmp_path / "model"
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text(json.dumps(tiny_transformer_config("2b")))
    transformer, text, vae = configs.model_configs(str(folder), None)
    assert transformer["num_attention_heads"] == 2 and text == configs.RELEASED_T5 and vae == {}
    with pytest.raises(UsageError, match="without downloading"):
        configs.model_configs("someone/some-model", None)


# -- the aspect_bucket budget ---------------------------------------------------------------------

TINY = ModelInfo.from_config(tiny_transformer_config("5b"))


def budget_run(budget: str, extra=(), setup=None, clips=None):
    """aspect_bucket's memory check before the clips are read, and with ``clips`` (``(width,
    height, frames)`` of each) planned by the plugin itself, as a run makes them."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--max_num_frames", type=int, default=17)
    argv = ["--bucket_memory_budget", budget, "--bucket_frames", "max", *extra]
    plugin = AspectBucket()
    pm, args = configured(parser, argv, [plugin], TINY)
    setup = setup or tiny_setup()
    pm.hook.cogvx_memory_check(setup=setup, args=args, model=TINY, stages=None, samples=None)
    if clips is not None:
        samples = []
        for i, (width, height, frames) in enumerate(clips):
            clip = Clip(i, f"clip{i}.mp4", "a clip", VideoInfo(width, height, frames, 8.0))
            for target in pm.hook.cogvx_clip_targets(clip=clip, args=args, model=TINY, stages=None):
                samples.append(Sample(clip, target))
        pm.hook.cogvx_memory_check(setup=setup, args=args, model=TINY, stages=None, samples=samples)
    return plugin, pm, args


def test_budget_check_names_a_planned_bucket_and_what_would_fit():
    setup = tiny_setup(mixed_precision="bf16", gradient_checkpointing=False)
    # Memory grows with a sample's tokens. Among every bucket the run could make, one has more
    # tokens than the landscape bucket the clips are planned at: the check names the planned one.
    most = max(AspectBucket_buckets(), key=lambda hw: TINY.tokens(TINY.latent_shape(17, *hw)))
    planned = TINY.latent_shape(17, 192, 320)
    assert TINY.tokens(TINY.latent_shape(17, *most)) > TINY.tokens(planned)
    budget = str(int(estimate(setup, planned).peak * 0.8 / 0.85))
    budget_run(budget, setup=setup)  # before the clips: the smallest shape fits, so nothing to say
    with pytest.raises(UsageError) as caught:
        budget_run(budget, setup=setup, clips=[(320, 192, 17), (640, 384, 20)])
    message = str(caught.value)
    assert message.startswith(f"--bucket_memory_budget {budget}: bucket 320x192x17 needs about "), message
    assert "(1 of the plan's 1 shapes too large; " in message
    assert "it would fit with --gradient_checkpointing: " in message
    budget_run(str(int(estimate(setup, planned).peak * 1.01 / 0.85)), setup=setup, clips=[(320, 192, 17)])
    # A budget that not even the smallest shape fits stops before the clips are read.
    with pytest.raises(UsageError, match="no shape fits: even the smallest, bucket "):
        budget_run("1MiB", setup=setup)


def AspectBucket_buckets():
    plugin = AspectBucket()
    parser = argparse.ArgumentParser()
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=320)
    configured(parser, [], [plugin], TINY)
    return plugin.settings.buckets


def test_budget_gives_small_buckets_larger_batches():
    setup = tiny_setup(mixed_precision="bf16", gradient_checkpointing=True)
    large = TINY.latent_shape(17, 192, 320)
    budget = int(estimate(setup, large, 1).peak * 1.3 / 0.85)
    plugin, pm, args = budget_run(str(budget), setup=setup)
    small = TINY.latent_shape(17, 96, 160)
    sizes = plugin._memory_batch_sizes({large: 8, small: 8})
    assert sizes[large] == 1 and sizes[small] > 1
    assert sizes == {k: largest_batch(setup, k, budget) if k == large else min(8, largest_batch(setup, k, budget))
                     for k in sizes}  # fmt: skip
    with pytest.raises(UsageError, match="give one"):
        budget_run("1GiB", ["--bucket_token_budget", "1000"])


def test_plan_memory_table_and_json(tmp_path, capsys):
    from cogvx_ext.cli.plan.command import run_plan

    data = write_dataset(tmp_path / "data", [(256, 144, 17), (160, 96, 17), (144, 256, 9)])
    started = time.perf_counter()
    code = run_plan([
        "--instance_data_root", str(data), "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--model", "5b", "--height", "144", "--width", "256", "--max_num_frames", "17",
        "--train_batch_size", "1", "--gradient_checkpointing", "--mixed_precision", "bf16", "--rank", "128",
        "--plugins", "aspect_bucket,rope_rescale", "--memory", "--json", str(tmp_path / "plan.json"),
    ])  # fmt: skip
    assert code == 0 and time.perf_counter() - started < 60
    text = capsys.readouterr().out
    assert "peak memory" in text and "text encoder on the device" in text and "GiB" in text
    report = json.loads((tmp_path / "plan.json").read_text())
    rows = report["buckets"]
    assert all(row["memory_bytes"] > 10 * 2**30 for row in rows)  # 5b weights alone are 10.4 GiB
    by_tokens = sorted(rows, key=lambda r: r["tokens_per_sample"])
    assert [r["memory_bytes"] for r in by_tokens] == sorted(r["memory_bytes"] for r in rows)
    assert report["summary"]["memory"]["peak_bytes"] == max(r["memory_bytes"] for r in rows)


@pytest.mark.slow
def test_a_budget_too_small_stops_the_script_before_any_model_loads(
    tiny_models, t2v_trainer, train, tmp_path
):
    data = write_dataset(tmp_path / "data", [(160, 96, 9)])
    args = [
        "--pretrained_model_name_or_path", tiny_models["5b"], "--instance_data_root", data,
        "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--height", 96, "--width", 160, "--max_num_frames", 9, "--train_batch_size", 1, "--max_train_steps", 2,
        "--output_dir", tmp_path / "out", "--rank", 4, "--lora_alpha", 4,
        "--plugins", "aspect_bucket,rope_rescale", "--bucket_memory_budget", "1MiB",
    ]  # fmt: skip
    result = train(t2v_trainer, args)
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip()
    # Before any model loads, the smallest shape the run can make is checked: nothing fits.
    assert line.startswith(
        "cogvx-ext: --bucket_memory_budget 1MiB: no shape fits: even the smallest, bucket "
    )
    assert len(line.splitlines()) == 1
    assert "it would fit with" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_training_logs_the_estimate_and_budget_batches_at_start(tiny_models, t2v_trainer, train, tmp_path):
    data = write_dataset(tmp_path / "data", [(160, 96, 9), (160, 96, 9), (96, 96, 9)])
    args = [
        "--pretrained_model_name_or_path", tiny_models["5b"], "--instance_data_root", data,
        "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--height", 96, "--width", 160, "--max_num_frames", 9, "--train_batch_size", 1, "--max_train_steps", 1,
        "--output_dir", tmp_path / "out", "--rank", 4, "--lora_alpha", 4,
        "--plugins", "aspect_bucket,rope_rescale", "--bucket_memory_budget", "8GiB",
    ]  # fmt: skip
    result = train(t2v_trainer, args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "estimated peak accelerator memory per step: " in result.stderr
    # 8 GiB holds many samples of a tiny model: each shape's batch is its clip count.
    assert "160x96x9 batch 2, estimated peak" in result.stderr


def test_plan_with_stages_and_a_budget_gives_the_small_stage_larger_batches(tmp_path):
    from cogvx_ext.cli.plan.command import run_plan

    data = write_dataset(tmp_path / "data", [(256, 144, 9)] * 4)
    setup = TrainingSetup.build(
        released_transformer_config("5b"), rank=128, mixed_precision="bf16", gradient_checkpointing=True,
        text_encoder_on_device=False,
    )  # fmt: skip
    model = setup.model
    large = estimate(setup, model.latent_shape(9, 144, 256), 1).peak
    budget = int((large + 0.5 * (estimate(setup, model.latent_shape(9, 144, 256), 2).peak - large)) / 0.85)
    code = run_plan([
        "--instance_data_root", str(data), "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--model", "5b", "--height", "144", "--width", "256", "--max_num_frames", "9", "--bucket_frames", "max",
        "--gradient_checkpointing", "--mixed_precision", "bf16", "--rank", "128", "--optimizer", "adamw",
        "--plugins", "aspect_bucket,rope_rescale,latent_cache,progressive_resize", "--latent_cache_dir",
        str(tmp_path / "cache"), "--progressive_stages", "160x96:0,256x144:10", "--max_train_steps", "20",
        "--bucket_memory_budget", str(budget), "--memory", "--json", str(tmp_path / "plan.json"),
    ])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "plan.json").read_text())
    batch = {row["stage"]: row["batch_size"] for row in report["buckets"]}
    assert batch[1] == 1 and batch[0] > 1
    memory_summary = report["summary"]["memory"]
    assert memory_summary["budget_bytes"] == budget and "text encoder on the CPU" in memory_summary["setup"]
    assert all(row["memory_bytes"] <= budget * 0.85 for row in report["buckets"])
    for stage in (0, 1):
        mine = [r["memory_bytes"] for r in report["buckets"] if r["stage"] == stage]
        assert memory_summary["stage_peak_bytes"][str(stage)] == max(mine)
