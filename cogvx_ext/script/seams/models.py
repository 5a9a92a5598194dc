"""The scripts' model classes: ``cogvx_transformer_loaded``, ``cogvx_vae_loaded``, forward hooks, RoPE."""

from __future__ import annotations

import contextlib


class _LoaderProxy:
    """Stands in for a diffusers model class: the scripts only call ``from_pretrained`` on it."""

    def __init__(self, real_class, on_loaded=None, loading=contextlib.nullcontext):
        self._real_class = real_class
        self._on_loaded = on_loaded
        self._loading = loading

    def from_pretrained(self, *args, **kwargs):
        with self._loading():
            model = self._real_class.from_pretrained(*args, **kwargs)
        if self._on_loaded is not None:
            self._on_loaded(model)
        return model

    def __getattr__(self, name):
        return getattr(self._real_class, name)


def _transformer_loaded(run, transformer) -> None:
    from cogvx_ext.model.facts import ModelInfo
    from cogvx_ext.plugin.forward import install_forward_hooks

    run.transformer = transformer
    run.model = ModelInfo.from_config(transformer.config)  # the loaded config is the authority
    run.check_requirements()
    run.hook.cogvx_transformer_loaded(transformer=transformer, args=run.args, run=run.context)
    install_forward_hooks(transformer, run.hook, run.model, run.context)


def _rope_from_forward_hook(*args, **kwargs):
    # A chosen plugin computes RoPE from the tensor that reaches the transformer (cogvx_ext.plugin.forward);
    # the script's own per-step embedding, from --height/--width, would be thrown away.
    return None


def _vae_loaded(run, vae) -> None:
    run.vae = vae
    run.hook.cogvx_vae_loaded(vae=vae, args=run.args, run=run.context)
