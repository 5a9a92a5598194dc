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
    """Stands in for the script's pipeline class: adapts loaded pipelines, records LoRA metadata,
    gives the saved LoRA the modes the umask asks for."""

    def __init__(self, run, real_class):
        self._run = run
        self._real_class = real_class

    def from_pretrained(self, *args, **kwargs):
        with loading_whole(self._run.accelerator):
            pipe = self._real_class.from_pretrained(*args, **kwargs)
        if self._run.chosen & {"cogvx_pipeline_loaded", *FORWARD_HOOKS}:
            prepare_loaded_pipeline(self._run, pipe)
        _name_the_lora_file(pipe)
        return pipe

    def save_lora_weights(self, *args, **kwargs):
        if kwargs.get("transformer_lora_layers") is not None:  # ZeRO-3, on the main process alone
            kwargs["transformer_lora_layers"] = fill_empty_lora(
                kwargs["transformer_lora_layers"], self._run.zero3_lora
            )
        from cogvx_ext.base.io import files_under, give_umask_modes

        directory = kwargs.get("save_directory", args[0] if args else None)
        before = files_under(directory, recursive=False) if directory is not None else {}
        result = self._real_class.save_lora_weights(*args, **kwargs)
        if directory is not None:
            # safetensors writes the weights 0600 whatever the umask: a teammate could not read the LoRA.
            give_umask_modes(directory, before, recursive=False)
            if "cogvx_lora_metadata" in self._run.chosen:
                write_lora_metadata(self._run, directory)
        if directory is not None:
            _after_lora_saved(self._run, directory)
        return result

    def __getattr__(self, name):
        return getattr(self._real_class, name)


LORA_FILE = "pytorch_lora_weights.safetensors"  # what save_lora_weights writes


def _name_the_lora_file(pipe) -> None:
    """Reload the script's LoRA offline on every diffusers: diffusers before 0.40 refuses a folder
    without ``weight_name`` under ``HF_HUB_OFFLINE=1`` ("When using the offline mode, you must
    specify a weight_name"), and the scripts reload their output folder without one at the end."""
    real_load = getattr(pipe, "load_lora_weights", None)
    if real_load is None:
        return

    @functools.wraps(real_load)
    def load_lora_weights(source, *args, **kwargs):
        if (
            isinstance(source, (str, os.PathLike))
            and kwargs.get("weight_name") is None
            and os.path.isfile(os.path.join(source, LORA_FILE))
        ):
            kwargs["weight_name"] = LORA_FILE
        return real_load(source, *args, **kwargs)

    pipe.load_lora_weights = load_lora_weights


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
            # The scripts' final validation loads the LoRA at this weight (cogvx-ext generate too).
            "lora_scale": _lora_scale(run.args),
            "settings": settings,
        },
    )


def _lora_scale(args) -> float | None:
    alpha, rank = getattr(args, "lora_alpha", None), getattr(args, "rank", None)
    return alpha / rank if alpha and rank else None


def _wrap_log_validation(run, real_log_validation):
    parameters = list(inspect.signature(real_log_validation).parameters)
    # Wrapped for every run (the ZeRO-3 check, the videos written); the plugins take part only
    # when they validate.
    plugins_validate = run.chosen & {
        "cogvx_pipeline_loaded",
        "cogvx_validation_args",
        "cogvx_prompt_embeddings",
    }

    @functools.wraps(real_log_validation)
    def log_validation(*args, **kwargs):
        bound = dict(zip(parameters, args), **kwargs)
        refuse_partitioned_validation(run.accelerator, bound["pipe"].transformer)
        variants = [dict(bound["pipeline_args"])]
        if plugins_validate:
            prepare_loaded_pipeline(run, bound["pipe"])
            samples = run.dataset.samples if run.dataset is not None else None
            run.hook.cogvx_validation_args(variants=variants, args=run.args, samples=samples, run=run.context)
        videos = []
        for pipeline_args in variants:
            videos.extend(_validate_one(run, real_log_validation, {**bound, "pipeline_args": pipeline_args}))
        if plugins_validate and run.text_encoder_offloaded is not None:
            # The T2V validation pipeline shares the text encoder and moved it to the accelerator.
            run.text_encoder_offloaded.to("cpu")
        return videos

    return log_validation


def _validate_one(run, real_log_validation, bound) -> list:
    """One validation size: the script's ``log_validation`` makes the videos (its trackers hidden);
    they are written under ``OUTPUT_DIR/validation/`` and logged per size (cogvx_ext.script.validation_videos)."""
    from pathlib import Path

    from cogvx_ext.script import validation_videos as vv

    accelerator, args, pipeline_args = bound["accelerator"], bound["args"], bound["pipeline_args"]
    final = bool(bound.get("is_final_validation", False))
    step = run.logged_step
    where = (
        "after training"
        if final
        else (f"at step {step}" if step is not None else f"in epoch {bound['epoch']}")
    )
    vv.say(f"validation {where}: {vv.describe(pipeline_args, getattr(args, 'num_validation_videos', 1))}")
    with vv.trackers_hidden(accelerator):
        videos = list(real_log_validation(**bound) or [])
    prompt = str(pipeline_args.get("prompt", ""))
    slug = vv.prompt_slug(prompt, run.validation_slugs)
    folder = Path(args.output_dir) / "validation" / vv.folder_name(step, bound["epoch"], final)
    fps = getattr(args, "fps", None) or 8  # the rate training sampled frames at
    written = vv.save_videos(folder, slug, prompt, videos, fps)
    for video in written:
        frames = video.frames.shape[0]
        vv.say(f"wrote {vv.shown_path(video.path)} ({video.width}x{video.height}, {frames} frames)")
    vv.log_to_trackers(
        getattr(accelerator, "trackers", None),
        "test" if final else "validation",
        prompt,
        slug,
        written,
        step,
        fps,
    )
    return videos
