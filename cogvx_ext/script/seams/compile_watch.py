"""Compilations under accelerate's dynamo backend, bounded by the plan's latent shapes and logged."""

from __future__ import annotations

from cogvx_ext.script.seams.accelerator import _on_every_logged_step


def _watch_compilations(run, described, samples) -> None:
    """Under accelerate's dynamo backend, bound the compilations by the latent shapes batches can
    have (the sampler's report, ``cogvx_ext.data.sampling.SamplerReport``, and the samples' own: a
    report drawn from one epoch may not name every shape) and log each one
    (cogvx_ext.script.compiling); the model is compiled later, in ``accelerator.prepare``."""
    from cogvx_ext.data.planning import latent_shape_key
    from cogvx_ext.script.compiling import CompileWatch, dynamo_backend

    accelerator = run.accelerator
    backend = dynamo_backend(accelerator)
    if backend is None:
        return
    shapes = {tuple(shape) for shape in described.shapes}
    shapes |= {latent_shape_key(sample, run.model) for sample in samples}
    watch = CompileWatch(backend, len(shapes))
    _on_every_logged_step(accelerator, lambda values, step: watch.step_end(step))
