"""``cogvx-ext cache prune``: remove the entries a dataset no longer reaches."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cogvx_ext.api import Sample

from .keys import clip_fields, digest, text_key
from .store import (
    META_CLIP_KEY,
    META_SOURCE,
    META_TEXT_KEY,
    BadEntry,
    read_metadata,
    remove_stale_temp_files,
    scan_cache,
)


def prune(
    root: Path, samples: list[Sample], args: argparse.Namespace, dry_run: bool, temp_age: float
) -> dict[str, Any]:
    """Remove entries whose clip part of the key (file identity, target, ``--fps``, format) no
    sample has, prompt entries whose text is no sample's prompt, unreadable files, and temporary
    files older than ``temp_age``. Reads entry headers only and loads no model, so entries of the
    same clips for another VAE, dtype or script kind are kept."""
    clip_keys = {digest(clip_fields(sample, args)) for sample in samples}
    # Both scripts feed the text encoder the id token and the caption.
    texts = {text_key((getattr(args, "id_token", None) or "") + sample.clip.prompt) for sample in samples}
    kept = removed = freed = 0
    for item in scan_cache(root):
        if item.kind == "temp":
            continue
        try:
            metadata = read_metadata(item.path)
            if item.kind == "entry":
                reachable, what = metadata.get(META_CLIP_KEY) in clip_keys, "not reached by the dataset"
            else:
                reachable, what = metadata.get(META_TEXT_KEY) in texts, "prompt not in the dataset"
            source = metadata.get(META_SOURCE, "?")
        except BadEntry as exc:
            reachable, what, source = False, str(exc), "?"
        if reachable:
            kept += 1
            continue
        removed += 1
        freed += _size(item.path)
        if dry_run:
            print(
                f"would remove {item.path} ({what}: {source if item.kind == 'entry' else repr(source[:80])})"
            )
        else:
            _unlink(item.path)
    temps = remove_stale_temp_files(root, temp_age, dry_run=dry_run)
    for path, size in temps:
        freed += size
        if dry_run:
            print(f"would remove {path} (temporary file older than {temp_age:g} s)")
    return {
        "root": str(root),
        "kept": kept,
        "removed": removed,
        "temporary": len(temps),
        "freed_bytes": freed,
    }


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:  # another prune, or a writer replacing it
        pass
