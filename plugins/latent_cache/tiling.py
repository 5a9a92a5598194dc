"""VAE tiling where a clip's encode would not fit: decided per shape, the same way in ``cogvx-ext
cache fill`` and in training, so that a filled cache is found again.

The encode is judged as at a training run's start (the transformer, LoRA, text encoder and VAE on
the device: ``cogvx_ext.model.memory.encoding``), whatever is on the device now: a cache fill,
which holds the VAE alone, tiles the same shapes as the training run after it, so their cache keys
(which record the tiling) agree. The budget: ``--bucket_memory_budget`` less its margin when given,
else the memory of the CUDA device with the reserve rule of the card verdicts
(``cogvx_ext.model.memory.cards``); without either (a CPU), nothing is tiled here.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

import torch


class AutoTiling:
    """Turns a VAE's tiling on for the samples whose encode would not fit, and says so once."""

    def __init__(self) -> None:
        self.said = False

    def needed(self, sample: Any, vae: Any, args: argparse.Namespace) -> str | None:
        """Why this sample's encode needs tiling (one line), or None: not needed, already on, or
        no budget to judge by."""
        if getattr(vae, "use_tiling", True) or not hasattr(vae, "enable_tiling"):
            return None
        budget = _budget(vae, args)
        if budget is None:
            return None
        allowed, source = budget
        from cogvx_ext.api import format_bytes, vae_encode_bytes

        t = sample.target
        models = _models_at_start(args, vae)
        activations = vae_encode_bytes(vae, t.num_frames, t.height, t.width, tiled=False)
        if models + activations <= allowed:
            return None
        tiled = vae_encode_bytes(vae, t.num_frames, t.height, t.width, tiled=True)
        return (
            f"VAE tiling on for {t.width}x{t.height}x{t.num_frames}: encoding it needs about "
            f"{format_bytes(activations)} on top of the models' {format_bytes(models)} at a training run's "
            f"start, over the {format_bytes(int(allowed))} {source} (tiled: {format_bytes(tiled)}); tiled "
            "entries have keys of their own"
        )


def _budget(vae: Any, args: argparse.Namespace) -> tuple[float, str] | None:
    from cogvx_ext.api import DEFAULT_MARGIN, parse_bytes

    text = getattr(args, "bucket_memory_budget", None)
    if text:
        margin = getattr(args, "bucket_memory_margin", None)
        margin = DEFAULT_MARGIN if margin is None else float(margin)
        return parse_bytes(text) * (1 - margin), f"--bucket_memory_budget {text} allows"
    device = next(vae.parameters()).device
    if device.type != "cuda":
        return None
    from cogvx_ext.api import RESERVE_FACTOR, allocated_within

    total = torch.cuda.get_device_properties(device).total_memory
    return allocated_within(total), f"allocated that fit this GPU (reserved x {RESERVE_FACTOR:.3f})"


def _models_at_start(args: argparse.Namespace, vae: Any) -> int:
    """The transformer, LoRA, text encoder and VAE of the run, as at its start; the VAE alone when
    the model's configs cannot be read."""
    try:
        return _models_bytes(
            getattr(args, "pretrained_model_name_or_path", None),
            getattr(args, "model", None),
            int(getattr(args, "rank", None) or 128),
            str(vae.dtype),
        )
    except Exception:  # the configs cannot be had: the VAE alone (what this process holds)
        return sum(p.numel() * p.element_size() for p in vae.parameters())


@functools.lru_cache(maxsize=8)
def _models_bytes(pretrained: str | None, model: str | None, rank: int, dtype: str) -> int:
    from cogvx_ext.api import TrainingSetup, model_configs, models_at_start

    transformer, text, vae = model_configs(pretrained, model)
    precision = {"torch.float16": "fp16", "torch.bfloat16": "bf16"}.get(dtype, "no")
    setup = TrainingSetup.build(transformer, text, vae, rank=rank, lora_alpha=rank, mixed_precision=precision)
    return models_at_start(setup)
