"""snr_shift: each batch's SNR shift from its token count, in the noise, the velocity target, the
loss weight, the plan, the log, the LoRA's record and the pipeline at the size asked for."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest
import safetensors
import torch
from conftest import _run_trainer
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler
from tests_support import HERE, training_args

from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.model.snr_shift import follow_shift
from cogvx_ext.testing import write_dataset

SPY = HERE / "trainers" / "scheduler_spy.py"
REFERENCE = (
    "240x160x9"  # 5b: 3x10x15 = 450 tokens: the tiny buckets get shifts well away from the model's own
)


def expected_shift(model: ModelInfo, latent_shape, base: float, gamma: float = 1.0, size=REFERENCE) -> float:
    """The issue's rule, written out again: s0 * clamp((N / N_ref) ** gamma, 1/4, 4)."""
    width, height, frames = map(int, size.split("x"))
    reference = model.tokens(model.latent_shape(frames, height, width))
    return base * min(max((model.tokens(tuple(latent_shape)) / reference) ** gamma, 0.25), 4.0)


train_args = functools.partial(training_args, steps=3)


# ---------------------------------------------------------------------------------------------
# The scheduler on its own


def base_scheduler(cls=CogVideoXDPMScheduler, shift=1.0):
    return cls(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
        snr_shift_scale=shift, timestep_spacing="trailing",
    )  # fmt: skip


@pytest.mark.parametrize("cls", [CogVideoXDPMScheduler, CogVideoXDDIMScheduler])
def test_follower_computes_what_a_scheduler_built_with_the_shift_does(cls):
    def shift_for(shape):
        return {(3, 4, 6): 2.5, (3, 8, 6): 0.5}[shape]

    follower = follow_shift(base_scheduler(cls), shift_for)
    assert isinstance(follower, cls) and follower.config.snr_shift_scale == 1.0
    small, large = torch.randn(2, 3, 4, 4, 6), torch.randn(2, 3, 4, 8, 6)
    noise_small, noise_large = torch.randn_like(small), torch.randn_like(large)
    t = torch.tensor([50, 700])
    for sample, noise, shift in ((small, noise_small, 2.5), (large, noise_large, 0.5)):
        reference = cls.from_config(follower.config, snr_shift_scale=shift)
        assert torch.equal(follower.add_noise(sample, noise, t), reference.add_noise(sample, noise, t))
        assert torch.equal(follower.alphas_cumprod, reference.alphas_cumprod)  # the loss weight's
        assert follower.final_alpha_cumprod == reference.final_alpha_cumprod
    # get_velocity follows its own sample's shape, not the last add_noise's.
    reference = cls.from_config(follower.config, snr_shift_scale=2.5)
    assert torch.equal(
        follower.get_velocity(small, noise_small, t), reference.get_velocity(small, noise_small, t)
    )
    assert not torch.equal(reference.alphas_cumprod, base_scheduler(cls).alphas_cumprod)


def test_follower_steps_with_the_shift_of_the_sample():
    follower = follow_shift(base_scheduler(shift=3.0), lambda shape: 1.5)
    reference = base_scheduler(shift=1.5)
    for scheduler in (follower, reference):
        scheduler.set_timesteps(4)
    sample, output = torch.randn(1, 3, 4, 4, 6), torch.randn(1, 3, 4, 4, 6)
    t = follower.timesteps[0]
    got, _ = follower.step(output, None, t, None, sample, generator=torch.Generator().manual_seed(0))
    want, _ = reference.step(output, None, t, None, sample, generator=torch.Generator().manual_seed(0))
    assert torch.equal(got, want) and follower.current_shift == 1.5
    unshifted_scheduler = base_scheduler(shift=3.0)
    unshifted_scheduler.set_timesteps(4)
    unshifted, _ = unshifted_scheduler.step(
        output, None, t, None, sample, generator=torch.Generator().manual_seed(0)
    )
    assert not torch.equal(got, unshifted)


# ---------------------------------------------------------------------------------------------
# Training: what the script's scheduler gave, against schedulers built with the expected shift


def spy_run(tmp_path, trainer, model_dir, *extra, reference=REFERENCE):
    clips = [(256, 144, 9), (144, 256, 9), (160, 160, 9)]
    data = write_dataset(tmp_path / "data", clips, prompts=["a", "b", "c"])
    out = tmp_path / "out"
    record = tmp_path / "record.safetensors"
    plugins = "aspect_bucket,rope_rescale,snr_shift"
    args = train_args(model_dir, data, out, "--plugins", plugins, "--snr_shift_reference", reference, *extra)
    result = _run_trainer(SPY, [record, trainer, *args])
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    with safetensors.safe_open(record, "pt") as f:
        events = json.loads(f.metadata()["events"])
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    return events, tensors, result, out, data


