"""The configs of the model a run trains: a local folder, the Hub cache, or a released model's."""

from __future__ import annotations

import json
import os
from typing import Any

from cogvx_ext.base.errors import UsageError
from cogvx_ext.model.facts import RELEASED, released_name_from_id

# Widths and depth of the released transformers (their transformer/config.json); model.RELEASED
# has the positional settings.
_RELEASED_WIDTHS = {
    "2b": dict(num_attention_heads=30, num_layers=30),
    "5b": dict(num_attention_heads=48, num_layers=42),
    "5b-I2V": dict(num_attention_heads=48, num_layers=42),
    "1.5-5B": dict(num_attention_heads=48, num_layers=42),
    "1.5-5B-I2V": dict(num_attention_heads=48, num_layers=42),
}


_COMMON_WIDTHS = dict(
    attention_head_dim=64,
    text_embed_dim=4096,
    time_embed_dim=512,
    max_text_seq_length=226,
    temporal_compression_ratio=4,
)


# The T5 v1.1 XXL encoder every CogVideoX release ships (text_encoder/config.json).
RELEASED_T5 = dict(vocab_size=32128, d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64)


def released_transformer_config(name: str) -> dict[str, Any]:
    """The full transformer config of a released model (``2b``, ``5b``, ``5b-I2V``, ``1.5-5B``, ...)."""
    if name not in RELEASED:
        raise UsageError(f"unknown model {name!r}: one of {', '.join(sorted(RELEASED))}")
    return {**_COMMON_WIDTHS, **RELEASED[name], **_RELEASED_WIDTHS[name]}


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _released_name_from_id(model_id: str) -> str | None:
    return released_name_from_id(model_id)


def model_configs(pretrained: str | None, model: str | None) -> tuple[dict, dict, dict]:
    """(transformer, text encoder, VAE) configs: a local folder's, else the released ones.

    ``pretrained`` is ``--pretrained_model_name_or_path``: a local folder is read; a Hub id is
    matched to a released model by its name (nothing is downloaded); ``model`` (``--model``)
    names one directly.
    """
    if pretrained and os.path.isdir(pretrained):
        transformer = _read_json(os.path.join(pretrained, "transformer", "config.json"))
        if transformer is None:
            raise UsageError(f"no transformer/config.json under '{pretrained}'")
        text = _read_json(os.path.join(pretrained, "text_encoder", "config.json")) or RELEASED_T5
        vae = _read_json(os.path.join(pretrained, "vae", "config.json")) or {}
        return transformer, text, vae
    cached = _from_hub_cache(pretrained, model)
    if cached is not None:
        return cached
    name = (
        model
        or (_released_name_from_id(pretrained) if pretrained else None)
        or (None if pretrained else "5b")
    )
    if name is None:
        raise UsageError(
            f"cannot tell which CogVideoX '{pretrained}' is without downloading it: give a local folder "
            f"or --model ({', '.join(sorted(RELEASED))})"
        )
    return released_transformer_config(name), dict(RELEASED_T5), {}


def _from_hub_cache(pretrained: str | None, model: str | None) -> tuple[dict, dict, dict] | None:
    """The configs of a Hub model already in the local Hugging Face cache (nothing is downloaded)."""
    if not pretrained or model:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = {
            part: try_to_load_from_cache(pretrained, f"{part}/config.json")
            for part in ("transformer", "text_encoder", "vae")
        }
    except Exception:  # not a repo id: name matching decides
        return None
    if not isinstance(found["transformer"], str):
        return None
    configs = [_read_json(v) if isinstance(v, str) else None for v in found.values()]
    return configs[0], configs[1] or dict(RELEASED_T5), configs[2] or {}
