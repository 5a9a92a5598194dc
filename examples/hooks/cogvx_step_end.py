"""Logs the seconds each loop iteration took, with the loss (the script's progress bar shows it,
its trackers record it)."""

import time

from cogvx_ext import hookimpl


class StepTimer:
    def __init__(self):
        self.last = None

    @hookimpl
    def cogvx_step_end(self, logs):
        now = time.perf_counter()
        if self.last is not None:
            logs["seconds_per_step"] = round(now - self.last, 3)
        self.last = now
