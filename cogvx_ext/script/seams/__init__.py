"""The only module that knows the diffusers CogVideoX training scripts' internals.

``train_cogvideox_lora.py`` (T2V) and ``train_cogvideox_image_to_video_lora.py`` (I2V) look every
collaborator up in their module globals when ``main`` runs, so replacing a global between
``get_args()`` and ``main(args)`` changes what ``main`` uses, without editing the file
(../shared/docs/seams.md has the map). Each seam below replaces one or a few globals, and is
installed only when a chosen plugin implements a hook that needs it:

=================================  ============================================================
seam (script globals)               what it does
=================================  ============================================================
``main``                            fires ``cogvx_exception``; removes what the run installed
``Accelerator``                     fires ``cogvx_accelerator_ready``; plugin state is saved and
                                    loaded with ``save_state``/``load_state``, the plugins'
                                    training settings saved (compared on resume at start,
                                    cogvx_ext.script.resume), the saved files given the
                                    umask's modes; ``accelerator.log``
                                    fires ``cogvx_step_end`` and keeps the step,
                                    ``end_training`` ``cogvx_train_end``; under DeepSpeed
                                    the script's save/load hooks get the unwrapped model
``tqdm``                            the "Steps" bar shows what ``cogvx_step_end`` adds to the logs
``CogVideoXTransformer3DModel``     fires ``cogvx_transformer_loaded``; forward hooks
``prepare_rotary_positional_...``   skipped when a plugin supplies RoPE per forward
``AutoencoderKLCogVideoX``          fires ``cogvx_vae_loaded``
``VideoDataset``, ``DataLoader``    the data path of cogvx_ext.data (plan, stream, share);
                                    DeepSpeed's micro batch; under a dynamo backend the
                                    transformer's blocks compiled regionally, compilations
                                    bounded and logged
``T5EncoderModel``                  loaded whole under ZeRO-3 (cogvx_ext.script.zero3)
``CogVideoXDPMScheduler``            ``cogvx_snr_shift``: the noise, velocity target, loss weight
                                    and validation's denoising follow each batch's SNR shift
``shutil``                          a checkpoint that another rank removed first is no error
``log_validation``                  ``cogvx_validation_args``, ``cogvx_pipeline_loaded``; a
                                    validation that would wait forever (ZeRO-3) stops; every
                                    video is written to OUTPUT_DIR/validation/ and logged per size
``compute_prompt_embeddings``       ``cogvx_prompt_embeddings``; the text encoder off the device
``CogVideoX[ImageToVideo]Pipeline`` ``cogvx_pipeline_loaded``; ``cogvx_lora_metadata`` on save,
                                    the saved LoRA given the umask's modes; the final save
                                    lets the others go on to ``cogvx_train_end``;
                                    under ZeRO-3 its frozen models load whole and the LoRA
                                    it saves is whole
=================================  ============================================================
"""

from __future__ import annotations

import functools
import os
import sys

from cogvx_ext.base.errors import UsageError
from cogvx_ext.plugin.manager import CORE_PLUGIN_NAME
from cogvx_ext.script.seams.accelerator import _accelerator_factory, _steps_bar_class
from cogvx_ext.script.seams.checkpoints import _ShutilAcrossRanks
from cogvx_ext.script.seams.dataloader import _make_dataloader
from cogvx_ext.script.seams.dataset import ScriptDataset, ScriptEncoding
from cogvx_ext.script.seams.kinds import (
    DATA_HOOKS,
    I2V_PIPELINE,
    T2V_PIPELINE,
    plugins_read_the_data,
    script_kind,
)
from cogvx_ext.script.seams.main import _report_uncaught, _wrap_main
from cogvx_ext.script.seams.models import (
    _LoaderProxy,
    _rope_from_forward_hook,
    _transformer_loaded,
    _vae_loaded,
)
from cogvx_ext.script.seams.noise import _ShiftFollowingSchedulerClass
from cogvx_ext.script.seams.pipeline import _PipelineProxy, _wrap_log_validation
from cogvx_ext.script.seams.prompts import ScriptPromptEmbeddings, _prompt_embeddings_seam
from cogvx_ext.script.seams.shapes import KNOWN_SCRIPTS, mismatches, script_release
from cogvx_ext.script.zero3 import loading_whole


def needed_globals(run) -> dict[str, list[str]]:
    """Script globals each chosen hook needs: {global name: [hooks that need it]}."""
    pipeline = I2V_PIPELINE if script_kind(run.module.__dict__) == "i2v" else T2V_PIPELINE
    by_hook = {
        "cogvx_accelerator_ready": ["Accelerator"],
        "cogvx_step_end": ["Accelerator"],
        "cogvx_train_end": ["Accelerator"],
        "cogvx_state_dict": ["Accelerator"],
        "cogvx_load_state_dict": ["Accelerator"],
        "cogvx_transformer_loaded": ["CogVideoXTransformer3DModel"],
        "cogvx_vae_loaded": ["AutoencoderKLCogVideoX"],
        "cogvx_transformer_forward": ["CogVideoXTransformer3DModel", pipeline],
        "cogvx_rotary_embedding": [
            "CogVideoXTransformer3DModel",
            "prepare_rotary_positional_embeddings",
            pipeline,
        ],
        "cogvx_transformer_output": ["CogVideoXTransformer3DModel", pipeline],
        "cogvx_pipeline_loaded": [pipeline, "log_validation"],
        "cogvx_validation_args": ["log_validation"],
        "cogvx_lora_metadata": [pipeline],
        "cogvx_exception": ["main"],
        "cogvx_prompt_embeddings": ["compute_prompt_embeddings"],
        "cogvx_snr_shift": ["CogVideoXDPMScheduler"],
        **{
            hook: ["VideoDataset", "DataLoader", "AutoencoderKLCogVideoX", "Accelerator"]
            for hook in DATA_HOOKS
        },
    }
    needed: dict[str, list[str]] = {"get_args": ["cogvx-ext itself"], "main": ["cogvx-ext itself"]}
    for hook in sorted(run.chosen):  # the same first missing seam on every rank
        for name in by_hook.get(hook, ()):
            needed.setdefault(name, []).append(hook)
    return needed


