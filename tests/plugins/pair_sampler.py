"""A third-party batch sampler: samples of one latent shape in pairs, on the public API alone.

It derives from ``EpochBatchSampler`` and says nothing else about itself, so what the plan table,
the compile bound and the memory log know of its batches comes from the base's ``describe``.
``--pair_sampler_budget 24GiB`` names a memory budget for the reports.
"""

from __future__ import annotations

import random

from cogvx_ext.api import (
    EpochBatchSampler,
    MemoryBudget,
    fingerprint,
    hookimpl,
    latent_shape_key,
    parse_bytes,
)


class PairBatches(EpochBatchSampler):
    def __init__(self, keys, num_replicas, memory_budget=None):
        groups = {}
        for index, key in enumerate(keys):
            groups.setdefault(key, []).append(index)
        self.pairs = [
            members[i : i + 2] for _, members in sorted(groups.items()) for i in range(0, len(members), 2)
        ]
        length = len(self.pairs) - len(self.pairs) % num_replicas
        super().__init__(length, num_replicas, fingerprint(self.pairs), memory_budget)

    def batches_for_epoch(self, epoch, start=0):
        order = list(self.pairs)
        random.Random(f"pairs:{epoch}").shuffle(order)
        return order[: len(self)][start:]


class PairSampler:
    @hookimpl
    def cogvx_add_arguments(self, parser):
        parser.add_argument("--pair_sampler_budget", default=None)

    @hookimpl
    def cogvx_batch_sampler(self, samples, num_replicas, args, model):
        budget = args.pair_sampler_budget
        budget = MemoryBudget(parse_bytes(budget), 0.1) if budget else None
        return PairBatches([latent_shape_key(s, model) for s in samples], num_replicas, budget)
