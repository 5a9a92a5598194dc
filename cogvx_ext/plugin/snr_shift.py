"""The SNR shift the plugins give each latent shape (``cogvx_snr_shift``), as a function the
shift-following scheduler (cogvx_ext.model.snr_shift) asks, for training, validation and inference."""

from __future__ import annotations

from typing import Any

from cogvx_ext.base.errors import report_warning
from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.model.snr_shift import ShiftFor, follow_shift
from cogvx_ext.plugin.manager import implemented_by_plugins


def plugins_shift(hook: Any) -> bool:
    """Whether a chosen plugin answers ``cogvx_snr_shift``."""
    return implemented_by_plugins(hook.cogvx_snr_shift)


def shift_rule(hook: Any, model: ModelInfo | None, base_shift: float, run: Any) -> ShiftFor:
    """``latent_shape -> shift``: the plugins' answer, or the model's own shift when none answers."""

    def shift_for(latent_shape: tuple[int, int, int]) -> float:
        known = model or getattr(run, "model", None)  # a training run knows its model once loaded
        answer = hook.cogvx_snr_shift(
            model=known, latent_shape=tuple(latent_shape), shift=base_shift, run=run
        )
        return base_shift if answer is None else float(answer)

    return shift_for


def follow_pipeline_shift(pipe: Any, hook: Any, model: ModelInfo, run: Any) -> None:
    """Give ``pipe`` a scheduler whose SNR shift follows the size it generates at (when a plugin
    answers ``cogvx_snr_shift``)."""
    if not plugins_shift(hook):
        return
    config = pipe.scheduler.config
    if "snr_shift_scale" not in config:
        report_warning(
            f"the pipeline's {type(pipe.scheduler).__name__} has no snr_shift_scale: it keeps its own "
            "noise schedule at every size (use a CogVideoX scheduler to get the trained SNR shift)"
        )
        return
    base_shift = float(config.snr_shift_scale)
    pipe.scheduler = follow_shift(pipe.scheduler, shift_rule(hook, model, base_shift, run))
