"""The script's pipeline class and ``log_validation``: validation variants, loaded pipelines, the LoRA's record."""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any

from cogvx_ext.script.seams.kinds import FORWARD_HOOKS
from cogvx_ext.script.seams.train_end import _after_lora_saved
from cogvx_ext.script.zero3 import (
    fill_empty_lora,
    loading_whole,
    refuse_partitioned_validation,
)


class _PipelineProxy:
    """Stands in for the script's pipeline class: adapts loaded pipelines, records LoRA metadata."""

    def __init__(self, run, real_class):
        self._run = run
        self._real_class = real_class

    def from_pretrained(self, *args, **kwargs):
        with loading_whole(self._run.accelerator):
            pipe = self._real_class.from_pretrained(*args, **kwargs)
        if self._run.chosen & {"cogvx_pipeline_loaded", *FORWARD_HOOKS}:
            prepare_loaded_pipeline(self._run, pipe)
        return pipe

    def save_lora_weights(self, *args, **kwargs):
        if kwargs.get("transformer_lora_layers") is not None:  # ZeRO-3, on the main process alone
            kwargs["transformer_lora_layers"] = fill_empty_lora(
                kwargs["transformer_lora_layers"], self._run.zero3_lora
            )
        result = self._real_class.save_lora_weights(*args, **kwargs)
        directory = kwargs.get("save_directory", args[0] if args else None)
        if directory is not None and "cogvx_lora_metadata" in self._run.chosen:
            write_lora_metadata(self._run, directory)
        if directory is not None:
            _after_lora_saved(self._run, directory)
        return result

    def __getattr__(self, name):
        return getattr(self._real_class, name)


def prepare_loaded_pipeline(run, pipe) -> None:
    """Give a freshly loaded pipeline what the training transformer has (forward hooks, adaptation)."""
    from cogvx_ext.model.facts import ModelInfo
    from cogvx_ext.plugin.forward import install_forward_hooks

    if getattr(pipe, "_cogvx_ext_prepared", False):
        return
    install_forward_hooks(
        pipe.transformer, run.hook, run.model or ModelInfo.from_config(pipe.transformer.config), run.context
    )
    run.hook.cogvx_pipeline_loaded(pipe=pipe, args=run.args, run=run.context)
    pipe._cogvx_ext_prepared = True


def write_lora_metadata(run, directory: str) -> None:
    from cogvx_ext import __version__
    from cogvx_ext.base.io import write_json_atomic
    from cogvx_ext.plugin.lora_record import METADATA_FILE

    settings: dict[str, Any] = {}
    for part in run.hook.cogvx_lora_metadata(args=run.args, run=run.context):
        settings.update(part or {})
    write_json_atomic(
        os.path.join(directory, METADATA_FILE),
        {
            "cogvx_ext_version": __version__,
            "plugins": run.plugin_names,
            "model": run.model.name if run.model else None,
            "settings": settings,
        },
    )


def _wrap_log_validation(run, real_log_validation):
    parameters = list(inspect.signature(real_log_validation).parameters)
    # Wrapped for every run (the ZeRO-3 check); the plugins take part only when they validate.
    plugins_validate = run.chosen & {
        "cogvx_pipeline_loaded",
        "cogvx_validation_args",
        "cogvx_prompt_embeddings",
    }

    @functools.wraps(real_log_validation)
    def log_validation(*args, **kwargs):
        bound = dict(zip(parameters, args), **kwargs)
        refuse_partitioned_validation(run.accelerator, bound["pipe"].transformer)
        if not plugins_validate:
            return real_log_validation(*args, **kwargs)
        prepare_loaded_pipeline(run, bound["pipe"])
        samples = run.dataset.samples if run.dataset is not None else None
        variants = [dict(bound["pipeline_args"])]
        run.hook.cogvx_validation_args(variants=variants, args=run.args, samples=samples, run=run.context)
        videos = []
        for pipeline_args in variants:
            videos.extend(real_log_validation(**{**bound, "pipeline_args": pipeline_args}) or [])
        if run.text_encoder_offloaded is not None:
            # The T2V validation pipeline shares the text encoder and moved it to the accelerator.
            run.text_encoder_offloaded.to("cpu")
        return videos

    return log_validation
