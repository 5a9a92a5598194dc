"""The memory of encoding clips with the VAE: filling the latent cache, or a training run's start.

The scripts encode every clip before their first step, one video at a time, with the transformer,
the LoRA, the text encoder and the VAE already on the device; ``cogvx-ext cache fill`` holds the
VAE alone. The encoder runs on 8 frames at a time at full resolution, so its activations grow with
the picture's area, hardly with the frame count; VAE tiling encodes tiles of half the VAE's sample
size (240x360 for CogVideoX) instead and keeps them small. Slicing splits a batch of videos: with
one video at a time it changes nothing. The activations are traced with fake tensors
(``trace.vae_encode_peak``), as the training step is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cogvx_ext.model.memory.resident import text_encoder_bytes, transformer_bytes, vae_bytes
from cogvx_ext.model.memory.setup import TrainingSetup, _plain
from cogvx_ext.model.memory.trace import vae_encode_peak, vae_tile_settings

_PRECISIONS = {"torch.float32": "no", "torch.float16": "fp16", "torch.bfloat16": "bf16"}


@dataclass(frozen=True)
class EncodeEstimate:
    """Encoding one video of ``width x height x frames`` pixels (bytes)."""

    width: int
    height: int
    frames: int
    vae: int  # the VAE's weights
    activations: int  # without tiling
    models_at_start: int  # training: transformer, LoRA, text encoder and VAE, before the first step
    tiled_activations: int | None = None  # with tiling, when asked for

    @property
    def cache_fill_peak(self) -> int:
        return self.vae + self.activations

    @property
    def training_start_peak(self) -> int:
        return self.models_at_start + self.activations

    def to_json(self) -> dict[str, Any]:
        return {
            "bucket": f"{self.width}x{self.height}x{self.frames}",
            "vae_bytes": self.vae,
            "activation_bytes": self.activations,
            "tiled_activation_bytes": self.tiled_activations,
            "cache_fill_peak_bytes": self.cache_fill_peak,
            "training_start_peak_bytes": self.training_start_peak,
            "tiled_training_start_peak_bytes": None
            if self.tiled_activations is None
            else self.models_at_start + self.tiled_activations,
        }


def estimate_encoding(
    setup: TrainingSetup, frames: int, height: int, width: int, tiled: bool = False
) -> EncodeEstimate:
    """Encoding one video of this size with ``setup``'s VAE in its weight dtype; ``tiled`` adds the
    figure with tiling at the VAE's default tile size."""
    return EncodeEstimate(
        width=width,
        height=height,
        frames=frames,
        vae=vae_bytes(setup),
        activations=vae_encode_peak(setup.vae, setup.mixed_precision, frames, height, width),
        models_at_start=models_at_start(setup),
        tiled_activations=vae_encode_peak(setup.vae, setup.mixed_precision, frames, height, width, ())
        if tiled
        else None,
    )


def models_at_start(setup: TrainingSetup) -> int:
    """What is on the device when a training run encodes: the transformer, its LoRA, the text
    encoder and the VAE (no gradients or optimizer states yet)."""
    weights = transformer_bytes(setup)
    return weights.base + weights.lora + text_encoder_bytes(setup) + vae_bytes(setup)


def vae_encode_bytes(vae: Any, frames: int, height: int, width: int, tiled: bool | None = None) -> int:
    """The activation peak of ``vae`` (a loaded ``AutoencoderKLCogVideoX``) encoding one video of
    this size, in its dtype, tiled as it is set (or as ``tiled`` says, at its tile sizes)."""
    config = json.dumps(_plain(dict(vae.config)), sort_keys=True, default=list)
    precision = _PRECISIONS.get(str(vae.dtype), "no")
    tiling = bool(getattr(vae, "use_tiling", False)) if tiled is None else tiled
    return vae_encode_peak(
        config, precision, frames, height, width, vae_tile_settings(vae) if tiling else None
    )
