"""``cogvx-ext generate``: a LoRA trained here, a video at a size training did not default to, written
with what the package installs and opened with PyAV; a mistake is one line before any model loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_e2e import mixed_dataset, ok, script_args
from test_validation_videos import read_mp4


def generate(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "cogvx_ext", "generate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=cwd,
    )


def one_line(result) -> str:
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("cogvx-ext: ")
    return line


@pytest.fixture
def lora_without_record(tmp_path):
    """A folder with LoRA weights and no cogvx_ext.json (a LoRA the stock script trained)."""
    folder = tmp_path / "lora"
    folder.mkdir()
    save_file({"w": torch.zeros(1)}, str(folder / "pytorch_lora_weights.safetensors"))
    return folder


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--size", "1000x570"], "--size 1000x570: sides must be multiples of 16; the nearest size is 1008x576"),
        (["--size", "wide"], "--size 'wide': give WIDTHxHEIGHT, e.g. 1024x576"),
        (["--frames", "48"], "--frames 48: CogVideoX makes 4k+1 frames (1, 5, ..., 49, ...); the nearest are 45 and 49"),
        (["--frames", "0"], "--frames 0: CogVideoX makes 4k+1 frames (1, 5, ..., 49, ...); the nearest is 1"),
        (["--out", "video.gif"], "--out video.gif: the file is written as mp4; give a name ending in .mp4"),
        (["--lora", "no-such-run"], "--lora no-such-run: no such folder (give the training run's --output_dir)"),
        (["--model", "./no-such-model"], "--model ./no-such-model: no such folder"),
    ],
)  # fmt: skip
def test_a_mistake_is_one_line_before_anything_loads(
    flags, message, tiny_models, lora_without_record, tmp_path
):
    given = {
        "--model": tiny_models["5b"], "--lora": lora_without_record, "--prompt": "a cat", "--size": "160x96",
        "--frames": 9, "--out": tmp_path / "v.mp4", **dict(zip(flags[::2], flags[1::2])),
    }  # fmt: skip
    line = one_line(generate(*[x for pair in given.items() for x in pair], cwd=tmp_path))
    assert line == f"cogvx-ext: {message}"


def test_a_folder_without_weights_is_not_a_lora(tiny_models, tmp_path):
    line = one_line(generate("--model", tiny_models["5b"], "--lora", tmp_path, "--prompt", "a cat",
                             "--size", "160x96", "--frames", 9, "--out", tmp_path / "v.mp4"))  # fmt: skip
    assert "no LoRA weights (*.safetensors) in it" in line


def test_an_i2v_model_needs_an_image_and_a_t2v_model_takes_none(tiny_models, lora_without_record, tmp_path):
    common = ["--lora", lora_without_record, "--prompt", "a cat", "--size", "720x480", "--frames", 9,
              "--out", tmp_path / "v.mp4"]  # fmt: skip
    line = one_line(generate("--model", tiny_models["5b-I2V"], *common))
    assert line.endswith("is an image-to-video model: give the first frame with --image FILE")
    image = tmp_path / "first.png"
    Image.new("RGB", (64, 48)).save(image)
    line = one_line(generate("--model", tiny_models["5b"], *common, "--image", image))
    assert line.endswith("makes videos from text alone")


def test_5b_i2v_at_another_size_needs_a_lora_trained_with_posemb_adapt(
    tiny_models, lora_without_record, tmp_path
):
    image = tmp_path / "first.png"
    Image.new("RGB", (64, 48)).save(image)
    line = one_line(generate("--model", tiny_models["5b-I2V"], "--lora", lora_without_record, "--prompt", "a cat",
                             "--size", "160x96", "--frames", 9, "--image", image, "--out", tmp_path / "v.mp4"))  # fmt: skip
    assert "5b-I2V has a learned position table for 720x480 only" in line
    assert "was not trained with posemb_adapt (its plugins: none recorded); generate at 720x480" in line


@pytest.mark.slow
def test_generates_a_playable_mp4_at_a_size_training_did_not_default_to(
    tiny_models, t2v_trainer, train, tmp_path
):
    data, lora = mixed_dataset(tmp_path / "data"), tmp_path / "lora"
    plugins = ["--plugins", "aspect_bucket,rope_rescale", "--rope_mode", "ntk"]
    ok(train(t2v_trainer, script_args(tiny_models["5b"], data, lora, *plugins, steps=2)))  # 160x96 default
    out = tmp_path / "videos" / "portrait.mp4"
    result = generate("--model", tiny_models["5b"], "--lora", lora, "--prompt", "a red cat", "--size", "96x160",
                      "--frames", 9, "--steps", 2, "--seed", 3, "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert read_mp4(out)[:3] == (96, 160, 9)
    # The run's record: its plugins and RoPE mode, and the LoRA's scale (--lora_alpha 4 / --rank 4).
    assert (
        f"cogvx-ext: LoRA {lora}: plugins aspect_bucket, rope_rescale; rope_mode ntk; scale 1"
        in result.stderr
    )
    assert "100%" in result.stderr  # the denoising progress bar
    assert f"cogvx-ext: wrote {out} (96x160, 9 frames at 8 fps)" in result.stderr


@pytest.mark.slow
def test_5b_i2v_generates_at_another_size_with_the_trained_table_adaptation(
    tiny_models, i2v_trainer, train, tmp_path
):
    data, lora = mixed_dataset(tmp_path / "data"), tmp_path / "lora"
    plugins = ["--plugins", "aspect_bucket,rope_rescale,posemb_adapt"]
    ok(train(i2v_trainer, script_args(tiny_models["5b-I2V"], data, lora, *plugins, steps=2)))
    image = tmp_path / "first.png"
    Image.new("RGB", (256, 144), (200, 60, 30)).save(image)
    out = tmp_path / "portrait.mp4"
    result = generate("--model", tiny_models["5b-I2V"], "--lora", lora, "--prompt", "a red cat", "--image", image,
                      "--size", "96x160", "--frames", 9, "--steps", 2, "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert read_mp4(out)[:3] == (96, 160, 9)  # the stock pipeline refuses any size but 720x480
    assert f"--image {image} (256x144) centre-cropped to 86x144, the aspect of 96x160" in result.stderr
