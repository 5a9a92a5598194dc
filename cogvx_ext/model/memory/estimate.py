"""The estimate of a step's peak, term by term; the largest batch that fits a budget; advice when none does."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cogvx_ext.model.facts import VAE_SPATIAL
from cogvx_ext.model.memory.resident import (
    optimizer_state_bytes,
    text_encoder_bytes,
    transformer_bytes,
    vae_bytes,
)
from cogvx_ext.model.memory.setup import DEFAULT_MARGIN, TrainingSetup
from cogvx_ext.model.memory.trace import (
    _FIRST_DEPTH,
    _extrapolate,
    activation_peak,
    step_activation_peak,
    vae_decode_peak,
    validation_latent,
)


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak allocated accelerator memory of one training step, by term (bytes)."""

    latent: tuple[int, int, int]
    batch_size: int
    terms: dict[str, int] = field(hash=False)
    validation_terms: dict[str, int] | None = field(default=None, hash=False)

    @property
    def train_peak(self) -> int:
        return sum(self.terms.values())

    @property
    def validation_peak(self) -> int | None:
        return None if self.validation_terms is None else sum(self.validation_terms.values())

    @property
    def peak(self) -> int:
        return max(self.train_peak, self.validation_peak or 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "peak_bytes": self.peak,
            "train_peak_bytes": self.train_peak,
            "validation_peak_bytes": self.validation_peak,
            "terms": dict(self.terms),
            "validation_terms": None if self.validation_terms is None else dict(self.validation_terms),
        }


TERM_LABELS = {
    "transformer": "transformer weights (frozen)",
    "lora": "LoRA weights",
    "lora_grads": "LoRA gradients",
    "optimizer": "optimizer states",
    "text_encoder": "text encoder weights",
    "vae": "VAE weights",
    "activations": "step peak: batch, activations, optimizer temporaries",
    "validation_vae": "validation pipeline's own VAE",
    "inference": "validation peak: transformer (CFG batch 2) or VAE decode",
}


@functools.lru_cache(maxsize=64)
def _validation_terms(setup: TrainingSetup) -> dict[str, int] | None:
    latent = validation_latent(setup)
    if latent is None:
        return None
    weights = transformer_bytes(setup)
    states, _ = optimizer_state_bytes(setup, weights)
    inference = _extrapolate(
        lambda n: step_activation_peak(setup, latent, 2, n, train=False), setup.num_layers, _FIRST_DEPTH
    )
    decode = vae_decode_peak(setup, latent)
    return {
        "transformer": weights.base,
        "lora": weights.lora,
        "optimizer": states,
        "text_encoder": text_encoder_bytes(setup),  # the pipeline moves it to the device
        "vae": vae_bytes(setup) if setup.vae_on_device else 0,
        "validation_vae": vae_bytes(setup),
        "inference": max(inference, decode),
    }


def estimate(setup: TrainingSetup, latent: tuple[int, int, int], batch_size: int = 1) -> MemoryEstimate:
    """The estimate for one batch of ``batch_size`` samples of latent shape ``(frames, h, w)``."""
    weights = transformer_bytes(setup)
    states, step_temporaries = optimizer_state_bytes(setup, weights)
    activations = _extrapolate(lambda b: activation_peak(setup, latent, b), batch_size)
    terms = {
        "transformer": weights.base,
        "lora": weights.lora,
        "lora_grads": weights.lora,
        "optimizer": states,
        "text_encoder": text_encoder_bytes(setup) if setup.text_encoder_on_device else 0,
        "vae": vae_bytes(setup) if setup.vae_on_device else 0,
        "activations": max(activations, step_temporaries),
    }
    return MemoryEstimate(tuple(latent), int(batch_size), terms, _validation_terms(setup))


def largest_batch(
    setup: TrainingSetup,
    latent: tuple[int, int, int],
    budget: int,
    margin: float = DEFAULT_MARGIN,
    limit: int = 256,
) -> int:
    """The largest batch whose estimated peak stays within ``budget x (1 - margin)``; 0 if none."""
    allowed = budget * (1 - margin)
    if estimate(setup, latent, 1).peak > allowed:
        return 0
    one, two = estimate(setup, latent, 1), estimate(setup, latent, 2)
    per_sample = max(1, two.train_peak - one.train_peak)
    fixed = one.train_peak - per_sample
    size = max(1, min(limit, int((allowed - fixed) // per_sample)))
    return size


def _largest_fitting(candidates: list, fits: Callable[[Any], bool]) -> Any:
    """The first of ``candidates`` (largest first, memory falling along the list) that fits, by
    binary search; None when none does."""
    low, high = 0, len(candidates)
    while low < high:
        middle = (low + high) // 2
        if fits(candidates[middle]):
            high = middle
        else:
            low = middle + 1
    return candidates[low] if low < len(candidates) else None


def advice(
    setup: TrainingSetup, latent: tuple[int, int, int], budget: int, margin: float = DEFAULT_MARGIN
) -> str:
    """What would make one sample of this shape fit the budget, tried in order of cost to the run."""
    allowed = budget * (1 - margin)
    frames, height, width = latent
    tips: list[str] = []
    if (
        not setup.gradient_checkpointing
        and estimate(replace(setup, gradient_checkpointing=True), latent).peak <= allowed
    ):
        tips.append("--gradient_checkpointing")
    if (
        setup.validation is not None
        and estimate(replace(setup, validation=None), latent).train_peak <= allowed
    ):
        tips.append("no --validation_prompt (the validation pipeline is the peak)")
    if (
        setup.text_encoder_on_device
        and estimate(replace(setup, text_encoder_on_device=False), latent).peak <= allowed
    ):
        tips.append("cached prompt embeddings (latent_cache: the text encoder leaves the device)")
    model = setup.model
    step = model.patch_size_t or 1
    counts = [f for f in range(frames - step, 0, -step)]  # fewer latent frames, largest first
    fits = _largest_fitting(counts, lambda f: estimate(setup, (f, height, width)).peak <= allowed)
    if fits is not None:
        tips.append(f"at most {(fits - 1) * model.temporal_compression_ratio + 1} frames")
    scales = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25]

    def scaled(scale: float) -> tuple[int, int]:
        return (
            max(2, int(height * math.sqrt(scale)) // 2 * 2),
            max(2, int(width * math.sqrt(scale)) // 2 * 2),
        )

    scale = _largest_fitting(scales, lambda s: estimate(setup, (frames, *scaled(s))).peak <= allowed)
    if scale is not None:
        h, w = scaled(scale)
        tips.append(f"an area of at most {w * VAE_SPATIAL}x{h * VAE_SPATIAL} ({scale:.0%} of the pixels)")
    return ", or ".join(tips) if tips else "a smaller model or a larger budget"
