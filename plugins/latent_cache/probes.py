"""Clip headers (``cogvx_probe``'s answers) kept as JSON, so a warm launch opens no clip."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import keys
from .keys import digest

PROBES_DIR = "probes"  # JSON answers of cogvx_probe, so a warm launch opens no clip


def probe_key(path: str, stat: os.stat_result) -> str:
    """A clip's probe entry key: the path, size and modification time, so that a warm launch
    reads no clip at all (a file rewritten in place with the same size and time is not seen)."""
    return digest(
        {
            "format": keys.FORMAT_VERSION,
            "path": os.path.abspath(path),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }
    )


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
