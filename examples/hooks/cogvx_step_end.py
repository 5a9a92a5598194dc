"""Logs the seconds each loop iteration took, with the loss, to the script's trackers
(`--report_to`)."""

import time

from cogvx_ext.api import hookimpl


class StepTimer:
    def __init__(self):
        self.last = None

    @hookimpl
    def cogvx_step_end(self, logs):
        now = time.perf_counter()
        if self.last is not None:
            logs["seconds_per_step"] = round(now - self.last, 3)
        self.last = now
