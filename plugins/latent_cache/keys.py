"""Content keys: what decides an entry's numbers (the file's contents, the target, the VAE, the text encoder), hashed."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from typing import Any

import torch

from cogvx_ext.api import Sample

# Bump when what an entry holds, or how its key is made, changes: old entries then stop matching.
# 2: frame indices count the frames an edit list shows, crops are in display pixels (rotation,
# sample aspect), so an entry of version 1 can hold other pixels under the same key.
# 3: a clip is known by its contents (size, first and last MiB), no longer by its modification time.
# 4: every setting on the VAE object enters the key (version 3 left out the latent tile sizes); a
# clip's probe entry is found by the clip's contents, no longer by its path, size and time.
FORMAT_VERSION = 4


HEAD_BYTES = 1 << 20  # hashed at each end of a clip; the size covers the rest


_FINGERPRINT_VALUES = 64  # first values of every weight tensor that enter a model's fingerprint


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """The size and hashes of the first and last MiB: cheap, and the same for every copy of a file.

    No modification time: nodes hold copies made at other times (``cp -r``, ``scp``), and each
    would otherwise encode again what another node has cached. A re-encoded video changes its size
    or its index (the ``moov`` box sits at one end of an MP4); an edit in place that keeps the size
    and both ends goes unseen (``cogvx-ext cache prune`` after such an edit, or a new cache).
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(HEAD_BYTES)
        f.seek(max(0, size - HEAD_BYTES))
        tail = f.read(HEAD_BYTES)
    return {
        "size": size,
        "head_sha256": hashlib.sha256(head).hexdigest(),
        "tail_sha256": hashlib.sha256(tail).hexdigest(),
    }


def clip_fields(
    sample: Sample, args: argparse.Namespace, identity: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What decides a sample's pixels: the file, the target, ``--fps``, the format version.

    ``tags`` are in because a plugin that changes the pixels beyond size, crop and frames (an
    augmentation, a colour transform) records that in its targets' tags.
    """
    target = sample.target
    return {
        "format": FORMAT_VERSION,
        "file": identity if identity is not None else file_identity(sample.clip.path),
        "target": {
            "height": target.height,
            "width": target.width,
            "crop": list(target.crop),
            "frames": list(target.frame_indices),
            "tags": [list(tag) for tag in target.tags],
        },
        "fps": getattr(args, "fps", None),
    }


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A hash of every weight tensor's name, shape and first values: a fine-tuned copy of a model
    with the same config gets another fingerprint, at the cost of one small copy from the device."""
    state = module.state_dict()
    described = [(name, list(t.shape), str(t.dtype)) for name, t in state.items()]
    firsts = [t.detach().reshape(-1)[:_FINGERPRINT_VALUES].float() for t in state.values() if t.numel()]
    values = torch.cat(firsts).cpu().numpy().tobytes() if firsts else b""
    return hashlib.sha256(canonical_json(described).encode() + values).hexdigest()


def _public_config(config: Any) -> dict[str, Any]:
    items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    # Private entries (_name_or_path, _diffusers_version, ...) and the load dtype say where a model
    # came from, not what it computes; the dtype it runs in is recorded on its own.
    ignored = {"transformers_version", "torch_dtype", "dtype"}
    return {k: v for k, v in items.items() if not k.startswith("_") and k not in ignored}


def vae_settings(vae: torch.nn.Module) -> dict[str, Any]:
    """Every setting kept on the VAE object besides its config: what ``enable_slicing`` and
    ``enable_tiling(...)`` set (slicing, tiling, the sample and latent tile sizes, the overlap
    factors) and the frames encoded at once. All of them, read from the object (plain public
    values; ``training`` is nn.Module's own), so one that a later diffusers adds enters the key too."""
    return {
        name: value
        for name, value in sorted(vars(vae).items())
        if not name.startswith("_") and name != "training" and isinstance(value, (bool, int, float, str))
    }


def vae_identity(vae: torch.nn.Module, fingerprint: str | None = None) -> dict[str, Any]:
    """What decides the posterior besides the pixels: config, weights, dtype and every setting."""
    import diffusers

    return {
        "class": type(vae).__name__,
        "config_sha256": digest(_public_config(vae.config)),  # scaling_factor included
        "weights": fingerprint or weights_fingerprint(vae),
        "dtype": str(vae.dtype),
        "settings": vae_settings(vae),
        "diffusers": diffusers.__version__,
    }


def entry_key(clip_key: str, kind: str, vae_id: dict[str, Any]) -> str:
    return digest({"clip": clip_key, "kind": kind, "vae": vae_id})


def text_key(text: str) -> str:
    """The part of a prompt entry's key that prune can compute from the dataset alone."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return {"class": type(tokenizer).__name__, "vocab_sha256": digest(sorted(vocab.items()))}


def text_encoder_identity(
    text_encoder: torch.nn.Module,
    tokenizer: Any,
    fingerprint: str | None = None,
    tokenizer_id: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "class": type(text_encoder).__name__,
        "config_sha256": digest(_public_config(text_encoder.config)),
        "weights": fingerprint or weights_fingerprint(text_encoder),
        "dtype": str(text_encoder.dtype),
        "tokenizer": tokenizer_id or tokenizer_identity(tokenizer),
    }


def prompt_fields(
    text: str, encoder_id: dict[str, Any], max_sequence_length: int, dtype: torch.dtype
) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "text": text_key(text),
        "max_sequence_length": int(max_sequence_length),
        "dtype": str(dtype),
        "encoder": encoder_id,
    }


def expected_latent_shapes(sample: Sample, vae: torch.nn.Module, kind: str) -> dict[str, tuple[int, ...]]:
    """The parameters' shapes ``[1, 2C, F, H, W]`` the VAE gives for this target (I2V: and its first frame)."""
    config = vae.config
    spatial = 2 ** (len(config.block_out_channels) - 1)
    temporal = config.temporal_compression_ratio
    target = sample.target
    channels, height, width = 2 * config.latent_channels, target.height // spatial, target.width // spatial
    shapes = {"video": (1, channels, (target.num_frames - 1) // temporal + 1, height, width)}
    if kind == "i2v":
        shapes["image"] = (1, channels, 1, height, width)
    return shapes
