"""Runs the forward hooks around a CogVideoX transformer's forward pass.

Works on any ``CogVideoXTransformer3DModel`` (the training script's, a validation pipeline's, or
one set up by ``cogvx_ext.inference``), so it knows nothing about the training scripts. The
latent shape is read from the tensor that reaches the model, never from sampler state: accelerate
fetches the next batch before the current one is used.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from cogvx_ext.data.context import RunContext
from cogvx_ext.model.facts import ModelInfo, latent_shape_of
from cogvx_ext.model.rope import default_rotary_embedding

_ATTR = "_cogvx_ext_forward_hooks"


def install_forward_hooks(transformer: torch.nn.Module, hook: Any, model: ModelInfo, run: RunContext) -> bool:
    """Attach the cogvx forward hooks to ``transformer`` once; returns False when none are implemented.

    ``hook`` is a plugin manager's ``pm.hook`` relay, ``run`` the context its hooks are given.
    """
    from cogvx_ext.plugin.manager import implemented_by_plugins

    wants_inputs = implemented_by_plugins(hook.cogvx_transformer_forward)
    # The core's default embedding answers only once a plugin has taken the forward's RoPE over.
    wants_rope = model.rotary and implemented_by_plugins(hook.cogvx_rotary_embedding)
    wants_output = implemented_by_plugins(hook.cogvx_transformer_output)
    if not (wants_inputs or wants_rope or wants_output):
        return False
    if getattr(transformer, _ATTR, None) is not None:
        return True
    signature = inspect.signature(transformer.forward)

    def before(module, args, kwargs):
        inputs = dict(signature.bind_partial(*args, **kwargs).arguments) if args else dict(kwargs)
        if wants_inputs:
            hook.cogvx_transformer_forward(
                transformer=module,
                inputs=inputs,
                latent_shape=latent_shape_of(inputs["hidden_states"]),
                model=model,
                run=run,
            )
        if wants_rope:
            hidden_states = inputs["hidden_states"]
            rope = hook.cogvx_rotary_embedding(
                model=model, latent_shape=latent_shape_of(hidden_states), device=hidden_states.device, run=run
            )
            if rope is None:  # a hook relay made without the core's defaults (cogvx_ext.plugin.defaults)
                rope = default_rotary_embedding(model, latent_shape_of(hidden_states), hidden_states.device)
            inputs["image_rotary_emb"] = rope
        return (), inputs

    # Under torch.compile the hooks run as plain Python, outside the graph: dynamo would otherwise
    # trace into pluggy, break the graph there and keep a compiled piece of the hook per shape
    # (measured: bucketed steps 3x slower than single-shape ones, benchmarks/compile_buckets.py).
    before = torch.compiler.disable(before, recursive=True)
    handles = [transformer.register_forward_pre_hook(before, with_kwargs=True)]
    if wants_output:

        def after(module, args, kwargs, output):
            return hook.cogvx_transformer_output(
                transformer=module, inputs=kwargs, output=output, model=model, run=run
            )

        handles.append(transformer.register_forward_hook(torch.compiler.disable(after), with_kwargs=True))
    setattr(transformer, _ATTR, handles)
    return True


def remove_forward_hooks(transformer: torch.nn.Module) -> None:
    for handle in getattr(transformer, _ATTR, None) or ():
        handle.remove()
    if hasattr(transformer, _ATTR):
        delattr(transformer, _ATTR)
