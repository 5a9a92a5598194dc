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
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

logger = logging.getLogger("cogvx_ext")


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
    """

    label = "cogvx-ext"  # names the sampler in the resume warning

    def __init__(self, length: int, num_replicas: int, fingerprint: str) -> None:
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, not {num_replicas}")
        if length % num_replicas:
            raise ValueError(f"length must be a multiple of {num_replicas}, not {length}")
        self._length = length
        self.num_replicas = num_replicas
        self.fingerprint = fingerprint
        self._next_epoch = 0
        self._next_position = 0

    def batches_for_epoch(self, epoch: int, start: int = 0) -> list[list[int]]:
        """The batches of ``epoch`` from position ``start`` on, in order, before sharding."""
        raise NotImplementedError

    def state_details(self, batches_per_process: int) -> dict[str, Any]:
        """Extra, informative fields for :meth:`state_dict` (the subclass's own)."""
        return {}

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
