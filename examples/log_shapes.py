"""A single-file cogvx-ext plugin: logs each training batch's latent shape and token count.

    accelerate launch train_cogvideox_lora.py ... --plugins aspect_bucket,rope_rescale,./log_shapes.py

It uses the three hooks every plugin author meets first (cogvx_add_arguments, cogvx_configure,
cogvx_transformer_loaded) and two more: cogvx_transformer_forward sees every batch as it reaches
the model, cogvx_step_end adds to what the script logs to its trackers (tensorboard, wandb).
"""

import torch

from cogvx_ext.api import UsageError, hookimpl

# A .py plugin is registered as a module: one training run per process, so module state is fine.
last_batch = {}
settings = {}


@hookimpl
def cogvx_add_arguments(parser):
    group = parser.add_argument_group("log_shapes (examples/log_shapes.py)")
    group.add_argument("--log_shapes_every", type=int, default=1, help="print the batch shape every N steps")


@hookimpl
def cogvx_configure(args):
    if args.log_shapes_every < 1:
        raise UsageError("--log_shapes_every must be at least 1")
    settings["every"] = args.log_shapes_every


@hookimpl
def cogvx_transformer_loaded(transformer):
    count = sum(p.numel() for p in transformer.parameters())
    print(f"log_shapes: transformer has {count:,} parameters before LoRA")


@hookimpl
def cogvx_transformer_forward(inputs, latent_shape, model):
    # Training forwards run with gradients on; validation pipelines run under no_grad.
    if torch.is_grad_enabled():
        last_batch.update(
            batch_size=int(inputs["hidden_states"].shape[0]),
            latent_frames=latent_shape[0],
            latent_height=latent_shape[1],
            latent_width=latent_shape[2],
            tokens_per_sample=model.tokens(latent_shape),
        )


@hookimpl
def cogvx_step_end(step, logs):
    if last_batch:
        logs.update(last_batch)  # goes to the script's trackers with the loss
        if step is not None and step % settings["every"] == 0:
            f, h, w = last_batch["latent_frames"], last_batch["latent_height"], last_batch["latent_width"]
            print(
                f"log_shapes: step {step}: batch {last_batch['batch_size']} x latent {f}x{h}x{w}, "
                f"{last_batch['tokens_per_sample']} tokens per sample",
                flush=True,
            )
