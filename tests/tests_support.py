"""Small helpers shared by test modules (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import os
from pathlib import Path

HERE = Path(__file__).parent


def read_events(directory) -> dict[str, list[dict]]:
    """What tests/plugins/recorder.py wrote, by file name (events-rank<N>.jsonl)."""
    out = {}
    for name in sorted(os.listdir(directory)):
        if name.startswith("events-rank"):
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                out[name] = [json.loads(line) for line in f]
    return out
