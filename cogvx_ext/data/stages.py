"""Stage schedules, and a batch sampler that follows one: the arithmetic every staged sampler needs.

A schedule (the ``cogvx_stages`` hook) says from which optimizer step each stage trains; the samples
of stage ``i`` carry the tag ``("stage", "i")``. A sampler must then give every optimizer step
batches of that step's stage only, and it must know the step of each batch it yields from its own
position, never from the training loop (accelerate fetches batches ahead). ``StagedBatchSampler``
does that; a sampler plugin supplies only how one pass over one stage's samples is cut into batches
(``aspect_bucket`` by bucket, ``progressive_resize`` one shape per stage).

Arithmetic (the diffusers scripts' own)
    ``L = len(sampler)`` batches per epoch over all ranks, ``P = L / R`` per rank, and
    ``S = ceil(P / A)`` optimizer steps per epoch with gradient accumulation ``A``; the last step of
    an epoch takes what is left (accelerate syncs at the end of the data). Rank ``r`` takes batches
    ``r, r + R, ...`` of each epoch (accelerate's ``BatchSamplerShard``). The ``b``-th batch a rank
    takes since the run began (``e = b // P``, ``w = b % P``) goes into optimizer step
    ``e * S + w // A`` (0-based: the update made when ``global_step`` is that number). Its stage is
    the last one starting at or before that step, so all ranks change shape at the same step,
    exactly at the boundary, with or without gradient accumulation.

Length
    An epoch is ``L`` batches, fixed when the sampler is made: one pass over every clip of the
    *final* stage at its full size (each clip's largest alternative), rounded to a multiple of
    ``R`` by the caller. A stage takes its batches from a stream of passes over its own samples
    (every clip once per pass, reshuffled per pass with a seed), continued across epochs: an epoch
    is a window on the streams, so each stage sees its clips evenly however many steps it lasts.

Alternatives
    Samples of one clip and stage tagged ``("scale", ...)`` (``multi_scale``) are alternatives:
    each pass draws one of them per clip with a generator seeded by ``(seed, stage, pass)``, the
    same on every rank (``choose_alternatives``).

Resuming
    Which batch sits at ``(epoch, position)`` is a pure function of the two, so
    ``state_dict(batches_per_process)`` / ``load_state_dict`` (the interface of aspect_bucket's
    ``BucketBatchSampler``) continue at the exact batch, in the right stage.
"""

from __future__ import annotations

import bisect
import logging
import math
import random
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

from cogvx_ext.data.clips import SCALE_TAG, STAGE_TAG, Sample
from cogvx_ext.data.sampling import EpochBatchSampler, MemoryBudget, SamplerReport, ShapeRow
from cogvx_ext.data.sampling import fingerprint as fingerprint_of

if TYPE_CHECKING:
    from cogvx_ext.model.facts import ModelInfo

logger = logging.getLogger("cogvx_ext.stages")

# (stage index, pass index) -> that pass's batches (lists of dataset indices), never empty.
PassBatches = Callable[[int, int], list[list[int]]]


def stage_of(sample: Sample) -> int:
    """The stage index a sample belongs to (0 without a ``stage`` tag)."""
    return int(sample.target.tag(STAGE_TAG) or 0)


def alternative_groups(samples: Sequence[Sample], indices: Sequence[int] | None = None) -> list[list[int]]:
    """Dataset indices grouped into alternatives, in dataset order.

    Samples of one clip and one stage that carry a ``("scale", ...)`` tag form one group (a pass
    trains one of them); every other sample is a group of its own.
    """
    groups: dict[Hashable, list[int]] = {}
    for i in range(len(samples)) if indices is None else indices:
        sample = samples[i]
        if sample.target.tag(SCALE_TAG) is None:
            key: Hashable = ("single", i)
        else:
            key = ("scaled", sample.clip.index, sample.clip.path, stage_of(sample))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def full_size(samples: Sequence[Sample], group: Sequence[int]) -> int:
    """The group's largest member (its full-size alternative): most pixels, then the first."""
    return max(group, key=lambda i: (samples[i].target.height * samples[i].target.width, -i))


def choose_alternatives(groups: Sequence[Sequence[int]], seed: int, stage: int, pass_index: int) -> list[int]:
    """One member per group for one pass, drawn with a generator seeded the same on every rank."""
    rng = random.Random(f"{seed}:alternatives:{stage}:{pass_index}")
    return [group[0] if len(group) == 1 else group[rng.randrange(len(group))] for group in groups]


def stage_seed(seed: int, stage: int) -> int:
    """A seed of its own for each stage's shuffles (stage 0 keeps ``seed``)."""
    return int(seed) if stage == 0 else int(seed) * 1_000_003 + stage


