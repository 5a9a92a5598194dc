"""Ranks prepare the data together: they agree on the plan, and a rank that fails stops them all.

Every rank lists and probes the data itself, and the shares of the encoding pass are exchanged
by sample index: a file that one node sees and another does not, or a probe that fails on one
rank only, would otherwise mean a collective that waits forever or latents handed to the wrong
samples. So each rank gathers a fingerprint of its plan (every field of every sample that decides
what trains: the clip as listed, its caption, the target's size, frames, crop and tags, in order)
from every rank; on a mismatch every rank knows it, and every rank stops with the same line
naming the first differing sample and what differs (``check_ranks_agree``).

A rank that fails while the data is prepared (a probe, a decode, an encode, a cache, a plugin's
bug) would leave the others waiting in the next collective until it times out: NCCL cannot tell
that a peer has gone, and only a launcher on the same node ends the others. So the ranks meet at
points of their own before each collective of the data path, through the process group's store
(a key-value server every rank already reaches) rather than a collective: a rank that fails says
so in the store on its way out (``RankSync.announce``, from the script's ``main``), and the others
see it at the next meeting point (``RankSync.meet``) or, in the long loops of probing and encoding,
within a fraction of a second (``RankSync.poll``). They stop at once with one line naming the
failed rank; the failure itself is shown once, by the rank it happened on. No collective is ever
left waiting for a rank that will not come.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch

from cogvx_ext.base.errors import UsageError
from cogvx_ext.data.clips import Sample

# What differs between two samples, in the order a difference is named.
SAMPLE_FIELDS = ("clip", "size", "frames", "crop", "tags", "listing line", "caption")


def sample_fields(sample: Sample, root: str | None) -> dict[str, Any]:
    """One sample as ranks compare it, field by field (the names of ``SAMPLE_FIELDS``).

    The clip as listed (relative to the data root, so node-local mounts at other places still
    agree) and its line in the listing; the caption (hashed: captions can be long); the target's
    size, frames, crop and tags. The probe's answer is left out: it reaches training only through
    the target, and each sample is encoded by one rank for all, so nodes whose decoders read a
    header slightly differently (frame times to the microsecond) must not be stopped for it.
    """
    t = sample.target
    return {
        "clip": os.path.relpath(sample.clip.path, root) if root else sample.clip.path,
        "size": f"{t.width}x{t.height}x{t.num_frames}",
        "frames": list(t.frame_indices),
        "crop": list(t.crop),
        "tags": [list(tag) for tag in t.tags],
        "listing line": sample.clip.index,
        "caption": hashlib.sha256(sample.clip.prompt.encode("utf-8")).hexdigest()[:16],
    }


def plan_digest(samples: Sequence[Sample], root: str | None) -> str:
    """What ranks compare: a hash of every sample's fields, in order."""
    rows = [sample_fields(s, root) for s in samples]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode("utf-8")).hexdigest()


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
    """Stop every rank with one line when the ranks planned different data; a no-op on one rank.

    Collective: every rank of the process group must call it, right after planning.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    device = torch.device(device)
    digests = _gather_bytes(plan_digest(samples, root).encode("ascii"), device)
    if len(set(digests)) == 1:
        return
    # Every rank saw the mismatch: all of them exchange their plans to name the first difference.
    rows = [sample_fields(s, root) for s in samples]
    plans = [json.loads(b) for b in _gather_bytes(json.dumps(rows).encode("utf-8"), device)]
    raise UsageError(first_difference(plans))


def first_difference(plans: Sequence[Sequence[dict[str, Any]]]) -> str:
    """The line naming where the ranks' plans first differ, and in what."""
    for i in range(max(len(p) for p in plans)):
        seen = [p[i] if i < len(p) else None for p in plans]
        if any(row != seen[0] for row in seen):
            where = "; ".join(
                f"rank {r}: {row['clip']} {row['size']}" if row else f"rank {r}: nothing (its plan ends here)"
                for r, row in enumerate(seen)
            )
            rows = [row for row in seen if row]
            differ = [name for name in SAMPLE_FIELDS if any(row[name] != rows[0][name] for row in rows)]
            counts = ", ".join(f"rank {r} {len(p)}" for r, p in enumerate(plans))
            what = f" (differs in its {', '.join(differ)})" if differ else ""
            return (
                f"the ranks planned different data (samples: {counts}); first difference at sample {i}: "
                f"{where}{what}. Every rank must see the same files with the same contents and captions "
                "(a file on one node only, or one that a rank cannot read?)"
            )
    return "the ranks planned different data (the same samples, in another order)"


