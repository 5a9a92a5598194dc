"""A trained LoRA into a stock diffusers pipeline, positions set up as in training (the body of
``cogvx_ext.inference``, down here so that ``cogvx-ext generate`` can use it too).

The training run wrote ``cogvx_ext.json`` next to the LoRA weights: the plugins of the run and
the settings they recorded (``cogvx_lora_metadata``). The pipeline gets the same plugins, with
those settings as their ``args``, through the hooks that act on a pipeline: the forward hooks
(rotary embedding, 1.5 frame padding), ``cogvx_pipeline_loaded`` (the learned table) and
``cogvx_snr_shift`` (the scheduler denoises with the SNR shift of the size asked for).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable
from typing import Any

import pluggy

from cogvx_ext.base.errors import UsageError
from cogvx_ext.data.context import RunContext
from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.plugin.forward import install_forward_hooks, remove_forward_hooks
from cogvx_ext.plugin.lora_record import LORA_WEIGHT_NAME, METADATA_FILE, read_metadata
from cogvx_ext.plugin.manager import load_plugins, make_plugin_manager, parse_plugin_list
from cogvx_ext.plugin.snr_shift import follow_pipeline_shift

logger = logging.getLogger("cogvx_ext.inference")


def make_inference_plugin_manager(names: Iterable[str]) -> pluggy.PluginManager:
    """A fresh plugin manager holding the plugins the training run recorded, found as in training.

    A recorded plugin that cannot be loaded here (not installed, a .py file left behind) is
    reported and skipped: the pipeline then lacks only what that plugin did.
    """
    pm = make_plugin_manager()
    for name in names:
        try:
            load_plugins(pm, parse_plugin_list([name]))
        except (UsageError, ImportError) as exc:
            logger.warning(
                "cogvx-ext: recorded plugin %r is not available here (%s); inference goes on without it",
                name,
                exc,
            )
    return pm


def recorded_args(pm: pluggy.PluginManager, settings: dict[str, Any]) -> argparse.Namespace:
    """The plugins' flags at their defaults, overridden by the settings the training run recorded."""
    parser = argparse.ArgumentParser(add_help=False)
    pm.hook.cogvx_add_arguments(parser=parser)
    args = parser.parse_args([])
    vars(args).update(settings)
    return args


def prepare_pipeline(
    pipe: Any, lora_dir: str | os.PathLike, adapter_name: str = "cogvx", lora_scale: float | None = None
) -> Any:
    """Load the LoRA in ``lora_dir`` into ``pipe`` and set positions up as in training; returns ``pipe``.

    :param pipe: a stock ``CogVideoXPipeline`` or ``CogVideoXImageToVideoPipeline``.
    :param lora_dir: the training run's output folder (LoRA weights and ``cogvx_ext.json``).
    :param adapter_name: the name the LoRA is loaded under.
    :param lora_scale: the LoRA's weight; None keeps 1.0.
    """
    lora_dir = os.fspath(lora_dir)
    weight_name = LORA_WEIGHT_NAME if os.path.isfile(os.path.join(lora_dir, LORA_WEIGHT_NAME)) else None
    pipe.load_lora_weights(lora_dir, weight_name=weight_name, adapter_name=adapter_name)
    if lora_scale is not None:
        pipe.set_adapters([adapter_name], [lora_scale])

    metadata = read_metadata(lora_dir)
    if metadata is None:
        logger.warning(
            "cogvx-ext: %s has no %s; the pipeline keeps its stock positions", lora_dir, METADATA_FILE
        )
        return pipe
    pm = make_inference_plugin_manager(metadata.get("plugins", []))
    args = recorded_args(pm, metadata.get("settings", {}))
    model = ModelInfo.from_config(pipe.transformer.config)
    # No schedule at inference: stages are a training matter.
    run = RunContext("inference", args=args, model=model, plugins=metadata.get("plugins", []), stages=None)
    # A pipeline prepared before (another LoRA) gets this run's hooks, not the earlier ones.
    remove_forward_hooks(pipe.transformer)
    install_forward_hooks(pipe.transformer, pm.hook, model, run)
    pm.hook.cogvx_pipeline_loaded(pipe=pipe, args=args, run=run)
    follow_pipeline_shift(pipe, pm.hook, model, run)  # the SNR shift of the size it generates at
    pipe._cogvx_ext_plugin_manager = pm  # the hooks' plugins live as long as the pipeline
    return pipe