def check_steps(events, tensors, model_dir, size=REFERENCE):
    """Per training step: (noise ok, velocity ok, weight ok), each against a scheduler that diffusers
    builds with the expected shift; and that the shifts differ from the model's own."""
    base = CogVideoXDPMScheduler.from_pretrained(model_dir, subfolder="scheduler")
    model = ModelInfo.from_pretrained(str(model_dir))
    steps, reference = [], None
    for event in events:
        get = lambda name, i=event["index"]: tensors[f"{i}.{name}"]  # noqa: E731
        if event["kind"] == "add_noise":
            original, noise, t = get("original"), get("noise"), get("timesteps")
            shape = (original.shape[1], original.shape[3], original.shape[4])
            shift = expected_shift(model, shape, base.config.snr_shift_scale, size=size)
            assert abs(shift - base.config.snr_shift_scale) > 0.1  # the check below tells them apart
            reference = CogVideoXDPMScheduler.from_pretrained(
                model_dir, subfolder="scheduler", snr_shift_scale=shift
            )
            steps.append(
                {
                    "shape": shape,
                    "shift": shift,
                    "noise": torch.allclose(get("result"), reference.add_noise(original, noise, t)),
                }
            )
        elif event["kind"] == "get_velocity":
            # The scripts call get_velocity(model_output, noisy_model_input, timesteps).
            output, noisy, t = get("sample"), get("noise"), get("timesteps")
            steps[-1]["velocity"] = torch.allclose(get("result"), reference.get_velocity(output, noisy, t))
        elif event["kind"] == "alphas_cumprod":
            steps[-1]["weight"] = torch.equal(get("value").cpu(), reference.alphas_cumprod)
    return steps


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "script", "reference"),
    [
        ("5b", "t2v", REFERENCE),
        ("2b", "t2v", REFERENCE),  # its own shift is 3.0
        # 1.5 trains 5 frames here (an even latent count): 1x4x8 = 32 tokens keep the shifts apart
        ("1.5-5B-I2V", "i2v", "128x64x5"),
    ],
)
def test_noise_velocity_target_and_loss_weight_all_follow_the_batch(
    tmp_path, tiny_models, t2v_trainer, i2v_trainer, kind, script, reference
):
    trainer = t2v_trainer if script == "t2v" else i2v_trainer
    events, tensors, _, _, _ = spy_run(tmp_path, trainer, tiny_models[kind], reference=reference)
    steps = check_steps(events, tensors, tiny_models[kind], reference)
    assert len(steps) == 3 and len({round(s["shift"], 6) for s in steps}) >= 2  # several buckets
    assert all(s["noise"] for s in steps), "add_noise did not use the batch's SNR shift"
    assert all(s.get("velocity") for s in steps), "get_velocity did not use the batch's SNR shift"
    assert all(s.get("weight") for s in steps), "the loss weight's alphas_cumprod is not the batch's"


# ---------------------------------------------------------------------------------------------
# The plan, the log, cogvx_ext.json and the pipeline