def check(run) -> None:
    """Stop before patching if the loaded script lacks a global that a chosen plugin needs, or one
    of the seams the run needs does not have the shape the seams rely on (seams/shapes.py)."""
    namespace = run.module.__dict__
    for name, hooks in needed_globals(run).items():
        if name not in namespace:
            users = sorted({p for p in _plugins_implementing(run, hooks)}) or ["cogvx-ext"]
            raise UsageError(
                f"{os.path.basename(run.script)} has no module-level '{name}', a seam that "
                f"{', '.join(users)} need(s) ({', '.join(sorted(set(hooks)))}); cogvx-ext supports the diffusers "
                "examples/cogvideo/train_cogvideox_lora.py and train_cogvideox_image_to_video_lora.py"
            )
    for seam, problem in mismatches(run.module, run.chosen):
        users = sorted(set(_plugins_implementing(run, seam.hooks or ())))
        leave_out = f", or leave {', '.join(users)} out of --plugins" if users else ""
        raise UsageError(
            f"{os.path.basename(run.script)} ({script_release(run.module)}) does not fit the seam "
            f"{seam.name} that {', '.join(users) or 'cogvx-ext'} need(s): {problem}; cogvx-ext knows "
            f'{KNOWN_SCRIPTS} (README, "Script versions"): use one of those{leave_out}'
        )


def _plugins_implementing(run, hooks):
    for hook in hooks:
        caller = getattr(run.hook, hook, None)
        for impl in caller.get_hookimpls() if caller else ():
            if impl.plugin_name != CORE_PLUGIN_NAME:
                yield impl.plugin_name


def install(run) -> None:
    """Check, then replace the script globals the chosen plugins need."""
    from cogvx_ext.plugin.manager import chosen_hooks

    run.chosen = chosen_hooks(run.pm)
    if not run.plugin_names:
        return
    check(run)
    g = run.module.__dict__
    run.kind = script_kind(g)
    g["main"] = _wrap_main(run, g["main"])
    if run.module is sys.modules.get("__main__"):
        _report_uncaught(run)
    if "Accelerator" in g:
        g["Accelerator"] = _accelerator_factory(run, g["Accelerator"])
    if "cogvx_step_end" in run.chosen and isinstance(g.get("tqdm"), type):
        g["tqdm"] = _steps_bar_class(run, g["tqdm"])
    if "CogVideoXTransformer3DModel" in g:
        g["CogVideoXTransformer3DModel"] = _LoaderProxy(
            g["CogVideoXTransformer3DModel"], functools.partial(_transformer_loaded, run)
        )
    if "cogvx_snr_shift" in run.chosen:
        g["CogVideoXDPMScheduler"] = _ShiftFollowingSchedulerClass(run, g["CogVideoXDPMScheduler"])
    if "shutil" in g:
        g["shutil"] = _ShutilAcrossRanks()
    if "T5EncoderModel" in g:
        g["T5EncoderModel"] = _LoaderProxy(
            g["T5EncoderModel"], loading=lambda: loading_whole(run.accelerator)
        )
    if "AutoencoderKLCogVideoX" in g:
        g["AutoencoderKLCogVideoX"] = _LoaderProxy(
            g["AutoencoderKLCogVideoX"], functools.partial(_vae_loaded, run)
        )
    if "cogvx_rotary_embedding" in run.chosen and "prepare_rotary_positional_embeddings" in g:
        g["prepare_rotary_positional_embeddings"] = _rope_from_forward_hook
    if plugins_read_the_data(run.chosen):
        run.pm.register(ScriptEncoding(run), name="cogvx_ext.script_encoding")
        g["VideoDataset"] = functools.partial(ScriptDataset, run)
        g["DataLoader"] = functools.partial(_make_dataloader, run, g["DataLoader"])
    if "cogvx_prompt_embeddings" in run.chosen:
        run.pm.register(
            ScriptPromptEmbeddings(g["compute_prompt_embeddings"]), name="cogvx_ext.script_prompts"
        )
        g["compute_prompt_embeddings"] = _prompt_embeddings_seam(run, g["compute_prompt_embeddings"])
    pipeline = I2V_PIPELINE if run.kind == "i2v" else T2V_PIPELINE
    if pipeline in g:
        g[pipeline] = _PipelineProxy(run, g[pipeline])
    if "log_validation" in g:
        g["log_validation"] = _wrap_log_validation(run, g["log_validation"])
