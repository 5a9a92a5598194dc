"""A CogVideoX scheduler whose SNR shift follows each sample's latent shape.

CogVideoX's schedulers (``CogVideoXDPMScheduler``, ``CogVideoXDDIMScheduler``) shift their
schedule once, when they are built: ``alphas_cumprod / (s + (1 - s) * alphas_cumprod)`` with
``s = snr_shift_scale``, then the zero-terminal-SNR rescale (diffusers
``scheduling_dpm_cogvideox.py``). :func:`follow_shift` gives a scheduler that picks, at every
``add_noise``, ``get_velocity`` and ``step``, the schedule of a scheduler of the same class and
config built with the shift that the sample's latent shape gets: exactly what that scheduler
would compute, rescale included. ``alphas_cumprod`` stays at the last schedule picked, so the
training scripts' loss weight ``1 / (1 - alphas_cumprod[t])`` read after ``add_noise`` follows
the batch too. It is still an instance of the scheduler's class (the pipelines test
``isinstance(scheduler, CogVideoXDPMScheduler)`` to choose how to step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from cogvx_ext.model.facts import latent_shape_of

# (frames, height, width) in latent units -> the shift for samples of that shape
ShiftFor = Callable[[tuple[int, int, int]], float]

_follower_classes: dict[type, type] = {}


def follow_shift(scheduler: Any, shift_for: ShiftFor) -> Any:
    """A scheduler of ``scheduler``'s class and config whose SNR shift follows each sample's latent
    shape (``shift_for``); ``config.snr_shift_scale`` keeps the model's own shift."""
    base_class = getattr(type(scheduler), "_cogvx_base_class", type(scheduler))
    follower = _follower_class(base_class).from_config(scheduler.config)
    follower._cogvx_shift_for = shift_for
    return follower


def _follower_class(base_class: type) -> type:
    if base_class not in _follower_classes:
        _follower_classes[base_class] = type(
            base_class.__name__,  # the pipeline's saved config names the class it knows
            (_ShiftFollowing, base_class),
            {"_cogvx_base_class": base_class, "__module__": base_class.__module__},
        )
    return _follower_classes[base_class]


class _ShiftFollowing:
    """Mixed in before the scheduler's class (see :func:`_follower_class`)."""

    _cogvx_base_class: type
    _cogvx_shift_for: ShiftFor | None = None

    def _cogvx_select(self, sample: torch.Tensor) -> None:
        if sample.ndim != 5 or self._cogvx_shift_for is None:
            return
        shift = float(self._cogvx_shift_for(latent_shape_of(sample)))
        if shift == getattr(self, "_cogvx_shift", None):
            return
        schedules = self.__dict__.setdefault("_cogvx_schedules", {})
        if shift not in schedules:
            built = self._cogvx_base_class.from_config(self.config, snr_shift_scale=shift)
            schedules[shift] = (built.alphas_cumprod, built.final_alpha_cumprod)
        alphas_cumprod, final = schedules[shift]
        self.alphas_cumprod = alphas_cumprod.to(self.alphas_cumprod.device)
        self.final_alpha_cumprod = final
        self._cogvx_shift = shift

    @property
    def current_shift(self) -> float:
        """The shift of the schedule in use (the model's own until a sample picked another)."""
        return getattr(self, "_cogvx_shift", float(self.config.snr_shift_scale))

    def add_noise(self, original_samples, noise, timesteps):
        self._cogvx_select(original_samples)
        return super().add_noise(original_samples, noise, timesteps)

    def get_velocity(self, sample, noise, timesteps):
        self._cogvx_select(sample)
        return super().get_velocity(sample, noise, timesteps)

    def step(self, *args, **kwargs):
        # The model output (the first argument) has the sample's shape, in every CogVideoX scheduler.
        output = args[0] if args else kwargs.get("model_output")
        if isinstance(output, torch.Tensor):
            self._cogvx_select(output)
        return super().step(*args, **kwargs)