@pytest.mark.slow
def test_plan_log_record_and_pipeline_show_the_shift(tmp_path, tiny_models, t2v_trainer):
    model_dir = tiny_models["5b"]
    model = ModelInfo.from_pretrained(str(model_dir))
    _, _, result, out, data = spy_run(tmp_path, t2v_trainer, model_dir)
    sizes = {"160x96x9": (3, 12, 20), "96x160x9": (3, 20, 12), "128x128x9": (3, 16, 16)}
    want = {label: expected_shift(model, shape, 1.0) for label, shape in sizes.items()}
    # The log: one line per trained shape, and the shift beside the loss.
    for label, shape in sizes.items():
        line = (
            f"cogvx-ext: snr_shift: {label} ({model.tokens(shape)} tokens) trains with SNR shift "
            f"{want[label]:.4g} (the model's 1 at {REFERENCE}, 450 tokens)"
        )
        assert line in result.stderr, result.stderr[-3000:]
    assert "snr_shift=0.4" in result.stderr
    # The LoRA's record.
    settings = json.loads((out / "cogvx_ext.json").read_text())["settings"]
    assert settings["snr_shifts"] == pytest.approx(want)
    assert settings["snr_shift_reference"] == REFERENCE and settings["snr_shift_gamma"] == 1.0
    # The plan, as text and JSON.
    plan_args = [
        "plan", "--instance_data_root", data, "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--height", 96, "--width", 160, "--max_num_frames", 9, "--pretrained_model_name_or_path", model_dir,
        "--plugins", "aspect_bucket,rope_rescale,snr_shift", "--snr_shift_reference", REFERENCE,
    ]  # fmt: skip
    plan = command(*plan_args, "--json", "-")
    buckets = json.loads(plan.stdout[plan.stdout.index("{") :])["buckets"]
    assert {f"{b['width']}x{b['height']}x{b['frames']}": b["snr_shift"] for b in buckets} == pytest.approx(
        want
    )
    table = command(*plan_args).stdout
    assert "SNR shift" in table and f"{want['128x128x9']:.4g}" in table
    # The pipeline at any size: the shift of that size's tokens, applied at every denoising step.
    from diffusers import CogVideoXPipeline

    from cogvx_ext.inference import prepare_pipeline

    pipe = prepare_pipeline(CogVideoXPipeline.from_pretrained(model_dir), out)
    pipe.set_progress_bar_config(disable=True)
    embeds = torch.zeros(1, model_dir_text_tokens(pipe), pipe.transformer.config.text_embed_dim)
    pipe(prompt_embeds=embeds, height=176, width=320, num_frames=9, num_inference_steps=2,
         guidance_scale=1.0, output_type="latent")  # fmt: skip
    assert pipe.scheduler.current_shift == pytest.approx(
        expected_shift(model, (3, 22, 40), 1.0)
    )  # 660 tokens
    # cogvx-ext generate says the shift it denoises with.
    generated = command(
        "generate", "--model", model_dir, "--lora", out, "--size", "320x176", "--frames", 9, "--steps", 1,
        "--prompt", "a test", "--out", tmp_path / "generated.mp4",
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert "cogvx-ext: generating 320x176, 9 frames, 1 steps on cpu (5b), SNR shift 1.47" in generated.stderr


def model_dir_text_tokens(pipe) -> int:
    return pipe.transformer.config.max_text_seq_length


def command(*args):
    return subprocess.run(
        [sys.executable, "-m", "cogvx_ext", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_plan_shows_each_stage_s_shift(tmp_path, tiny_models):
    data = write_dataset(tmp_path / "data", [(256, 144, 9)], prompts=["a"])
    plan = command(
        "plan", "--instance_data_root", data, "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--height", 96, "--width", 160, "--max_num_frames", 9, "--pretrained_model_name_or_path",
        tiny_models["2b"], "--plugins", "aspect_bucket,progressive_resize,snr_shift",
        "--snr_shift_reference", REFERENCE, "--progressive_stages", "128x64:0,160x96:2", "--max_train_steps", 4,
        "--json", "-",
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr[-3000:]
    buckets = json.loads(plan.stdout[plan.stdout.index("{") :])["buckets"]
    model = ModelInfo.from_pretrained(str(tiny_models["2b"]))
    assert len({b["stage"] for b in buckets}) == 2
    for b in buckets:  # the 2b model's own shift is 3.0
        assert b["snr_shift"] == pytest.approx(expected_shift(model, b["latent"], 3.0)), b


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (
            ["--snr_shift_gamma", "-1"],
            "cogvx-ext: --snr_shift_gamma -1: give 0 or more (larger samples, larger shift)",
        ),
        (
            ["--snr_shift_min", "2"],
            "cogvx-ext: --snr_shift_min 2 / --snr_shift_max 4: give 0 < min <= 1 <= max (factors of the model's own shift)",
        ),
        (
            ["--snr_shift_reference", "720x480"],
            "cogvx-ext: --snr_shift_reference 720x480: give WIDTHxHEIGHTxFRAMES (e.g. 720x480x49)",
        ),
    ],
)
def test_a_bad_flag_is_one_line(tmp_path, tiny_models, flags, line):
    data = write_dataset(tmp_path / "data", [(160, 96, 9)], prompts=["a"])
    result = command(
        "plan", "--instance_data_root", data, "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--height", 96, "--width", 160, "--max_num_frames", 9, "--pretrained_model_name_or_path",
        tiny_models["5b"], "--plugins", "aspect_bucket,rope_rescale,snr_shift", *flags,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.strip() == line, result.stderr[-2000:]
