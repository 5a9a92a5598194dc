"""Compilations under accelerate's dynamo backend: the transformer's blocks compiled regionally,
bounded by the plan's latent shapes and logged (cogvx_ext.script.compiling)."""

from __future__ import annotations

from cogvx_ext.script.seams.accelerator import _on_every_logged_step


def _watch_compilations(run, described, samples) -> None:
    """Under accelerate's dynamo backend, compile the transformer's blocks in place (accelerate's
    settings) and keep ``accelerator.prepare``, which comes next in the scripts, from compiling the
    whole model; bound the compilations by the latent shapes batches can have (the sampler's report,
    ``cogvx_ext.data.sampling.SamplerReport``, and the samples' own: a report drawn from one epoch
    may not name every shape) and log each one with the latent shapes of its step."""
    import torch

    from cogvx_ext.data.planning import latent_shape_key
    from cogvx_ext.model.facts import latent_shape_of
    from cogvx_ext.script.compiling import (
        CompileWatch,
        accelerate_compile_kwargs,
        compile_blocks,
        dynamo_backend,
        leave_compiling_to_us,
        static_shapes_asked,
        use_compile_cache,
    )

    accelerator = run.accelerator
    backend = dynamo_backend(accelerator)
    if backend is None:
        return
    shapes = {tuple(shape) for shape in described.shapes}
    shapes |= {latent_shape_key(sample, run.model) for sample in samples}
    cache = use_compile_cache()
    kwargs = accelerate_compile_kwargs(accelerator)
    transformer = run.transformer
    blocks = compile_blocks(transformer, **kwargs) if transformer is not None else []
    if blocks:
        leave_compiling_to_us(accelerator)
    # Dynamic unless asked otherwise (ours, or accelerate's own dynamic=False); the whole model never.
    dynamic = bool(blocks) and kwargs.get("dynamic") is not False and not static_shapes_asked()
    watch = CompileWatch(backend, len(shapes), blocks=blocks, dynamic=dynamic, cache=cache)
    if transformer is not None:

        def saw(module, args, kwargs):
            hidden_states = kwargs.get("hidden_states", args[0] if args else None)
            if hidden_states is not None:
                watch.saw(latent_shape_of(hidden_states))

        transformer.register_forward_pre_hook(torch.compiler.disable(saw), with_kwargs=True)
    _on_every_logged_step(accelerator, lambda values, step: watch.step_end(step))
