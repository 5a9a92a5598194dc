"""Positional facts of a CogVideoX transformer, read from its config.

Everything here follows ../shared/docs/cogvideox-facts.md: 2b uses sin-cos, 5b RoPE of the 1.0
(linspace + crop) kind, 1.5 RoPE of the slice kind with patch_size_t = 2, 5b-I2V a learned table.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

# The CogVideoX VAE compresses 8x in space and 4x in time for every released model.
VAE_SPATIAL = 8
VAE_TEMPORAL = 4


@dataclass(frozen=True)
class ModelInfo:
    in_channels: int
    out_channels: int
    patch_size: int
    patch_size_t: int | None
    rotary: bool
    learned_posemb: bool
    sample_height: int  # latent units
    sample_width: int
    sample_frames: int  # pixel frames
    attention_head_dim: int
    ofs: bool
    temporal_compression_ratio: int = VAE_TEMPORAL
    text_tokens: int = 226  # max_text_seq_length: the text part of every sample's sequence

    @classmethod
    def from_config(cls, config) -> ModelInfo:
        get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        return cls(
            in_channels=get("in_channels", 16),
            out_channels=get("out_channels", 16),
            patch_size=get("patch_size", 2),
            patch_size_t=get("patch_size_t", None),
            rotary=bool(get("use_rotary_positional_embeddings", False)),
            learned_posemb=bool(get("use_learned_positional_embeddings", False)),
            sample_height=get("sample_height", 60),
            sample_width=get("sample_width", 90),
            sample_frames=get("sample_frames", 49),
            attention_head_dim=get("attention_head_dim", 64),
            ofs=get("ofs_embed_dim", None) is not None,
            temporal_compression_ratio=get("temporal_compression_ratio", VAE_TEMPORAL),
            text_tokens=get("max_text_seq_length", 226),
        )

    @classmethod
    def from_pretrained(cls, path: str, subfolder: str = "transformer") -> ModelInfo | None:
        """Read a local diffusers checkpoint's transformer config; None when it is not a local folder."""
        config = os.path.join(path, subfolder, "config.json")
        if not os.path.isfile(config):
            return None
        with open(config, encoding="utf-8") as f:
            return cls.from_config(json.load(f))

    @property
    def is_i2v(self) -> bool:
        # I2V models take the noised video latents and the image latents stacked on channels.
        return self.in_channels == 2 * self.out_channels

    @property
    def version(self) -> str:
        return "1.5" if self.patch_size_t else "1.0"

    @property
    def name(self) -> str:
        """The released model these settings match: 2b, 5b, 5b-I2V, 1.5-5B or 1.5-5B-I2V."""
        if self.version == "1.5":
            return "1.5-5B-I2V" if self.is_i2v else "1.5-5B"
        if self.is_i2v:
            return "5b-I2V"
        return "5b" if self.rotary else "2b"

    @property
    def sample_pixels(self) -> tuple[int, int]:
        """``(height, width)`` in pixels of the config's sample size: as far as CogVideoX 1.5's
        rotary positions reach."""
        return self.sample_height * VAE_SPATIAL, self.sample_width * VAE_SPATIAL

    @property
    def pixel_multiple(self) -> int:
        """Height and width must be multiples of this (VAE 8 x patch 2 = 16)."""
        return VAE_SPATIAL * self.patch_size

    def latent_frames(self, pixel_frames: int) -> int:
        return (pixel_frames - 1) // self.temporal_compression_ratio + 1

    def valid_frame_count(self, pixel_frames: int) -> bool:
        """4k+1 pixel frames; for 1.5 also an even latent count (odd ones need padding)."""
        if pixel_frames < 1 or (pixel_frames - 1) % self.temporal_compression_ratio:
            return False
        return not (self.patch_size_t and self.latent_frames(pixel_frames) % self.patch_size_t)

    def latent_shape(self, pixel_frames: int, height: int, width: int) -> tuple[int, int, int]:
        return (self.latent_frames(pixel_frames), height // VAE_SPATIAL, width // VAE_SPATIAL)

    def tokens(self, latent_shape: tuple[int, int, int]) -> int:
        """Video tokens the transformer sees for one sample of this latent shape."""
        f, h, w = latent_shape
        pt = self.patch_size_t or 1
        return ((f + pt - 1) // pt) * (h // self.patch_size) * (w // self.patch_size)

    @property
    def native_size(self) -> tuple[int, int, int]:
        """``(width, height, frames)`` the released models of this version were trained at:
        720x480x49 for 1.0 (13x30x45 = 17,550 tokens), 1360x768x81 for 1.5 (THUDM's size;
        11x48x85 = 44,880 tokens). The config's sample size says how far positions reach, not
        this (1.5's is 2400 px)."""
        return NATIVE_SIZE[self.version]


# (width, height, frames) the released checkpoints were trained at, per version (THUDM's model cards).
NATIVE_SIZE = {"1.0": (720, 480, 49), "1.5": (1360, 768, 81)}
# The scheduler's snr_shift_scale of the released checkpoints (scheduler/scheduler_config.json).
RELEASED_SNR_SHIFT = {"2b": 3.0, "5b": 1.0, "5b-I2V": 1.0, "1.5-5B": 1.0, "1.5-5B-I2V": 1.0}

# Positional settings of the released checkpoints (transformer configs on the Hugging Face Hub):
# what tools plan with when no model is at hand (`cogvx-ext plan --model 5b`), and what the tiny
# test models keep (cogvx_ext.testing). sample_height/width are latent units, sample_frames pixels.
_RELEASED_1_0 = dict(
    sample_height=60,
    sample_width=90,
    sample_frames=49,
    patch_size=2,
    patch_size_t=None,
    patch_bias=True,
    use_learned_positional_embeddings=False,
    ofs_embed_dim=None,
)
_RELEASED_1_5 = dict(
    _RELEASED_1_0, sample_height=300, sample_width=300, sample_frames=81, patch_size_t=2, patch_bias=False
)
RELEASED: dict[str, dict] = {
    "2b": dict(_RELEASED_1_0, in_channels=16, out_channels=16, use_rotary_positional_embeddings=False),
    "5b": dict(_RELEASED_1_0, in_channels=16, out_channels=16, use_rotary_positional_embeddings=True),
    "5b-I2V": dict(
        _RELEASED_1_0,
        in_channels=32,
        out_channels=16,
        use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=True,
    ),
    "1.5-5B": dict(_RELEASED_1_5, in_channels=16, out_channels=16, use_rotary_positional_embeddings=True),
    "1.5-5B-I2V": dict(
        _RELEASED_1_5,
        in_channels=32,
        out_channels=16,
        use_rotary_positional_embeddings=True,
        ofs_embed_dim=512,
    ),
}


def latent_shape_of(latents) -> tuple[int, int, int]:
    """``(frames, height, width)`` of a CogVideoX latent tensor ``[batch, frames, channels, height, width]``."""
    return (int(latents.shape[1]), int(latents.shape[3]), int(latents.shape[4]))


def released_model(name: str) -> ModelInfo:
    return ModelInfo.from_config(RELEASED[name])


def released_name_from_id(model_id: str) -> str | None:
    """The released model a Hub id names: ``THUDM/CogVideoX1.5-5B-I2V`` -> ``1.5-5B-I2V``; None
    when the name says nothing."""
    import re

    text = model_id.lower().replace("_", "-")
    if "cogvideox" not in text:
        return None
    i2v = "i2v" in text
    if re.search(r"cogvideox-?1\.5", text):
        return "1.5-5B" + ("-I2V" if i2v else "")
    if "2b" in text:
        return "2b"
    if "5b" in text:
        return "5b-I2V" if i2v else "5b"
    return None


def describe_rules(model: ModelInfo) -> str:
    """The positional rules a plan follows for this model, in a few words."""
    frames = f"trained on {model.sample_frames} frames"
    if model.version == "1.5":
        return f"RoPE 1.5, up to {model.sample_width * VAE_SPATIAL} px a side, an even latent frame count, {frames}"
    size = f"{model.sample_width * VAE_SPATIAL}x{model.sample_height * VAE_SPATIAL}"
    if model.learned_posemb:
        return f"RoPE 1.0 and a learned position table of {size}x{model.sample_frames}"
    if model.rotary:
        return f"RoPE 1.0 fitted to {size}, {frames}"
    return f"sin-cos positions at any size, {frames}"


def find_model(
    pretrained: str | None, name: str | None = None, revision: str | None = None
) -> tuple[ModelInfo | None, str]:
    """The model a tool plans for, without downloading anything, and where its rules came from:
    a local folder's ``transformer/config.json``; a Hub id's config in the local Hugging Face cache;
    else the released model the id names (``THUDM/CogVideoX-5b`` -> 5b); else ``name`` (``--model``);
    with neither, 5b. ``None`` as the model when nothing tells."""
    if pretrained:
        found = ModelInfo.from_pretrained(pretrained)
        if found is not None:
            return found, f"{os.path.join(pretrained, 'transformer', 'config.json')}"
        if not os.path.isdir(pretrained):
            config = _hub_cache_config(pretrained, revision)
            if config is not None:
                return ModelInfo.from_config(config), f"{pretrained}'s config in the Hugging Face cache"
            released = released_name_from_id(pretrained)
            if released is not None:
                return released_model(released), f"{pretrained}, the released model its name says"
        if name is None:
            return None, pretrained
    if name:
        return released_model(name), f"--model {name}"
    return released_model("5b"), "the default (no --pretrained_model_name_or_path or --model)"


def find_snr_shift(pretrained: str | None, model: ModelInfo | None, revision: str | None = None) -> float:
    """The model's own SNR shift (the scheduler's ``snr_shift_scale``), without downloading: a local
    folder's or the Hugging Face cache's ``scheduler/scheduler_config.json``, else the released
    model's (2b 3.0, the others 1.0)."""
    config = None
    if pretrained:
        local = os.path.join(pretrained, "scheduler", "scheduler_config.json")
        if os.path.isfile(local):
            with open(local, encoding="utf-8") as f:
                config = json.load(f)
        elif not os.path.isdir(pretrained):
            config = _hub_cache_config(pretrained, revision, "scheduler/scheduler_config.json")
    if config and "snr_shift_scale" in config:
        return float(config["snr_shift_scale"])
    return RELEASED_SNR_SHIFT.get(model.name if model else "5b", 1.0)


def _hub_cache_config(
    model_id: str, revision: str | None, filename: str = "transformer/config.json"
) -> dict | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(model_id, filename, revision=revision)
    except Exception:  # not a repo id
        return None
    if not isinstance(path, str):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
