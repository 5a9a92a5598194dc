"""Counts the training forwards across a resume: the count is saved with every checkpoint and
given back when training resumes from one. (It counts forwards, not `cogvx_step_end` calls: the
scripts save a checkpoint before they log its step.)"""

import torch

from cogvx_ext.api import hookimpl


class ForwardCounter:
    def __init__(self):
        self.forwards = 0

    @hookimpl
    def cogvx_transformer_forward(self):
        if torch.is_grad_enabled():
            self.forwards += 1

    @hookimpl
    def cogvx_state_dict(self):
        return {"forwards": self.forwards}

    @hookimpl
    def cogvx_load_state_dict(self, state):
        self.forwards = state["forwards"]
