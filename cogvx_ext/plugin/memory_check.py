"""The memory estimate as the chosen plugins change it, and ``cogvx_memory_check`` before models load."""

from __future__ import annotations

from typing import Any

from cogvx_ext.base.errors import UsageError
from cogvx_ext.data.context import RunContext
from cogvx_ext.model.memory.setup import TrainingSetup, setup_from_args
from cogvx_ext.plugin.manager import chosen_hooks


def setup_for_plugins(pm: Any, args: Any, model: str | None = None, **overrides: Any) -> TrainingSetup:
    """The run's setup, with what the chosen plugins change: a plugin answering
    ``cogvx_prompt_embeddings`` takes the text encoder off the device (the core moves it to the CPU
    once every prompt is answered, before the first step). ``overrides`` go to ``setup_from_args``."""
    return setup_from_args(
        args, model, text_encoder_on_device="cogvx_prompt_embeddings" not in chosen_hooks(pm), **overrides
    )


def check_before_loading(pm: Any, run: RunContext, model: str | None = None) -> None:
    """Fire ``cogvx_memory_check`` before any model loads (``samples=None``), when a chosen plugin
    implements it.

    ``model`` names a released model when the arguments name none (``cogvx-ext plan --model``)."""
    _fire(pm, run, model, None)


def check_planned(pm: Any, run: RunContext, samples: list, **overrides: Any) -> None:
    """Fire ``cogvx_memory_check`` with the planned samples, before anything is decoded.
    ``overrides``: what the run knows by now (``transformer_config``, ``mixed_precision``)."""
    _fire(pm, run, getattr(run.args, "model", None), list(samples), **overrides)


def _fire(pm: Any, run: RunContext, model: str | None, samples, **overrides) -> None:
    if "cogvx_memory_check" not in chosen_hooks(pm):
        return
    try:
        setup = setup_for_plugins(pm, run.args, model, **overrides)
    except UsageError:
        # The configs cannot be had without a download: a plugin that needs them says so itself
        # (setup_from_args gives the reason); the others go on.
        setup = None
    pm.hook.cogvx_memory_check(
        setup=setup,
        args=run.args,
        model=run.model or (setup.model if setup else None),
        stages=run.stages,
        samples=samples,
        run=run,
    )
