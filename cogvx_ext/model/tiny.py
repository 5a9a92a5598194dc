"""Tiny random CogVideoX models that keep the released checkpoints' positional settings (cogvx_ext.testing
is their public face; ``cogvx-ext demo`` builds one too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cogvx_ext.model.facts import RELEASED

MODEL_KINDS = ("2b", "5b", "5b-I2V", "1.5-5B", "1.5-5B-I2V")


LATENT_CHANNELS = 4  # 16 in the released VAEs


TIME_EMBED_DIM = 8  # 512 released; the 1.5-I2V ofs embedding must have the same width


# The 2b checkpoint ships its VAE with a different latent scale from every 5B one.
_VAE_SCALING_FACTOR = {"2b": 1.15258426}


_DEFAULT_VAE_SCALING_FACTOR = 0.7


# Enough pieces that any lower-case English prompt tokenizes (unknown letters become <unk>).
_TOKENIZER_WORDS = (
    "a an the of in on at and with to from is are by over under into near its his her their "
    "cat dog bird fish car ball man woman person child tree house road river sea sky city "
    "red green blue yellow white black orange purple bright dark big small "
    "moving runs walks flies swims jumps drives rolls turns falls rises slowly quickly "
    "video clip scene frame camera light shadow square circle gradient background"
).split()


def _is_i2v(kind: str) -> bool:
    return kind.endswith("I2V")


def _check_kind(kind: str) -> None:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")


def tiny_transformer_config(kind: str) -> dict[str, Any]:
    """Keyword arguments for a tiny ``CogVideoXTransformer3DModel`` of this kind.

    Positional settings are the released model's; widths and depth are shrunk. The text length
    stays 226: the scripts tokenize to ``max_text_seq_length``, the pipelines always to 226, and
    the 5b-I2V learned table has ``226 + 13 * 30 * 45`` rows.
    """
    _check_kind(kind)
    config = dict(RELEASED[kind])  # positions and shapes as released
    config.update(
        num_attention_heads=2,
        attention_head_dim=16,  # RoPE needs a multiple of 16
        in_channels=LATENT_CHANNELS * (2 if _is_i2v(kind) else 1),  # I2V stacks image latents
        out_channels=LATENT_CHANNELS,
        time_embed_dim=TIME_EMBED_DIM,
        ofs_embed_dim=TIME_EMBED_DIM if config["ofs_embed_dim"] else None,
        text_embed_dim=32,
        num_layers=1,
        max_text_seq_length=226,
        temporal_compression_ratio=4,
    )
    return config


def _tiny_vae_config(kind: str) -> dict[str, Any]:
    # Four blocks as released: 8x in space (three downsamples), 4x in time (two compress_time).
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=LATENT_CHANNELS,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
        scaling_factor=_VAE_SCALING_FACTOR.get(kind, _DEFAULT_VAE_SCALING_FACTOR),
        invert_scale_latents=kind.startswith("1.5"),
    )


def _tiny_tokenizer():
    from transformers import T5Tokenizer

    # A unigram vocabulary like T5's sentencepiece one: whole words, then single letters and
    # digits so that any word still splits into known pieces.
    specials = ["<pad>", "</s>", "<unk>"]
    pieces = ["▁" + word for word in _TOKENIZER_WORDS] + ["▁"]
    pieces += list("abcdefghijklmnopqrstuvwxyz0123456789.,'-")
    vocab = [(piece, 0.0) for piece in specials] + [(piece, -1.0 - i / 100) for i, piece in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=226)


def model_dir_name(kind: str) -> str:
    """The folder name ``build_tiny_model`` uses for this kind.

    It matters: the diffusers scripts load the transformer in bfloat16 when the model path
    contains "5b" (any case) and in float16 otherwise, as for the released checkpoints.
    """
    _check_kind(kind)
    return f"tiny-cogvideox-{kind.lower()}"


def build_tiny_model(out_dir: str | Path, kind: str = "5b", seed: int = 0) -> Path:
    """Write a tiny random CogVideoX of this kind in diffusers format; return its folder.

    The model goes to ``out_dir / model_dir_name(kind)`` (see there why the name matters) and
    loads offline with ``from_pretrained(path, subfolder=...)`` or as a whole pipeline
    (``CogVideoXPipeline``, or ``CogVideoXImageToVideoPipeline`` for the I2V kinds). Weights are
    float32 and depend only on ``kind`` and ``seed``.
    """
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDPMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    _check_kind(kind)
    tokenizer = _tiny_tokenizer()
    # Leave the caller's random state alone: weights come from this seed only.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(**tiny_transformer_config(kind))
        vae = AutoencoderKLCogVideoX(**_tiny_vae_config(kind))
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=32,  # = the transformer's text_embed_dim
                d_kv=16,
                d_ff=64,
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
                feed_forward_proj="gated-gelu",  # as in t5-v1_1-xxl
                dropout_rate=0.0,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
    scheduler = CogVideoXDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        snr_shift_scale=3.0 if kind == "2b" else 1.0,
        timestep_spacing="trailing",
    )
    pipeline_class = CogVideoXImageToVideoPipeline if _is_i2v(kind) else CogVideoXPipeline
    pipe = pipeline_class(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    path = Path(out_dir) / model_dir_name(kind)
    pipe.save_pretrained(path, safe_serialization=True)
    return path
