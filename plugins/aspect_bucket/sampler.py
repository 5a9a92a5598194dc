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

import logging
import math
import random
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from cogvx_ext.api import (
    EpochBatchSampler,
    LatentShape,
    MemoryBudget,
    ModelInfo,
    Sample,
    SamplerReport,
    ShapeRow,
    fingerprint,
)

logger = logging.getLogger("cogvx_ext.aspect_bucket")

REMAINDER_POLICIES = ("fill", "drop", "partial")
# Text tokens every sample carries into the transformer (max_text_seq_length of every released model).
TEXT_TOKENS = 226


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


class BucketBatchSampler(EpochBatchSampler):
    """Yields lists of dataset indices; all samples of a batch share one shape key.

    :param keys: per dataset index, its shape key (a latent ``(frames, height, width)``).
    :param batch_sizes: one batch size for every bucket, or one per key.
    :param seed: the shuffle's seed; equal on every rank.
    :param num_replicas: training processes; the batch count is made a multiple of it.
    :param remainder: ``fill``, ``drop`` or ``partial`` (see the module docstring).
    :param memory_budget: the budget the batch sizes come from, for reports.
    """

    label = "aspect_bucket"

    def __init__(
        self,
        keys: Sequence[Hashable],
        batch_sizes: int | Mapping[Hashable, int],
        seed: int = 0,
        num_replicas: int = 1,
        remainder: str = "fill",
        memory_budget: MemoryBudget | None = None,
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
        self._batches = {key: self._bucket_batch_count(key) for key in self._order}
        base = sum(self._batches.values())
        length = base - base % num_replicas if remainder == "drop" else base + (-base) % num_replicas
        super().__init__(length, num_replicas, self._fingerprint(num_replicas), memory_budget)

    def _bucket_batch_count(self, key: Hashable) -> int:
        clips, size = len(self._members[key]), self._batch_size[key]
        return clips // size if self.remainder == "drop" else math.ceil(clips / size)

    def _fingerprint(self, num_replicas: int) -> str:
        # Names this sampler's batch lists: same data, sizes, seed and replicas, same batches.
        described = [[repr(key), self._members[key], self._batch_size[key]] for key in self._order]
        return fingerprint([described, self.seed, num_replicas, self.remainder])

    # -- what an epoch holds -------------------------------------------------------------------

    def describe(self, samples: Sequence[Sample], model: ModelInfo) -> SamplerReport:
        """Per bucket (latent shape key): clips, batch size and batches per epoch (before the
        multiple-of-replicas rounding)."""
        rows = tuple(
            ShapeRow(LatentShape(*key), len(self._members[key]), self._batch_size[key], self._batches[key])
            for key in self._order
        )
        return SamplerReport(rows, self.memory_budget)

    def batch_size_of(self, key: Hashable) -> int:
        return self._batch_size[key]

    def batches_for_epoch(self, epoch: int, start: int = 0) -> list[list[int]]:
        """The batches of ``epoch`` from position ``start`` on, in order, before sharding across ranks."""
        rng = random.Random(f"{self.seed}:{epoch}")
        keyed: list[tuple[Hashable, list[int]]] = []
        for key in self._order:
            shuffled = list(self._members[key])
            rng.shuffle(shuffled)
            size = self._batch_size[key]
            for offset in range(0, len(shuffled), size):
                batch = shuffled[offset : offset + size]
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
        return [batch for _, batch in keyed[start:]]

    @staticmethod
    def _fill(batch: list[int], shuffled_bucket: list[int], size: int) -> list[int]:
        """Complete a short batch from its own bucket: other clips first, in their shuffled order."""
        taken = set(batch)
        pool = [i for i in shuffled_bucket if i not in taken] or list(shuffled_bucket)
        filled = list(batch)
        for k in range(size - len(batch)):
            filled.append(pool[k % len(pool)])
        return filled

    def state_details(self, batches_per_process: int) -> dict[str, Any]:
        return {"seed": self.seed}
