"""Entries on disk: safetensors files written atomically, read and checked, listed, their temporary files removed."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from . import keys

PROMPTS_DIR = "prompts"


SUFFIX = ".safetensors"


ENTRY_NAME = re.compile(r"^[0-9a-f]{64}\.safetensors$")


TEMP_NAME = re.compile(
    r"^\.[0-9a-f]{64}\.safetensors\..*\.tmp$"
)  # cogvx_ext.base.io.write_bytes_atomic's names


# Safetensors metadata keys (strings only).
META_FORMAT = "cogvx_ext.format"


META_KEY = "cogvx_ext.key"


META_CLIP_KEY = "cogvx_ext.clip_key"


META_TEXT_KEY = "cogvx_ext.text_key"


META_FIELDS = "cogvx_ext.fields"


META_SOURCE = "cogvx_ext.source"  # the clip's path or the prompt, for people reading reports


def entry_path(root: str | os.PathLike, key: str) -> Path:
    return Path(root) / key[:2] / f"{key}{SUFFIX}"


def prompt_entry_path(root: str | os.PathLike, key: str) -> Path:
    return Path(root) / PROMPTS_DIR / key[:2] / f"{key}{SUFFIX}"


class BadEntry(Exception):
    """An entry that cannot be trusted; the message says why."""


def write_entry(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write atomically: readers see the old file, no file, or this whole one, never a part."""
    from safetensors.torch import save

    from cogvx_ext.api import write_bytes_atomic

    data = save({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, metadata=metadata)
    write_bytes_atomic(path, data)


def read_entry(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (on the CPU) and metadata; ``BadEntry`` for a file that is not a whole safetensors file.

    The file is read into memory rather than memory-mapped: a mapped file changed in place by
    someone else (rsync --inplace, a truncation) would kill the training process with SIGBUS.
    """
    from safetensors.torch import load

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise BadEntry(f"cannot be read ({exc.strerror or exc})") from exc
    try:
        header_size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_size])
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error type for truncated or foreign files
        raise BadEntry(
            f"unreadable ({str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__})"
        ) from exc
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return tensors, dict(metadata or {})


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Only the header: what prune needs to decide, without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise BadEntry(f"unreadable ({str(exc).splitlines()[0][:100] or type(exc).__name__})") from exc


def check_entry(
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    key: str,
    shapes: dict[str, tuple[int, ...] | None],
    dtype: torch.dtype,
) -> None:
    """Raise ``BadEntry`` unless the entry is the one asked for: key, names, shapes, dtype, finite.

    A ``None`` shape checks only that the tensor exists.
    """
    if metadata.get(META_FORMAT) != str(keys.FORMAT_VERSION):
        raise BadEntry(f"format {metadata.get(META_FORMAT)!r}, expected {keys.FORMAT_VERSION}")
    if metadata.get(META_KEY) != key:
        raise BadEntry("its recorded key differs from its name (another entry's file, or a damaged one)")
    if set(tensors) != set(shapes):
        raise BadEntry(f"holds {sorted(tensors)}, expected {sorted(shapes)}")
    for name, shape in shapes.items():
        tensor = tensors[name]
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            raise BadEntry(f"{name} has shape {list(tensor.shape)}, expected {list(shape)}")
        if tensor.dtype != dtype:
            raise BadEntry(f"{name} is {tensor.dtype}, expected {dtype}")
        if not torch.isfinite(tensor).all():
            raise BadEntry(f"{name} holds NaN or infinite values")


@dataclass(frozen=True)
class CacheFile:
    path: Path
    kind: str  # "entry", "prompt" or "temp"


def scan_cache(root: str | os.PathLike) -> Iterator[CacheFile]:
    """Every file of the cache's layout under ``root``; other files are not ours and are skipped."""
    root = Path(root)
    for base, kind in ((root, "entry"), (root / PROMPTS_DIR, "prompt")):
        if not base.is_dir():
            continue
        for folder in sorted(base.iterdir()):
            if not (folder.is_dir() and re.fullmatch(r"[0-9a-f]{2}", folder.name)):
                continue
            for path in sorted(folder.iterdir()):
                if ENTRY_NAME.match(path.name) and path.name.startswith(folder.name):
                    yield CacheFile(path, kind)
                elif TEMP_NAME.match(path.name):
                    yield CacheFile(path, "temp")


def remove_stale_temp_files(
    root: str | os.PathLike, older_than_s: float, dry_run: bool = False
) -> list[tuple[Path, int]]:
    """Remove temporary files left by killed writers; younger ones may be a write in progress.

    Returns ``(path, size)`` of each file removed (or, with ``dry_run``, that would be).
    """
    import time

    now, removed = time.time(), []
    for item in scan_cache(root):
        if item.kind != "temp":
            continue
        try:
            stat = item.path.stat()
            if now - stat.st_mtime < older_than_s:
                continue
            if not dry_run:
                item.path.unlink()
        except FileNotFoundError:  # its writer finished (renamed it) meanwhile
            continue
        removed.append((item.path, stat.st_size))
    return removed
