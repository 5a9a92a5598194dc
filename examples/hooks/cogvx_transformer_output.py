"""Logs the RMS of the training prediction with the loss; the output itself is kept (`None`)."""

import torch

from cogvx_ext.api import hookimpl


class PredictionScale:
    def __init__(self):
        self.rms = None

    @hookimpl
    def cogvx_transformer_output(self, output):
        if torch.is_grad_enabled():
            prediction = output[0] if isinstance(output, tuple) else output.sample
            self.rms = prediction.detach().float().pow(2).mean().sqrt().item()
        return None

    @hookimpl
    def cogvx_step_end(self, logs):
        if self.rms is not None:
            logs["prediction_rms"] = self.rms
