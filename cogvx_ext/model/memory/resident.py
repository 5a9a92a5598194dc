"""Bytes that stay on the device for the whole run: weights, the LoRA, its gradients, optimizer states."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import astuple, dataclass

from cogvx_ext.model.memory.setup import TrainingSetup, _plain
from cogvx_ext.model.memory.store import stored
from cogvx_ext.model.memory.trace import _build_transformer, _dtype, traced_setup

# bitsandbytes' 8-bit optimizers quantize their states in blocks of 256 with a float32 absmax each.
_BNB_BLOCK = 256


@dataclass(frozen=True)
class ParameterBytes:
    base: int  # frozen transformer weights and buffers
    lora: int  # trainable parameters
    lora_count: int


@functools.lru_cache(maxsize=32)
def transformer_bytes(setup: TrainingSetup) -> ParameterBytes:
    """Bytes of the full transformer's frozen weights (buffers included) and of its LoRA.

    Counted on copies of 2 and 3 blocks and extended to the real depth (every block has the same
    parameters): building all of a 5b's 42 blocks with their LoRA takes seconds, two small
    copies a fraction of that."""
    depth = int(setup.transformer_config.get("num_layers", 30))
    setup = traced_setup(setup)
    if depth <= 3:
        return _counted(setup, depth)
    two, three = astuple(_counted(setup, 2)), astuple(_counted(setup, 3))
    return ParameterBytes(*(a + (depth - 2) * (b - a) for a, b in zip(two, three)))


@functools.lru_cache(maxsize=32)
def _counted(setup: TrainingSetup, layers: int) -> ParameterBytes:
    def count() -> dict[str, int]:
        transformer = _build_transformer(setup, {**_plain(setup.transformer_config), "num_layers": layers})
        found = {"base": 0, "lora": 0, "lora_count": 0}
        for p in transformer.parameters():
            size = p.numel() * p.element_size()
            if p.requires_grad:
                found["lora"] += size
                found["lora_count"] += p.numel()
            else:
                found["base"] += size
        found["base"] += sum(b.numel() * b.element_size() for b in transformer.buffers())
        return found

    # Kept on disk with the traces: a run that finds them there imports no model code at all.
    counted: dict[str, int] = {}

    def part(name: str) -> int:
        if not counted:
            counted.update(count())
        return counted[name]

    fields = {k: v for k, v in setup.__dict__.items()}
    return ParameterBytes(**{name: stored(f"params.{name}", [fields, layers], lambda n=name: part(n))
                             for name in ("base", "lora", "lora_count")})  # fmt: skip


def text_encoder_bytes(setup: TrainingSetup) -> int:
    """A T5 encoder's weights in the weight dtype, from its config (embedding, 24 gated-GELU blocks)."""
    c = json.loads(setup.text_encoder)
    d, ff, heads, kv = c.get("d_model", 4096), c.get("d_ff", 10240), c.get("num_heads", 64), c.get("d_kv", 64)
    gated = str(c.get("feed_forward_proj", "gated-gelu")).startswith("gated")
    per_layer = 4 * d * heads * kv + (3 if gated else 2) * d * ff + 2 * d
    count = c.get("vocab_size", 32128) * d + c.get("num_layers", 24) * per_layer + d
    count += c.get("relative_attention_num_buckets", 32) * heads
    return count * _dtype(setup).itemsize


@functools.lru_cache(maxsize=8)
def _vae_count(vae_config: str) -> int:
    def count() -> int:
        import torch
        from diffusers import AutoencoderKLCogVideoX

        with torch.device("meta"):
            vae = AutoencoderKLCogVideoX.from_config(_plain(json.loads(vae_config)))
        return sum(p.numel() for p in vae.parameters())

    return stored("vae_params", [vae_config], count)


def vae_bytes(setup: TrainingSetup) -> int:
    return _vae_count(setup.vae) * _dtype(setup).itemsize


def optimizer_state_bytes(setup: TrainingSetup, lora: ParameterBytes) -> tuple[int, int]:
    """(states, the step's own temporaries) of the optimizer over the LoRA parameters."""
    if setup.optimizer == "prodigy":
        return 4 * lora.lora, 0  # p0, s, exp_avg, exp_avg_sq; updated one tensor at a time
    if setup.use_8bit_adam:
        per_state = lora.lora_count + 4 * math.ceil(lora.lora_count / _BNB_BLOCK)
        return 2 * per_state, 0  # fused kernel
    # torch.optim.AdamW/Adam, foreach on CUDA: exp_avg and exp_avg_sq, and sqrt(exp_avg_sq) as a
    # temporary list during the step.
    return 2 * lora.lora, lora.lora