# ---------------------------------------------------------------------------------------------
# A failure on one rank stops every rank

_KEYS = "cogvx_ext"
_SYNCS = itertools.count(1)  # numbers each RankSync at its first meeting: the same on every rank
_POLL_SECONDS = 0.25  # how often the long loops look for a failure elsewhere (a store round trip)


class PeerFailed(UsageError):
    """Another rank failed (or cannot be reached): this one stops too, with one line."""


class RankSync:
    """Meeting points of the ranks preparing data, and failures told through the process group's store.

    Every rank must meet at the same points in the same order (``meet``). On one process, or
    without a process group, every method does nothing.
    """

    def __init__(self) -> None:
        import torch.distributed as dist

        self.rank, self.world, self._store = 0, 1, None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self._store = _default_store()
        self._number: int | None = None
        self._meetings = 0
        self._last_poll = 0.0

    def announce(self, exc: BaseException) -> None:
        """Tell the other ranks that this one fails (``exc`` names how); never raises."""
        if self._store is None or isinstance(exc, PeerFailed):
            return
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            return
        try:
            self._store.set(f"{_KEYS}/failed/{self.rank}", type(exc).__name__)
            self._store.set(f"{_KEYS}/failed", "1")
        except Exception:  # the store is gone: the others learn it from that
            pass

    def poll(self) -> None:
        """Raise ``PeerFailed`` when another rank has failed; looks at most every quarter second."""
        if self._store is None or time.monotonic() - self._last_poll < _POLL_SECONDS:
            return
        self._last_poll = time.monotonic()
        self._raise_if_one_failed()

    def meet(self, where: str) -> None:
        """Wait until every rank reaches this point; raise ``PeerFailed`` as soon as one has failed.

        :param where: names the point, in the line said when a rank never comes.
        """
        if self._store is None:
            return
        if self._number is None:
            self._number = next(_SYNCS)
        self._meetings += 1
        keys = [f"{_KEYS}/meeting/{self._number}.{self._meetings}/{rank}" for rank in range(self.world)]
        timeout = getattr(self._store, "timeout", None) or timedelta(minutes=30)
        deadline = time.monotonic() + timeout.total_seconds()
        pause = 0.001
        try:
            self._store.set(keys[self.rank], where)
            while not self._store.check(keys):
                self._raise_if_one_failed()
                if time.monotonic() > deadline:
                    missing = [r for r, key in enumerate(keys) if not self._store.check([key])]
                    raise PeerFailed(
                        f"{_ranks(missing)} did not reach {where} within {timeout.total_seconds():.0f} s "
                        "and said nothing (killed, out of memory? see its node's log): every rank stops"
                    )
                time.sleep(pause)
                pause = min(2 * pause, 0.05)
        except PeerFailed:
            raise
        except Exception as exc:  # the store is gone with the process that held it
            raise PeerFailed(_lost_store(exc)) from None

    def _raise_if_one_failed(self) -> None:
        try:
            if not self._store.check([f"{_KEYS}/failed"]):
                return
            failed = {}
            for rank in range(self.world):
                key = f"{_KEYS}/failed/{rank}"
                if rank != self.rank and self._store.check([key]):
                    failed[rank] = self._store.get(key).decode("utf-8", "replace")
        except Exception as exc:
            raise PeerFailed(_lost_store(exc)) from None
        if failed:
            kinds = ", ".join(dict.fromkeys(failed.values()))
            whose = "its" if len(failed) == 1 else "their"
            raise PeerFailed(
                f"{_ranks(sorted(failed))} failed ({kinds}; {whose} own output says why), so rank "
                f"{self.rank} stops too"
            )


def _ranks(ranks: Sequence[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def _lost_store(exc: BaseException) -> str:
    return (
        f"lost touch with the other ranks ({type(exc).__name__}: the process group's store went away "
        "with the rank or launcher that held it): every rank stops"
    )


def _default_store() -> Any:
    """The default process group's store, or ``None`` where torch no longer offers it."""
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:  # a private function: without it the ranks meet as before
        return None
