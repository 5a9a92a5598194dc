"""Byte counts as people write them (24GiB, 1.5 GB) and as the reports print them."""

from __future__ import annotations

import re

from cogvx_ext.base.errors import UsageError

GiB = 2**30


def parse_bytes(text: str) -> int:
    """``24GiB``, ``24GB``, ``80G``, ``2.5TiB``, ``24000000000`` -> bytes (G = GiB, GB = 10^9)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)(b?)\s*", str(text).lower())
    if not match:
        raise UsageError(f"a memory size is a number with a unit, such as 24GiB or 80GB, not {text!r}")
    number, unit, binary, byte = match.groups()
    power = "kmgt".index(unit) + 1 if unit else 0
    base = 1000 if (byte and not binary) else 1024
    value = int(float(number) * base**power)
    if value <= 0:
        raise UsageError(f"a memory size must be positive, not {text!r}")
    return value


def format_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    if abs(value) < GiB // 10:  # small models (tests, tiny runs): 0.0 GiB would say nothing
        return f"{value / 2**20:.1f} MiB"
    return f"{value / GiB:.1f} GiB"
