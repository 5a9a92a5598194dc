"""cogvx_ext.testing: tiny models keep the released positional settings; clips decode as claimed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import decord
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid
from safetensors.torch import load_file
from transformers import AutoTokenizer, T5Tokenizer

from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.testing import (
    MODEL_KINDS,
    build_tiny_model,
    model_dir_name,
    tiny_transformer_config,
    write_bad_clips,
    write_clip,
    write_dataset,
)

# What the released checkpoints have (../shared/docs/cogvideox-facts.md).
RELEASED = {
    #              sample h, w, frames  patch_t  rotary learned I2V    ofs    VAE scale   invert
    "2b": ((60, 90, 49), None, False, False, False, False, 1.15258426, False),
    "5b": ((60, 90, 49), None, True, False, False, False, 0.7, False),
    "5b-I2V": ((60, 90, 49), None, True, True, True, False, 0.7, False),
    "1.5-5B": ((300, 300, 81), 2, True, False, False, False, 0.7, True),
    "1.5-5B-I2V": ((300, 300, 81), 2, True, False, True, True, 0.7, True),
}


def read_config(folder, subfolder):
    return json.loads((folder / subfolder / "config.json").read_text())


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_tiny_model_keeps_the_released_positional_settings(tiny_models, kind):
    (sample, patch_t, rotary, learned, i2v, ofs, scaling, invert) = RELEASED[kind]
    folder = tiny_models[kind]
    transformer = read_config(folder, "transformer")
    vae = read_config(folder, "vae")

    assert (transformer["sample_height"], transformer["sample_width"], transformer["sample_frames"]) == sample
    assert transformer["patch_size"] == 2 and transformer["patch_size_t"] == patch_t
    assert transformer["patch_bias"] is (patch_t is None)  # 1.5 checkpoints have no patch bias
    assert transformer["use_rotary_positional_embeddings"] is rotary
    assert transformer["use_learned_positional_embeddings"] is learned
    assert transformer["in_channels"] == transformer["out_channels"] * (2 if i2v else 1)
    assert transformer["out_channels"] == vae["latent_channels"]
    assert transformer["ofs_embed_dim"] == (transformer["time_embed_dim"] if ofs else None)
    assert transformer["text_embed_dim"] == read_config(folder, "text_encoder")["d_model"]
    assert transformer["max_text_seq_length"] == 226
    assert vae["scaling_factor"] == scaling and vae["invert_scale_latents"] is invert
    assert len(vae["block_out_channels"]) == 4  # 8x in space
    assert ModelInfo.from_pretrained(str(folder)).name == kind

    pipeline = json.loads((folder / "model_index.json").read_text())["_class_name"]
    assert pipeline == ("CogVideoXImageToVideoPipeline" if i2v else "CogVideoXPipeline")
    # The scripts load the transformer in bfloat16 when the path holds "5b".
    assert ("5b" in str(folder.name).lower()) is ("5B" in kind.upper()) and folder.name == model_dir_name(
        kind
    )


def rotary_embedding(config, latent_shape):
    frames, height, width = latent_shape
    grid = (height // config.patch_size, width // config.patch_size)
    base = (config.sample_height // config.patch_size, config.sample_width // config.patch_size)
    if config.patch_size_t:  # 1.5: integer positions in a max_size grid
        return get_3d_rotary_pos_embed(
            config.attention_head_dim,
            None,
            grid,
            frames // config.patch_size_t,
            grid_type="slice",
            max_size=base,
        )
    crops = get_resize_crop_region_for_grid(grid, base[1], base[0])
    return get_3d_rotary_pos_embed(config.attention_head_dim, crops, grid, frames)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_tiny_transformer_runs_at_its_default_size(tiny_models, kind):
    transformer = CogVideoXTransformer3DModel.from_pretrained(tiny_models[kind], subfolder="transformer")
    config = transformer.config
    # 1.0: the whole default sample (13 x 60 x 90 latents), which the 5b-I2V learned table needs.
    # 1.5: the default latent picture (300 x 300) with 2 latent frames; all 22 would be 250k tokens.
    frames = 2 if config.patch_size_t else (config.sample_frames - 1) // 4 + 1
    shape = (frames, config.sample_height, config.sample_width)
    torch.manual_seed(0)
    hidden = torch.randn(1, frames, config.in_channels, *shape[1:])
    extra = {"ofs": torch.tensor([2.0])} if config.ofs_embed_dim else {}
    rope = rotary_embedding(config, shape) if config.use_rotary_positional_embeddings else None
    with torch.no_grad():
        out = transformer(
            hidden_states=hidden,
            encoder_hidden_states=torch.randn(1, config.max_text_seq_length, config.text_embed_dim),
            timestep=torch.tensor([500]),
            image_rotary_emb=rope,
            return_dict=False,
            **extra,
        )[0]
    assert out.shape == (1, frames, config.out_channels, *shape[1:])
    assert torch.isfinite(out).all() and out.std() > 0


def test_tiny_5b_i2v_has_the_learned_table_and_its_limits(tiny_models):
    folder = tiny_models["5b-I2V"]
    table = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")[
        "patch_embed.pos_embedding"
    ]
    assert table.shape == (1, 226 + 13 * 30 * 45, 32)
    transformer = CogVideoXTransformer3DModel.from_pretrained(folder, subfolder="transformer")
    hidden = torch.randn(1, 3, 8, 60, 88)  # two latent columns short of 720 pixels
    with pytest.raises(ValueError, match="different resolution"):
        transformer(
            hidden_states=hidden,
            encoder_hidden_states=torch.randn(1, 226, 32),
            timestep=torch.tensor([1]),
            image_rotary_emb=rotary_embedding(transformer.config, (3, 60, 88)),
        )


def test_tiny_vae_compresses_like_the_released_one(tiny_models):
    vae = AutoencoderKLCogVideoX.from_pretrained(tiny_models["5b"], subfolder="vae")
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 9, 96, 160)).latent_dist.mean
    assert latents.shape == (1, 4, 3, 12, 20)  # 9 frames -> 3, 8x in space


@pytest.mark.parametrize("tokenizer_class", [AutoTokenizer, T5Tokenizer])
def test_tokenizer_loads_from_the_model_folder_and_pads_to_226(tiny_models, tokenizer_class):
    tokenizer = tokenizer_class.from_pretrained(tiny_models["5b"], subfolder="tokenizer")
    prompts = ["a red ball rolls", "Zebra-like QUIRKY words 123, never in the vocabulary"]
    ids = tokenizer(
        prompts, padding="max_length", max_length=226, truncation=True, return_tensors="pt"
    ).input_ids
    assert ids.shape == (2, 226)
    lengths = (ids != tokenizer.pad_token_id).sum(dim=1)
    assert ids[0, lengths[0] - 1] == tokenizer.eos_token_id
    assert lengths[1] > lengths[0] > 1


def test_whole_pipelines_load_offline(tiny_models):
    # In a fresh process with the Hub switched off, as the scripts' validation loads them.
    code = (
        "import sys, diffusers\n"
        "for name, path in zip(sys.argv[1::2], sys.argv[2::2]):\n"
        "    pipe = getattr(diffusers, name).from_pretrained(path)\n"
        "    assert pipe.transformer.config.max_text_seq_length == 226\n"
        "print('loaded', len(sys.argv) // 2)\n"
    )
    argv = []
    for kind, folder in tiny_models.items():
        argv += [
            "CogVideoXImageToVideoPipeline" if kind.endswith("I2V") else "CogVideoXPipeline",
            str(folder),
        ]
    result = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"loaded {len(MODEL_KINDS)}" in result.stdout


def test_build_depends_on_seed_only_and_leaves_global_rng_alone(tmp_path):
    def weights(folder):
        return load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")

    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = weights(build_tiny_model(tmp_path / "a", "2b", seed=1))
    assert torch.equal(torch.rand(1), expected_next)
    again = weights(build_tiny_model(tmp_path / "b", "2b", seed=1))
    other = weights(build_tiny_model(tmp_path / "c", "2b", seed=2))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="1.5-5B-I2V"):
        tiny_transformer_config("5B")
    with pytest.raises(ValueError, match="unknown model kind"):
        build_tiny_model(tmp_path, "cogvideox-5b")


# ---------------------------------------------------------------------------------------------
# Clips


def decode(path, **kwargs):
    reader = decord.VideoReader(str(path), **kwargs)
    return reader, reader.get_batch(list(range(len(reader)))).asnumpy()


@pytest.mark.parametrize(
    "width,height,num_frames", [(160, 96, 9), (200, 120, 12), (34, 250, 5), (720, 480, 1)]
)
def test_write_clip_makes_a_moving_h264_clip_decord_reads(tmp_path, width, height, num_frames):
    path = write_clip(tmp_path / "clip.mp4", width, height, num_frames, fps=12)
    reader, frames = decode(path)
    assert frames.shape == (num_frames, height, width, 3)
    assert reader.get_avg_fps() == pytest.approx(12)
    assert frames.std() > 10  # not a flat picture
    if num_frames > 1:
        assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 5  # it moves


def test_write_clip_content_follows_the_seed(tmp_path):
    frames = [decode(write_clip(tmp_path / f"{seed}.mp4", 64, 64, 3, seed=seed))[1] for seed in (0, 0, 1)]
    assert np.array_equal(frames[0], frames[1])
    assert np.abs(frames[0].astype(int) - frames[2].astype(int)).mean() > 10


@pytest.mark.parametrize(
    "width,height,num_frames,message",
    [
        (161, 96, 9, "even"),
        (160, 95, 9, "even"),
        (48, 96, 9, "decord"),
        (16, 16, 9, "decord"),
        (64, 64, 0, "frame"),
    ],
)
def test_write_clip_refuses_sizes_that_cannot_be_written_or_read(
    tmp_path, width, height, num_frames, message
):
    with pytest.raises(ValueError, match=message):
        write_clip(tmp_path / "clip.mp4", width, height, num_frames)
    assert not (tmp_path / "clip.mp4").exists()


def test_write_dataset_writes_the_scripts_format(tmp_path):
    root = write_dataset(tmp_path / "data", [(160, 96, 9), (96, 160, 5, 24)], prompts=["a cat", "a dog"])
    prompts = (root / "prompts.txt").read_text().splitlines()
    videos = (root / "videos.txt").read_text().splitlines()
    assert prompts == ["a cat", "a dog"]
    assert len(videos) == 2 and all(v.startswith("videos/") for v in videos)
    first, second = (decode(root / v) for v in videos)
    assert first[1].shape == (9, 96, 160, 3) and second[1].shape == (5, 160, 96, 3)
    assert second[0].get_avg_fps() == pytest.approx(24)
    assert not np.array_equal(first[1][0, :90, :90], second[1][0, :90, :90])  # one seed per clip


def test_write_dataset_checks_prompts(tmp_path):
    with pytest.raises(ValueError, match="2 clips"):
        write_dataset(tmp_path, [(64, 64, 1), (64, 64, 1)], prompts=["one"])
    with pytest.raises(ValueError, match="one non-blank line"):
        write_dataset(tmp_path, [(64, 64, 1)], prompts=["two\nlines"])


def test_bad_clips_are_what_their_names_say(tmp_path):
    clips = write_bad_clips(tmp_path)
    assert set(clips) == {
        "truncated",
        "not_a_video",
        "zero_frames",
        "one_frame",
        "tiny_32x32",
        "wide_8x1",
        "tall_1x8",
        "three_frames",
    }
    shapes = {
        name: decode(clips[name])[1].shape for name in ("one_frame", "tiny_32x32", "wide_8x1", "tall_1x8")
    }
    assert shapes == {
        "one_frame": (1, 64, 64, 3),
        "tiny_32x32": (9, 32, 32, 3),
        "wide_8x1": (9, 32, 256, 3),
        "tall_1x8": (9, 256, 32, 3),
    }
    assert len(decord.VideoReader(str(clips["three_frames"]))) == 3

    assert clips["truncated"].read_bytes()[4:8] == b"ftyp"  # starts like an mp4...
    assert clips["zero_frames"].read_bytes()[4:8] == b"ftyp"
    assert b"moov" in clips["zero_frames"].read_bytes()  # ...a complete one, without frames
    assert clips["not_a_video"].read_text().startswith("this is a text file")
    for name in ("truncated", "not_a_video", "zero_frames"):
        with pytest.raises(Exception):  # noqa: B017 - decord raises RuntimeError or its DECORDError
            decord.VideoReader(str(clips[name]))
