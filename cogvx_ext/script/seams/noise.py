"""The script's ``CogVideoXDPMScheduler``: a schedule that follows each batch's latent shape.

The scripts build their training scheduler with ``CogVideoXDPMScheduler.from_pretrained(...)``
and in the step call ``add_noise(model_input, noise, timesteps)``, ``get_velocity(model_output,
noisy_model_input, timesteps)`` and read ``alphas_cumprod[timesteps]`` for the loss weight;
``log_validation`` and the final validation build the pipeline's with
``CogVideoXDPMScheduler.from_config(...)``. Every scheduler the global makes here is a
shift-following one (cogvx_ext.model.snr_shift) that asks ``cogvx_snr_shift`` for each sample's
shape, so the noise, the velocity target, the loss weight and validation's denoising all use the
batch's shift. Installed only when a chosen plugin implements ``cogvx_snr_shift``.
"""

from __future__ import annotations

from cogvx_ext.model.snr_shift import follow_shift
from cogvx_ext.plugin.snr_shift import shift_rule


class _ShiftFollowingSchedulerClass:
    """Stands in for the script's scheduler class."""

    def __init__(self, run, real_class):
        self._run = run
        self._real_class = real_class

    def _follow(self, scheduler):
        base_shift = float(scheduler.config.snr_shift_scale)
        return follow_shift(scheduler, shift_rule(self._run.hook, None, base_shift, self._run.context))

    def from_pretrained(self, *args, **kwargs):
        return self._follow(self._real_class.from_pretrained(*args, **kwargs))

    def from_config(self, *args, **kwargs):
        return self._follow(self._real_class.from_config(*args, **kwargs))

    def __call__(self, *args, **kwargs):
        return self._follow(self._real_class(*args, **kwargs))

    def __getattr__(self, name):
        return getattr(self._real_class, name)
