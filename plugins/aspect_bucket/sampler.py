"""A batch sampler whose every batch holds one latent shape, the same on every rank.

Order
    Each epoch, a ``random.Random`` seeded with the string ``"{seed}:{epoch}"`` (hashed with
    SHA-512 by Python, so the same on every machine and Python 3 version) shuffles each bucket,
    cuts it into batches and shuffles the batches. Every rank builds the same list from the same
    seed, so no communication is needed; accelerate's ``BatchSamplerShard`` then gives rank ``r``
    batches ``r, r + R, r + 2R, ...``. Batch sampling runs in the main process, so DataLoader
    workers do not matter. Each ``iter()`` is one epoch: the sampler counts epochs itself.
    There is deliberately no ``set_epoch``: accelerate calls ``set_epoch`` with its own per-process
    iteration counter, which restarts at 0 when a run resumes, and only when a single process
    runs (``BatchSamplerShard`` does not pass it on), so it would make one- and multi-process runs
    and resumed runs disagree. ``load_state_dict`` is how an epoch is set.

Remainders (a bucket's clip count need not divide by its batch size)
    ``fill`` (default): the short batch is completed with other clips of its own bucket, drawn at
    random; every clip is seen every epoch, a few twice. A bucket smaller than its batch size
    repeats its clips. ``drop``: short batches are left out; which clips miss out changes every
    epoch. ``partial``: short batches are kept short (one process only: with several, a short
    batch on one rank weighs its samples more in the averaged gradient while that rank idles,
    and ``fill`` costs the same time).

Length
    ``len()`` is exact and identical on every rank: per bucket ``ceil(n / b)`` batches (``floor``
    under ``drop``), then rounded up to a multiple of ``num_replicas`` with extra batches drawn
    from random buckets (down, under ``drop``), so accelerate never pads or cuts. There is no
    ``batch_size`` attribute: accelerate's ``BatchSamplerShard`` would then treat batches of
    another size as incomplete. An epoch resumed part-way yields only its remaining batches.

Resuming
    accelerate fetches batches ahead of the training loop, so the sampler cannot know how many
    batches were used. ``state_dict(batches_per_process)`` takes that number from the caller (the
    plugin derives it from the optimizer step count), and after ``load_state_dict`` the next
    ``iter()`` starts at that batch of that epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cogvx_ext.model import ModelInfo

logger = logging.getLogger("cogvx_ext.aspect_bucket")

REMAINDER_POLICIES = ("fill", "drop", "partial")
# Text tokens every sample carries into the transformer (max_text_seq_length of every released model).
TEXT_TOKENS = 226


@dataclass(frozen=True)
class BucketBatches:
    """One bucket's share of an epoch."""

    key: Hashable
    clips: int
    batch_size: int
    batches: int  # per epoch, before rounding the total to a multiple of num_replicas


