"""Says what the run made once it has ended: the final LoRA, the checkpoint a resume would take,
and how many latent shapes it trained at. A module plugin has no instance per run, so it keeps
its count in `run.stash`."""

import os

import torch

from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_transformer_forward(latent_shape, run):
    if torch.is_grad_enabled():  # a training batch (validation runs without gradients)
        run.stash.setdefault("shapes_trained", set()).add(tuple(latent_shape))


@hookimpl
def cogvx_train_end(lora, checkpoint, step, run):
    if run.is_main_process:
        shapes = len(run.stash.get("shapes_trained", ()))
        print(f"trained {step} steps at {shapes} latent shapes: {lora} ({os.path.getsize(lora)} bytes)")
        print(f"last checkpoint: {checkpoint}")