class _Stream:
    """The batches of one stage: its passes one after the other, computed when reached."""

    def __init__(self, make_pass: Callable[[int], list[list[int]]], name: str) -> None:
        self._make_pass = make_pass
        self._name = name
        self._starts = [0]  # stream offset of pass k, known for the passes reached so far
        self._cached: tuple[int, list[list[int]]] | None = None

    def _pass(self, k: int) -> list[list[int]]:
        if self._cached is None or self._cached[0] != k:
            batches = self._make_pass(k)
            if not batches:
                raise ValueError(f"{self._name} has no batch")
            self._cached = (k, batches)
        return self._cached[1]

    def batch(self, j: int) -> list[int]:
        k = bisect.bisect_right(self._starts, j) - 1
        while True:
            batches = self._pass(k)
            if j < self._starts[k] + len(batches):
                return list(batches[j - self._starts[k]])
            if k + 1 == len(self._starts):
                self._starts.append(self._starts[k] + len(batches))
            k += 1


class StagedBatchSampler(EpochBatchSampler):
    """Yields lists of dataset indices: each optimizer step's batches from that step's stage.

    :param stage_starts: the optimizer step each stage starts at (0 first, increasing).
    :param passes: ``passes(stage, k)`` -> the batches of the ``k``-th pass over that stage's
        samples; deterministic, never empty, every batch of one latent shape.
    :param length: batches per epoch over all ranks, a positive multiple of ``num_replicas``.
    :param num_replicas: training processes.
    :param accumulation: the script's ``--gradient_accumulation_steps``.
    :param fingerprint: names what the passes depend on (data, sizes, seed); with the schedule,
        the length and the processes it tells a checkpoint's batches from another run's.
    :param rows: ``ShapeRow`` rows (with ``stage``) describing every stage's shapes, for
        :meth:`describe` (batches per pass: expected, when a pass draws one alternative per clip).
    :param memory_budget: the budget the batch sizes come from, for reports.
    """

    def __init__(
        self,
        stage_starts: Sequence[int],
        passes: PassBatches,
        length: int,
        num_replicas: int = 1,
        accumulation: int = 1,
        fingerprint: str = "",
        rows: Sequence[ShapeRow] = (),
        memory_budget: MemoryBudget | None = None,
    ) -> None:
        starts = [int(s) for s in stage_starts]
        if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError(f"stage starts must begin at 0 and increase, not {starts}")
        if accumulation < 1:
            raise ValueError("accumulation must be at least 1")
        if length < 1:
            raise ValueError(f"length must be positive, not {length}")
        super().__init__(
            length,
            num_replicas,
            fingerprint_of([starts, length, num_replicas, accumulation, fingerprint]),
            memory_budget,
        )
        self.stage_starts = starts
        self.accumulation = accumulation
        self._streams = [_Stream(lambda k, i=i: passes(i, k), f"stage {i}") for i in range(len(starts))]
        self._rows = tuple(rows)

    # -- the script's arithmetic ---------------------------------------------------------------

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_process / self.accumulation)

    def step_of(self, batch: int) -> int:
        """The optimizer step (0-based) that a rank's ``batch``-th batch since the start goes into."""
        epoch, within = divmod(batch, self.batches_per_process)
        return epoch * self.steps_per_epoch + within // self.accumulation

    def first_batch_of_step(self, step: int) -> int:
        """The first per-rank batch (since the start) that goes into optimizer step ``step``."""
        epoch, within = divmod(step, self.steps_per_epoch)
        return epoch * self.batches_per_process + within * self.accumulation

    def stage_of_step(self, step: int) -> int:
        return bisect.bisect_right(self.stage_starts, step) - 1

    # -- what an epoch holds -------------------------------------------------------------------

    def describe(self, samples: Sequence[Sample], model: ModelInfo) -> SamplerReport:
        """Every stage's rows as given (epoch 0 need not reach the later stages)."""
        if not self._rows:
            return super().describe(samples, model)
        return SamplerReport(self._rows, self.memory_budget)

    def stage_at(self, epoch: int, position: int) -> int:
        """The stage of the batch at ``position`` (before sharding) of ``epoch``."""
        return self.stage_of_step(
            self.step_of(epoch * self.batches_per_process + position // self.num_replicas)
        )

    def batches_for_epoch(self, epoch: int, start: int = 0) -> list[list[int]]:
        """The batches of ``epoch`` from position ``start`` on, in order, before sharding."""
        replicas = self.num_replicas
        out = []
        for position in range(start, self._length):
            batch = epoch * self.batches_per_process + position // replicas
            stage = self.stage_of_step(self.step_of(batch))
            first = self.first_batch_of_step(self.stage_starts[stage])
            out.append(self._streams[stage].batch((batch - first) * replicas + position % replicas))
        return out

    def state_details(self, batches_per_process: int) -> dict[str, Any]:
        return {"stage": self.stage_of_step(self.step_of(int(batches_per_process)))}
