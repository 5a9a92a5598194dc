"""What one run tells its plugins: the ``run`` argument of the hooks.

pytest hands its plugins ``config`` (options, ``config.stash``); cogvx-ext hands them ``run``, a
:class:`RunContext`, as an argument of every hook but ``cogvx_add_arguments`` (nothing is parsed
yet) and ``cogvx_stages`` (it decides ``run.stages``). One per run: a training run, a
``cogvx-ext plan`` or ``cogvx-ext cache`` command, a pipeline prepared for inference. What the
core asks once (the stage schedule) is kept here, so every hook sees the same answer.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cogvx_ext.data.clips import Stage
    from cogvx_ext.model.facts import ModelInfo

_UNDECIDED: Any = object()


class RunContext:
    """One run, as its plugins see it. Read it; keep your own per-run data in :attr:`stash`.

    :ivar command: ``"train"``, ``"plan"``, ``"cache"`` or ``"inference"``.
    :ivar args: the parsed arguments: the script's flags and the plugins' own (at inference, the
        settings recorded with the LoRA).
    :ivar model: the model's positional facts (``ModelInfo``), or ``None`` until known (a training
        run reads the transformer's config at start when it can, else when the transformer has
        loaded).
    :ivar plugins: the chosen plugins' names, in the order they were registered.
    :ivar num_processes: the run's processes (training: the launcher's, then the accelerator's;
        ``cogvx-ext plan``: its ``--num_processes``).
    :ivar process_index: this process's rank among them (0 on the main process).
    :ivar lr_schedulers: training only: the learning-rate schedulers the script handed to
        ``accelerator.prepare``, as prepared (each an accelerate ``AcceleratedScheduler`` whose
        ``scheduler`` is the script's ``torch.optim.lr_scheduler.LRScheduler``); empty before then.
    :ivar stash: a dict for plugins' per-run data; key it by something of your own (your
        plugin's name, or an object you made). A module plugin has no instance per run: this is
        where its per-run state belongs.
    """

    def __init__(
        self,
        command: str,
        args: argparse.Namespace | None = None,
        model: ModelInfo | None = None,
        plugins: tuple[str, ...] | list[str] = (),
        num_processes: int | None = None,
        process_index: int | None = None,
        stages: list[Stage] | None = _UNDECIDED,
    ) -> None:
        self.command = command
        self.args = args
        self.model = model
        self.plugins = tuple(plugins)
        # What torchrun and accelerate launch tell every process; the accelerator confirms it later.
        self.num_processes = int(os.environ.get("WORLD_SIZE", 1) if num_processes is None else num_processes)
        self.process_index = int(os.environ.get("RANK", 0) if process_index is None else process_index)
        self.lr_schedulers: list[Any] = []
        self.stash: dict[Any, Any] = {}
        self._stages = stages

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    @property
    def stages(self) -> list[Stage] | None:
        """The stage schedule (``cogvx_stages``, asked once right after ``cogvx_configure``), or
        ``None`` for a run of one stage."""
        if self._stages is _UNDECIDED:
            raise RuntimeError("run.stages is decided after cogvx_configure (by cogvx_stages)")
        return self._stages

    def ask_stages(self, hook: Any) -> list[Stage] | None:
        """Ask ``cogvx_stages`` the first time (the core does, after ``cogvx_configure``); keep the answer."""
        if self._stages is _UNDECIDED:
            stages = hook.cogvx_stages(args=self.args)
            self._stages = list(stages) if stages else None
        return self._stages

    def __repr__(self) -> str:
        return (
            f"RunContext(command={self.command!r}, plugins={list(self.plugins)}, "
            f"process {self.process_index} of {self.num_processes})"
        )
