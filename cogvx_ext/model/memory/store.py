"""Trace results kept on disk between runs: a plan run again, or a training start after its plan,
traces nothing it has traced before.

One JSON file (``$COGVX_EXT_MEMORY_CACHE``, default ``$XDG_CACHE_HOME/cogvx-ext/memory-traces.json``;
``off`` keeps nothing) maps a key to a byte count. The key is a hash of everything a trace depends
on: what was traced (the setup's traced fields, the shape, the batch), the versions of torch,
diffusers and peft, and the text of the tracing code itself, so an upgrade or a change of the code
traces again instead of trusting an old figure. Writes are atomic and merge with what another
process wrote meanwhile; a file that cannot be read or written only costs the time of tracing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

ENV_CACHE = "COGVX_EXT_MEMORY_CACHE"
_MAX_ENTRIES = 20_000  # a few MB; the oldest go first


def cache_path() -> Path | None:
    value = os.environ.get(ENV_CACHE, "")
    if value.lower() in ("off", "0", "none"):
        return None
    if value:
        return Path(value).expanduser()
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return home / "cogvx-ext" / "memory-traces.json"


def _versions() -> list[str]:
    from importlib import metadata

    found = []
    for name in ("torch", "diffusers", "peft"):
        try:
            found.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name}=-")
    return found


def _code_digest() -> str:
    # The counting code's own text: a change in how a step is traced invalidates every figure.
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in ("trace.py", "resident.py", "store.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


class TraceStore:
    """Byte counts by key, read once, written through."""

    def __init__(self, path: Path | None):
        self.path = path
        self._entries: dict[str, int] | None = None
        self._salt: str | None = None

    def key(self, kind: str, parts: Any) -> str:
        if self._salt is None:
            self._salt = json.dumps([_versions(), _code_digest()])
        text = json.dumps([self._salt, kind, parts], sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def _read(self) -> dict[str, int]:
        if self.path is None:
            return {}
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, int) and not isinstance(v, bool)}

    def get(self, key: str) -> int | None:
        if self._entries is None:
            self._entries = self._read()
        return self._entries.get(key)

    def put(self, key: str, value: int) -> None:
        if self._entries is None:
            self._entries = self._read()
        self._entries[key] = int(value)
        if self.path is None:
            return
        from cogvx_ext.base.io import write_bytes_atomic

        merged = {**self._read(), **self._entries}
        if len(merged) > _MAX_ENTRIES:
            merged = dict(list(merged.items())[-_MAX_ENTRIES:])
        try:
            text = json.dumps({"format": 1, "entries": merged}, separators=(",", ":"))
            write_bytes_atomic(self.path, text.encode("utf-8"))
        except OSError:
            pass  # not kept: the next run traces again


_store: TraceStore | None = None


def trace_store() -> TraceStore:
    """The store of this process (its path read from the environment on first use)."""
    global _store
    if _store is None or _store.path != cache_path():
        _store = TraceStore(cache_path())
    return _store


def stored(kind: str, parts: Any, compute) -> int:
    """``compute()``'s byte count, from the store when it has been computed before."""
    store = trace_store()
    key = store.key(kind, parts)
    found = store.get(key)
    if found is None:
        found = int(compute())
        store.put(key, found)
    return found
