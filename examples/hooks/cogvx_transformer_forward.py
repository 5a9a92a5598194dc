"""Prints the latent shape of every forward: training runs with gradients, the validation
pipelines without."""

import torch

from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_transformer_forward(latent_shape):
    print("training on" if torch.is_grad_enabled() else "generating at", latent_shape)
