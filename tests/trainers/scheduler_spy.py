"""Train with cogvx-ext in this process and record what the training scheduler gave the script.

    python scheduler_spy.py RECORD.safetensors SCRIPT [the script's arguments, --plugins ...]

The script is loaded with ``cogvx_ext.load_trainer`` (its seams installed), then the scheduler
its ``from_pretrained`` makes is watched: every ``add_noise`` and ``get_velocity`` call (inputs and
result) and every ``alphas_cumprod`` the script reads itself (the loss weight), in order.
tests/test_snr_shift.py compares them with schedulers built with the expected shift.
"""

from __future__ import annotations

import json
import sys

import safetensors.torch

import cogvx_ext

record_path, script, *argv = sys.argv[1:]
module = cogvx_ext.load_trainer(script, argv=argv)
tensors: dict = {}
events: list[dict] = []


def keep(kind: str, **values) -> None:
    index = len(events)
    events.append({"kind": kind, "index": index})
    for name, value in values.items():
        tensors[f"{index}.{name}"] = value.detach().cpu().clone().contiguous()


def watch(scheduler):
    inside = []  # add_noise / get_velocity read alphas_cumprod themselves: not the script's read

    class Watched(type(scheduler)):
        @property
        def alphas_cumprod(self):
            value = self.__dict__["_watched_alphas_cumprod"]
            if not inside:
                keep("alphas_cumprod", value=value)
            return value

        @alphas_cumprod.setter
        def alphas_cumprod(self, value):
            self.__dict__["_watched_alphas_cumprod"] = value

    alphas_cumprod = scheduler.__dict__.pop("alphas_cumprod")
    scheduler.__class__ = Watched
    scheduler.alphas_cumprod = alphas_cumprod
    add_noise, get_velocity = scheduler.add_noise, scheduler.get_velocity

    def watched_add_noise(original_samples, noise, timesteps):
        inside.append(1)
        try:
            result = add_noise(original_samples, noise, timesteps)
        finally:
            inside.pop()
        keep("add_noise", original=original_samples, noise=noise, timesteps=timesteps, result=result)
        return result

    def watched_get_velocity(sample, noise, timesteps):
        inside.append(1)
        try:
            result = get_velocity(sample, noise, timesteps)
        finally:
            inside.pop()
        keep("get_velocity", sample=sample, noise=noise, timesteps=timesteps, result=result)
        return result

    scheduler.add_noise, scheduler.get_velocity = watched_add_noise, watched_get_velocity
    return scheduler


class WatchedClass:
    def __init__(self, real):
        self._real = real

    def from_pretrained(self, *args, **kwargs):
        return watch(self._real.from_pretrained(*args, **kwargs))

    def __getattr__(self, name):
        return getattr(self._real, name)


module.CogVideoXDPMScheduler = WatchedClass(module.CogVideoXDPMScheduler)
module.main(module.get_args())
safetensors.torch.save_file(tensors, record_path, metadata={"events": json.dumps(events)})