def batch_sizes_for_budget(
    shapes: Sequence[tuple[int, int, int]],
    token_budget: int,
    model: ModelInfo,
    max_batch: int | None = None,
    text_tokens: int = TEXT_TOKENS,
) -> dict[tuple[int, int, int], int]:
    """Per latent shape, the largest batch whose tokens fit ``token_budget`` (at least 1).

    A sample's tokens are its video tokens (``ModelInfo.tokens``) plus the text tokens, the
    sequence the transformer attends over; activation memory grows with it. A shape over the
    budget on its own still gets batches of 1.
    """
    if token_budget <= 0:
        raise ValueError(f"token_budget must be positive, not {token_budget}")
    sizes = {}
    for shape in shapes:
        size = max(1, token_budget // (model.tokens(shape) + text_tokens))
        sizes[shape] = min(size, max_batch) if max_batch else size
    return sizes


def _sorted_keys(keys: Any) -> list[Hashable]:
    try:
        return sorted(keys)
    except TypeError:  # keys of mixed types: any order the same on every rank will do
        return sorted(keys, key=repr)


class BucketBatchSampler:
    """Yields lists of dataset indices; all samples of a batch share one shape key.

    :param keys: per dataset index, its shape key (a latent ``(frames, height, width)``).
    :param batch_sizes: one batch size for every bucket, or one per key.
    :param seed: the shuffle's seed; equal on every rank.
    :param num_replicas: training processes; the batch count is made a multiple of it.
    :param remainder: ``fill``, ``drop`` or ``partial`` (see the module docstring).
    """

    def __init__(
        self,
        keys: Sequence[Hashable],
        batch_sizes: int | Mapping[Hashable, int],
        seed: int = 0,
        num_replicas: int = 1,
        remainder: str = "fill",
    ) -> None:
        if remainder not in REMAINDER_POLICIES:
            raise ValueError(f"remainder must be one of {', '.join(REMAINDER_POLICIES)}, not {remainder!r}")
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, not {num_replicas}")
        if remainder == "partial" and num_replicas > 1:
            raise ValueError(
                "remainder 'partial' needs a single process: with several, a short batch on one rank "
                "weighs its samples more in the averaged gradient; use 'fill' or 'drop'"
            )
        self.seed = int(seed)
        self.num_replicas = num_replicas
        self.remainder = remainder
        members: dict[Hashable, list[int]] = {}
        for index, key in enumerate(keys):
            members.setdefault(key, []).append(index)
        self._order = _sorted_keys(members)
        self._members = {key: members[key] for key in self._order}
        self._batch_size = {}
        for key in self._order:
            size = batch_sizes if isinstance(batch_sizes, int) else batch_sizes[key]
            if int(size) < 1:
                raise ValueError(f"batch size for {key} must be at least 1, not {size}")
            self._batch_size[key] = int(size)
        self._per_bucket = [
            BucketBatches(key, len(self._members[key]), self._batch_size[key], self._bucket_batch_count(key))
            for key in self._order
        ]
        base = sum(b.batches for b in self._per_bucket)
        if remainder == "drop":
            self._length = base - base % num_replicas
        else:
            self._length = base + (-base) % num_replicas
        self._next_epoch = 0
        self._next_position = 0
        self.fingerprint = self._fingerprint()

    def _bucket_batch_count(self, key: Hashable) -> int:
        clips, size = len(self._members[key]), self._batch_size[key]
        return clips // size if self.remainder == "drop" else math.ceil(clips / size)

    def _fingerprint(self) -> str:
        # Names this sampler's batch lists: same data, sizes, seed and replicas, same batches.
        described = [[repr(key), self._members[key], self._batch_size[key]] for key in self._order]
        text = json.dumps([described, self.seed, self.num_replicas, self.remainder])
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    # -- what an epoch holds -------------------------------------------------------------------

    def __len__(self) -> int:
        return self._length

    @property
    def buckets(self) -> list[BucketBatches]:
        """Per bucket: clips, batch size and batches per epoch (before the multiple-of-replicas rounding)."""
        return list(self._per_bucket)

    @property
    def batches_per_process(self) -> int:
        return self._length // self.num_replicas

    def batch_size_of(self, key: Hashable) -> int:
        return self._batch_size[key]

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` yields."""
        return self._next_epoch

    def batches_for_epoch(self, epoch: int) -> list[list[int]]:
        """Every batch of ``epoch``, in order, before sharding across ranks."""
        rng = random.Random(f"{self.seed}:{epoch}")
        keyed: list[tuple[Hashable, list[int]]] = []
        for key in self._order:
            shuffled = list(self._members[key])
            rng.shuffle(shuffled)
            size = self._batch_size[key]
            for start in range(0, len(shuffled), size):
                batch = shuffled[start : start + size]
                if len(batch) < size:
                    if self.remainder == "drop":
                        break
                    if self.remainder == "fill":
                        batch = self._fill(batch, shuffled, size)
                keyed.append((key, batch))
        if self.remainder == "drop":
            rng.shuffle(keyed)
            del keyed[self._length :]
        else:
            for _ in range(self._length - len(keyed)):
                key = rng.choice(keyed)[0]
                members = self._members[key]
                size = self._batch_size[key]
                keyed.append((key, self._fill(rng.sample(members, min(size, len(members))), members, size)))
            rng.shuffle(keyed)
        return [batch for _, batch in keyed]

    @staticmethod
    def _fill(batch: list[int], shuffled_bucket: list[int], size: int) -> list[int]:
        """Complete a short batch from its own bucket: other clips first, in their shuffled order."""
        taken = set(batch)
        pool = [i for i in shuffled_bucket if i not in taken] or list(shuffled_bucket)
        filled = list(batch)
        for k in range(size - len(batch)):
            filled.append(pool[k % len(pool)])
        return filled

    def __iter__(self) -> Iterator[list[int]]:
        epoch, position = self._next_epoch, self._next_position
        self._next_epoch, self._next_position = epoch + 1, 0
        return iter(self.batches_for_epoch(epoch)[position:])

    # -- resuming ------------------------------------------------------------------------------

    def state_dict(self, batches_per_process: int) -> dict[str, Any]:
        """Where training stands, JSON-ready.

        :param batches_per_process: batches each process has taken since training began (all
            epochs): loop iterations, not what the DataLoader has prefetched.
        """
        per_process = self.batches_per_process
        epoch, within = divmod(int(batches_per_process), per_process) if per_process else (0, 0)
        return {
            "epoch": epoch,
            "position": within * self.num_replicas,  # in batches before sharding
            "num_batches": self._length,
            "num_replicas": self.num_replicas,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Make the next ``iter()`` continue at the saved batch of the saved epoch.

        If the data, batch sizes, seed or process count changed since the state was saved, the
        saved position no longer names the same batches: the run goes on from the same epoch and
        position (rounded to a whole step), with a warning.
        """
        epoch, position = int(state["epoch"]), int(state["position"])
        if state.get("fingerprint") != self.fingerprint:
            logger.warning(
                "aspect_bucket: the batches differ from the checkpoint's (data, batch sizes, seed or "
                "process count changed); continuing at epoch %d, batch %d of the new order",
                epoch,
                position,
            )
        position -= position % self.num_replicas
        if position >= self._length:
            epoch, position = epoch + 1, 0
        self._next_epoch, self._next_position = epoch, position
