"""Ranks agree on the data plan before anything is encoded.

Every rank lists and probes the data itself, and the shares of the encoding pass are exchanged
by sample index: a file that one node sees and another does not, or a probe that fails on one
rank only, would otherwise mean a collective that waits forever or latents handed to the wrong
samples. So each rank gathers a fingerprint of its plan (the samples, their shapes, crops,
frames and order) from every rank; on a mismatch every rank knows it, and every rank stops with
the same line naming the first differing clips.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import torch

from cogvx_ext.base.errors import UsageError
from cogvx_ext.data.clips import Sample


def describe_sample(sample: Sample, root: str | None) -> str:
    """One sample, as ranks compare it: the clip as listed (relative to the data root, so node-local
    mounts at other places still agree), the target's size, frames, crop and tags."""
    t = sample.target
    path = os.path.relpath(sample.clip.path, root) if root else sample.clip.path
    frames = ",".join(map(str, t.frame_indices))
    tags = ",".join(f"{k}={v}" for k, v in t.tags)
    return f"{path} {t.width}x{t.height}x{t.num_frames} crop={list(t.crop)} frames=[{frames}] tags=[{tags}]"


def _gather_bytes(data: bytes, device: torch.device) -> list[bytes]:
    import torch.distributed as dist

    world = dist.get_world_size()
    length = torch.tensor([len(data)], dtype=torch.int64, device=device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    longest = max(int(n.item()) for n in lengths)
    mine = torch.zeros(longest, dtype=torch.uint8, device=device)
    if data:
        mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    buffers = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(buffers, mine)
    return [bytes(b[: int(n.item())].cpu().tolist()) for b, n in zip(buffers, lengths)]


def check_ranks_agree(samples: Sequence[Sample], root: str | None, device: Any) -> None:
    """Stop every rank with one line when the ranks planned different samples; a no-op on one rank.

    Collective: every rank of the process group must call it, right after planning.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    device = torch.device(device)
    rows = [describe_sample(s, root) for s in samples]
    digest = hashlib.sha256("\n".join(rows).encode("utf-8")).hexdigest()
    digests = _gather_bytes(digest.encode("ascii"), device)
    if len(set(digests)) == 1:
        return
    # Every rank saw the mismatch: all of them exchange their plans to name the first difference.
    plans = [json.loads(b) for b in _gather_bytes(json.dumps(rows).encode("utf-8"), device)]
    raise UsageError(first_difference(plans))


def first_difference(plans: Sequence[Sequence[str]]) -> str:
    """The line naming where the ranks' plans first differ."""
    for i in range(max(len(p) for p in plans)):
        seen = [p[i] if i < len(p) else None for p in plans]
        if len(set(seen)) > 1:
            where = "; ".join(
                f"rank {r}: {row.split(' crop=')[0] if row else 'nothing (its plan ends here)'}"
                for r, row in enumerate(seen)
            )
            counts = ", ".join(f"rank {r} {len(p)}" for r, p in enumerate(plans))
            return (
                f"the ranks planned different data (samples: {counts}); first difference at sample {i}: "
                f"{where}. Every rank must see the same files with the same contents (a file on one node "
                "only, or one that a rank cannot read?)"
            )
    return "the ranks planned different data (the same samples, in another order)"
