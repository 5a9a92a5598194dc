"""What cogvx-ext's batch samplers share, for plugin authors too: epochs and exact resume.

The scripts compute their step count once from ``len(train_dataloader)`` and resume by loading a
checkpoint and starting the epoch ``global_step // steps_per_epoch`` from its first batch.
accelerate fetches batches ahead of the loop, so a sampler cannot tell how many batches were
used from its own iteration. Hence:

* :class:`EpochBatchSampler` has a fixed length, counts epochs itself (each ``iter()`` is one;
  no ``set_epoch``: accelerate calls it with a per-process counter that restarts at 0 on resume,
  and only with one process), and saves and loads its position as (epoch, batch).
* :class:`SamplerResume` is the plugin's side: it turns the checkpoint's optimizer step into
  the number of batches the loop consumed, with the script's arithmetic.
* :class:`SamplerReport` is what a sampler says about its batches (``describe(samples, model)``):
  a row per latent shape (and stage) and the memory budget its batch sizes were chosen against.
  ``cogvx-ext plan``'s table, the compile bound and the memory estimate logged at training start
  read it through :func:`sampler_report`, whoever made the sampler.

The contract of a batch sampler (``cogvx_batch_sampler``): it yields lists of dataset indices,
every batch of one latent shape; ``len()`` is the exact number of batches of every epoch over all
processes, the same on every rank and constant for the run, a multiple of the processes so
accelerate adds none; each ``iter()`` is one epoch, the same list on every rank (accelerate's
``BatchSamplerShard`` gives rank ``r`` batches ``r, r + R, ...``); the position survives a
checkpoint as (epoch, batch) through the plugin's ``cogvx_state_dict``. EpochBatchSampler does all
of that for a subclass that says which batches an epoch holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from cogvx_ext.data.clips import Sample
    from cogvx_ext.model.facts import ModelInfo

logger = logging.getLogger("cogvx_ext")


class LatentShape(NamedTuple):
    """A latent shape, in latent units, as ``ModelInfo.latent_shape`` gives it: a tuple
    ``(frames, height, width)`` that prints as ``WIDTHxHEIGHTxFRAMES``."""

    frames: int
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"


@dataclass(frozen=True)
class ShapeRow:
    """One latent shape of a sampler's epoch (with stages: of one pass over one stage).

    :param latent: the latent shape the batches have.
    :param clips: samples of this shape.
    :param batch_size: samples per batch (the largest, if they differ).
    :param batches: batches of this shape per epoch (per pass over the stage) over all processes;
        a sampler may leave out the batches it adds to make the epoch a multiple of the processes.
    :param stage: the stage index with a schedule, else ``None``.
    """

    latent: LatentShape
    clips: int
    batch_size: int
    batches: int
    stage: int | None = None


@dataclass(frozen=True)
class MemoryBudget:
    """The accelerator memory the batch sizes were chosen against: ``bytes``, less ``margin``."""

    bytes: int
    margin: float


@dataclass(frozen=True)
class SamplerReport:
    """What a batch sampler says about its batches (:meth:`EpochBatchSampler.describe`).

    :param rows: one per latent shape (and stage).
    :param memory_budget: the budget the batch sizes come from, or ``None``.
    :param described: ``False`` when the sampler does not describe itself and the rows assume the
        script's ``--train_batch_size`` (:func:`sampler_report`).
    """

    rows: tuple[ShapeRow, ...]
    memory_budget: MemoryBudget | None = None
    described: bool = True

    @property
    def shapes(self) -> set[LatentShape]:
        return {row.latent for row in self.rows}


def describe_batches(
    batches: Iterable[Sequence[int]], samples: Sequence[Sample], model: ModelInfo
) -> tuple[ShapeRow, ...]:
    """Rows that count ``batches`` (lists of indices into ``samples``) by latent shape."""
    from cogvx_ext.data.planning import latent_shape_key

    keys = [LatentShape(*latent_shape_key(sample, model)) for sample in samples]
    clips: dict[LatentShape, int] = {}
    for key in keys:
        clips[key] = clips.get(key, 0) + 1
    sizes: dict[LatentShape, int] = {}
    counts: dict[LatentShape, int] = {}
    for batch in batches:
        key = keys[batch[0]]
        sizes[key] = max(sizes.get(key, 0), len(batch))
        counts[key] = counts.get(key, 0) + 1
    return tuple(ShapeRow(key, clips[key], sizes[key], counts[key]) for key in sorted(counts))


def sampler_report(
    sampler: Any, samples: Sequence[Sample], model: ModelInfo, batch_size: int
) -> SamplerReport:
    """What the plan table, the compile bound and the memory log know of a run's batches.

    A sampler with ``describe(samples, model)`` (every :class:`EpochBatchSampler`) answers itself;
    a list of batches is counted; without a sampler (the script's shuffled ``DataLoader``) each
    shape has batches of ``batch_size``, the last one short. Any other sampler cannot be looked
    into without drawing from it: its rows assume ``batch_size`` and say so (``described``).
    """
    describe = getattr(sampler, "describe", None)
    if callable(describe):
        return describe(samples, model)
    if isinstance(sampler, Sequence):
        return SamplerReport(describe_batches(sampler, samples, model))
    from cogvx_ext.data.planning import latent_shape_key

    counts: dict[LatentShape, int] = {}
    for sample in samples:
        key = LatentShape(*latent_shape_key(sample, model))
        counts[key] = counts.get(key, 0) + 1
    size = max(1, int(batch_size or 1))
    rows = tuple(ShapeRow(key, n, size, math.ceil(n / size)) for key, n in sorted(counts.items()))
    return SamplerReport(rows, described=sampler is None)


def fingerprint(value: Any) -> str:
    """A short stable name for what a sampler's batches depend on (JSON-able parts)."""
    return hashlib.sha1(json.dumps(value, default=repr).encode()).hexdigest()[:16]


def batches_consumed(global_step: int, batches_per_process: int, accumulation: int) -> int:
    """Batches each process has taken when the script reaches ``global_step`` optimizer steps.

    The script's arithmetic: ``ceil(len(dataloader) / accumulation)`` steps per epoch, the last
    step of an epoch taking what is left (accelerate syncs at the end of the data), and
    ``first_epoch = global_step // steps_per_epoch`` on resume.
    """
    steps_per_epoch = math.ceil(batches_per_process / accumulation)
    epoch, steps = divmod(global_step, steps_per_epoch)
    return epoch * batches_per_process + min(steps * accumulation, batches_per_process)


class EpochBatchSampler:
    """Base of a batch sampler with a fixed epoch length and an exact, resumable position.

    A subclass calls ``super().__init__(length, num_replicas, fingerprint)`` and implements
    :meth:`batches_for_epoch`. ``length`` is the batches of an epoch over all ranks, a multiple of
    ``num_replicas`` so accelerate's ``BatchSamplerShard`` adds none; there is deliberately no
    ``batch_size`` attribute (the shard would then treat other sizes as incomplete batches).
    ``memory_budget`` names the budget the batch sizes were chosen against, for reports.
    :meth:`describe` counts epoch 0's batches by shape; a subclass that knows its rows (or has
    stages, whose shapes epoch 0 need not reach) overrides it.
    """

    label = "cogvx-ext"  # names the sampler in the resume warning

    def __init__(
        self, length: int, num_replicas: int, fingerprint: str, memory_budget: MemoryBudget | None = None
    ) -> None:
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, not {num_replicas}")
        if length % num_replicas:
            raise ValueError(f"length must be a multiple of {num_replicas}, not {length}")
        self._length = length
        self.num_replicas = num_replicas
        self.fingerprint = fingerprint
        self.memory_budget = memory_budget
        self._next_epoch = 0
        self._next_position = 0

    def batches_for_epoch(self, epoch: int, start: int = 0) -> list[list[int]]:
        """The batches of ``epoch`` from position ``start`` on, in order, before sharding."""
        raise NotImplementedError

    def state_details(self, batches_per_process: int) -> dict[str, Any]:
        """Extra, informative fields for :meth:`state_dict` (the subclass's own)."""
        return {}

    def describe(self, samples: Sequence[Sample], model: ModelInfo) -> SamplerReport:
        """Rows per latent shape of one epoch, and the memory budget (for the plan, the compile
        bound and the memory log). ``samples`` are those the sampler was made for."""
        return SamplerReport(describe_batches(self.batches_for_epoch(0), samples, model), self.memory_budget)

    def __len__(self) -> int:
        return self._length

    @property
    def batches_per_process(self) -> int:
        return self._length // self.num_replicas

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` yields."""
        return self._next_epoch

    def __iter__(self) -> Iterator[list[int]]:
        epoch, position = self._next_epoch, self._next_position
        self._next_epoch, self._next_position = epoch + 1, 0
        return iter(self.batches_for_epoch(epoch, position))

    def state_dict(self, batches_per_process: int) -> dict[str, Any]:
        """Where training stands, JSON-ready.

        :param batches_per_process: batches each process has taken since training began (loop
            iterations, not what the DataLoader has prefetched).
        """
        per_process = self.batches_per_process
        epoch, within = divmod(int(batches_per_process), per_process) if per_process else (0, 0)
        return {
            "epoch": epoch,
            "position": within * self.num_replicas,  # in batches before sharding
            "num_batches": self._length,
            "num_replicas": self.num_replicas,
            "fingerprint": self.fingerprint,
            **self.state_details(batches_per_process),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Make the next ``iter()`` continue at the saved batch of the saved epoch.

        If the data, sizes, seed or process count changed since the state was saved, the position
        no longer names the same batches: the run goes on from the same epoch and position
        (rounded to a whole step), with a warning.
        """
        epoch, position = int(state["epoch"]), int(state["position"])
        if state.get("fingerprint") != self.fingerprint:
            logger.warning(
                "%s: the batches differ from the checkpoint's (data, schedule, batch sizes, seed or process "
                "count changed); continuing at epoch %d, batch %d of the new order",
                self.label,
                epoch,
                position,
            )
        position -= position % self.num_replicas
        if position >= self._length:
            epoch, position = epoch + 1, 0
        self._next_epoch, self._next_position = epoch, position


class SamplerResume:
    """The plugin's side of exact resume, for the sampler it built.

    Call :meth:`attach` when building the sampler, set :attr:`last_step` in ``cogvx_step_end``,
    return :meth:`state` from ``cogvx_state_dict`` and pass ``cogvx_load_state_dict``'s state to
    :meth:`restore` (which may come before the sampler exists: the script loads its checkpoint
    after building the DataLoader, but a plugin may build lazily).
    """

    def __init__(self) -> None:
        self.sampler: EpochBatchSampler | None = None
        self.accumulation = 1
        self.last_step = 0
        self._pending: Mapping[str, Any] | None = None

    def attach(self, sampler: EpochBatchSampler, accumulation: int) -> None:
        self.sampler, self.accumulation = sampler, max(1, int(accumulation))
        if self._pending is not None:
            sampler.load_state_dict(self._pending)
            self._pending = None

    def batches_consumed(self, global_step: int) -> int:
        return batches_consumed(global_step, self.sampler.batches_per_process, self.accumulation)

    def state(self, step: int | None) -> dict[str, Any] | None:
        if self.sampler is None:
            return None
        # The core reads the step from the script's checkpoint-<step> folder. Otherwise: the script
        # saves right after `global_step += 1` and before that iteration's accelerator.log, so the
        # step being saved is one past the last step_end seen.
        global_step = step if step is not None else self.last_step + 1
        return {
            "global_step": global_step,
            "sampler": self.sampler.state_dict(self.batches_consumed(global_step)),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.last_step = int(state.get("global_step", 0))
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
        else:
            self._pending = state["sampler"]
