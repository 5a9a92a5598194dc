"""The record a run leaves beside its LoRA (``cogvx_ext.json``): written at every save, read to
generate with what training did."""

from __future__ import annotations

import json
import os
from typing import Any

METADATA_FILE = "cogvx_ext.json"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what the diffusers scripts save


def read_metadata(lora_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's record next to the LoRA, or None for a LoRA trained without cogvx-ext."""
    path = os.path.join(lora_dir, METADATA_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
