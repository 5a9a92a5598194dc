"""Clip headers (``cogvx_probe``'s answers) kept as JSON, so a warm launch demuxes no clip."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import keys
from .keys import digest

PROBES_DIR = "probes"  # JSON answers of cogvx_probe, so a warm launch demuxes no clip


def probe_key(identity: dict[str, Any]) -> str:
    """A clip's probe entry key: the clip's contents as the latent key knows them (its size and the
    hashes of its first and last MiB, ``keys.file_identity``). A file replaced by another of the
    same size and time is probed again, and every node's copy finds the same entry; a warm launch
    reads two MiB of each clip, which its latent keys need anyway."""
    return digest({"format": keys.FORMAT_VERSION, "file": identity})


def probe_entry_path(root: str | os.PathLike, key: str) -> Path:
    return Path(root) / PROBES_DIR / key[:2] / f"{key}.json"


def video_info_to_json(info: Any) -> dict[str, Any]:
    """Every field of the probe's answer, whatever fields it has (``dataclasses.asdict``)."""
    import dataclasses

    return dataclasses.asdict(info)


def video_info_from_json(data: Any) -> Any:
    """The probe's answer again, or ``None`` when the stored fields are not today's (a newer or
    older cogvx-ext wrote it: probe again)."""
    import dataclasses

    from cogvx_ext.api import VideoInfo

    names = {f.name for f in dataclasses.fields(VideoInfo)}
    if not isinstance(data, dict) or set(data) != names:
        return None

    def frozen(value: Any) -> Any:  # JSON arrays back to tuples: VideoInfo is frozen and hashable
        return tuple(frozen(v) for v in value) if isinstance(value, list) else value

    try:
        return VideoInfo(**{name: frozen(value) for name, value in data.items()})
    except (TypeError, ValueError):
        return None
