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
                                    loaded with ``save_state``/``load_state``; ``accelerator.log``
                                    fires ``cogvx_step_end``; under DeepSpeed the script's
                                    save/load hooks get the unwrapped model
``CogVideoXTransformer3DModel``     fires ``cogvx_transformer_loaded``; forward hooks
``prepare_rotary_positional_...``   skipped when a plugin supplies RoPE per forward
``AutoencoderKLCogVideoX``          fires ``cogvx_vae_loaded``
``VideoDataset``, ``DataLoader``    the data path of cogvx_ext.data.dataset (plan, stream, share);
                                    DeepSpeed's micro batch; compilations bounded and logged
``T5EncoderModel``                  loaded whole under ZeRO-3 (cogvx_ext.script.zero3)
``shutil``                          a checkpoint that another rank removed first is no error
``log_validation``                  ``cogvx_validation_args``, ``cogvx_pipeline_loaded``; a
                                    validation that would wait forever (ZeRO-3) stops
``compute_prompt_embeddings``       ``cogvx_prompt_embeddings``; the text encoder off the device
``CogVideoX[ImageToVideo]Pipeline`` ``cogvx_pipeline_loaded``; ``cogvx_lora_metadata`` on save;
                                    under ZeRO-3 its frozen models load whole and the LoRA
                                    it saves is whole
=================================  ============================================================
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import os
import re
import shutil
import sys
from typing import Any

import torch

from cogvx_ext.base.errors import UsageError, report_usage_error
from cogvx_ext.plugin.hookspecs import hookimpl
from cogvx_ext.plugin.manager import CORE_PLUGIN_NAME
from cogvx_ext.script.zero3 import (
    fill_empty_lora,
    gathered,
    loading_whole,
    refuse_partitioned_validation,
    snapshot_lora,
    trainable,
    zero3_plugin,
)

T2V_PIPELINE = "CogVideoXPipeline"
I2V_PIPELINE = "CogVideoXImageToVideoPipeline"
STATE_FILE = "cogvx_ext_state.json"

DATA_HOOKS = (
    "cogvx_stages",
    "cogvx_probe",
    "cogvx_clip_targets",
    "cogvx_load_pixels",
    "cogvx_encode_sample",
    "cogvx_batch_sampler",
)
FORWARD_HOOKS = ("cogvx_transformer_forward", "cogvx_rotary_embedding", "cogvx_transformer_output")


def script_kind(namespace: dict) -> str:
    return "i2v" if I2V_PIPELINE in namespace else "t2v"


def needed_globals(run) -> dict[str, list[str]]:
    """Script globals each chosen hook needs: {global name: [hooks that need it]}."""
    pipeline = I2V_PIPELINE if script_kind(run.module.__dict__) == "i2v" else T2V_PIPELINE
    by_hook = {
        "cogvx_accelerator_ready": ["Accelerator"],
        "cogvx_step_end": ["Accelerator"],
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
        **{
            hook: ["VideoDataset", "DataLoader", "AutoencoderKLCogVideoX", "Accelerator"]
            for hook in DATA_HOOKS
        },
    }
    needed: dict[str, list[str]] = {"get_args": ["cogvx-ext itself"], "main": ["cogvx-ext itself"]}
    for hook in run.chosen:
        for name in by_hook.get(hook, ()):
            needed.setdefault(name, []).append(hook)
    return needed


def check(run) -> None:
    """Stop before patching if the loaded script lacks a global that a chosen plugin needs."""
    namespace = run.module.__dict__
    for name, hooks in needed_globals(run).items():
        if name not in namespace:
            users = sorted({p for p in _plugins_implementing(run, hooks)}) or ["cogvx-ext"]
            raise UsageError(
                f"{os.path.basename(run.script)} has no module-level '{name}', a seam that "
                f"{', '.join(users)} need(s) ({', '.join(sorted(set(hooks)))}); cogvx-ext supports the diffusers "
                "examples/cogvideo/train_cogvideox_lora.py and train_cogvideox_image_to_video_lora.py"
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
    if "CogVideoXTransformer3DModel" in g:
        g["CogVideoXTransformer3DModel"] = _LoaderProxy(
            g["CogVideoXTransformer3DModel"], functools.partial(_transformer_loaded, run)
        )
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
    if any(h in run.chosen for h in DATA_HOOKS):
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


# ---------------------------------------------------------------------------------------------
# main


def _wrap_main(run, real_main):
    @functools.wraps(real_main)
    def main(args):
        try:
            return real_main(args)
        except BaseException as exc:
            if not isinstance(exc, SystemExit):
                exc._cogvx_ext_reported = True
                run.hook.cogvx_exception(exc=exc, args=args)
            if isinstance(exc, UsageError):
                # Found once main runs (a broken dataset, a requirement known only from the loaded
                # model): still one line and status 2, not a traceback.
                report_usage_error(exc)
                raise SystemExit(2) from None
            raise

    return main


def _report_uncaught(run) -> None:
    """For scripts that call ``main(get_args())``: Python fetched ``main`` before ``get_args()``
    installed the wrapper above, so an escaping exception is reported on its way out instead."""
    previous = sys.excepthook

    def excepthook(exc_type, exc, traceback):
        if not getattr(exc, "_cogvx_ext_reported", False):
            exc._cogvx_ext_reported = True
            run.hook.cogvx_exception(exc=exc, args=run.args)
        if isinstance(exc, UsageError):
            report_usage_error(exc)
            return
        previous(exc_type, exc, traceback)

    sys.excepthook = excepthook


class _ShutilAcrossRanks:
    """The scripts' ``shutil``, whose ``rmtree`` lets another rank remove the files first.

    Under DeepSpeed every rank runs the scripts' checkpoint block, ``--checkpoints_total_limit``
    pruning included, so two ranks remove the same old checkpoint at once and the slower one stops
    with ``FileNotFoundError`` (seen with two ranks on the first pruning). A file already gone is
    what the call asked for.
    """

    def __getattr__(self, name):
        return getattr(shutil, name)

    @staticmethod
    def rmtree(path, *args, **kwargs):
        if args or kwargs:
            return shutil.rmtree(path, *args, **kwargs)

        def gone_is_fine(function, name, exc):
            exc = exc[1] if isinstance(exc, tuple) else exc  # onerror passes exc_info, onexc the error
            if not isinstance(exc, FileNotFoundError):
                raise exc

        if sys.version_info >= (3, 12):
            return shutil.rmtree(path, onexc=gone_is_fine)
        return shutil.rmtree(path, onerror=gone_is_fine)


# ---------------------------------------------------------------------------------------------
# Accelerator


def _accelerator_factory(run, real_accelerator):
    @functools.wraps(real_accelerator)
    def make_accelerator(*args, **kwargs):
        accelerator = real_accelerator(*args, **kwargs)
        run.accelerator = accelerator
        if run.chosen & {"cogvx_state_dict", "cogvx_load_state_dict"}:
            accelerator.register_save_state_pre_hook(functools.partial(_save_plugin_state, run))
            accelerator.register_load_state_pre_hook(functools.partial(_load_plugin_state, run))
        _hand_state_hooks_unwrapped_models(accelerator)  # the script's hooks, registered after ours
        if zero3_plugin(accelerator) is not None:
            _on_every_logged_step(accelerator, functools.partial(_snapshot_lora_after_last_step, run))
        if "cogvx_step_end" in run.chosen:
            _on_every_logged_step(
                accelerator,
                lambda values, step: run.hook.cogvx_step_end(step=step, logs=values, accelerator=accelerator),
            )
        run.hook.cogvx_accelerator_ready(accelerator=accelerator, args=run.args)
        return accelerator

    return make_accelerator


def _hand_state_hooks_unwrapped_models(accelerator) -> None:
    """Under DeepSpeed, hand the script's save/load hooks the models they expect.

    accelerate passes DeepSpeed's engine (not the transformer) and, on save, an empty weights list;
    the scripts' hooks check ``isinstance(model, <transformer class>)`` and ``weights.pop()``, so every
    checkpoint of a DeepSpeed run stops with "unexpected save model: DeepSpeedEngine". The save hooks
    get the unwrapped models and a weights list of their length (the engine saves its own state
    besides). On load the engine has restored every weight from its checkpoint and accelerate
    hands the hooks no model, where the scripts' hooks would load the LoRA into None: they are
    skipped.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    real_save, real_load = accelerator.register_save_state_pre_hook, accelerator.register_load_state_pre_hook

    def register_save(hook):
        @functools.wraps(hook)
        def save(models, weights, output_dir):
            unwrapped = [accelerator.unwrap_model(m) for m in models]
            with gathered(accelerator, trainable(unwrapped)):  # ZeRO-3; every rank saves
                return hook(unwrapped, list(weights) or [None] * len(unwrapped), output_dir)

        return real_save(save)

    def register_load(hook):
        @functools.wraps(hook)
        def load(models, input_dir):
            if not models:
                return None
            return hook([accelerator.unwrap_model(m) for m in models], input_dir)

        return real_load(load)

    accelerator.register_save_state_pre_hook = register_save
    accelerator.register_load_state_pre_hook = register_load


def _on_every_logged_step(accelerator, on_step) -> None:
    """Run ``on_step(values, step)`` at each ``accelerator.log`` call, before it. The scripts log every
    step on every rank (accelerate's log acts on the main process only), so per-rank plugin state
    (the sampler's position) stays the same everywhere and collectives have every rank."""
    real_log = accelerator.log

    def log(values, step=None, log_kwargs=None):
        on_step(values, step)
        return real_log(values, step=step, log_kwargs=log_kwargs or {})

    accelerator.log = log


def _snapshot_lora_after_last_step(run, values, step) -> None:
    """ZeRO-3: the final LoRA is saved on the main process alone, so the whole copy it needs is
    taken at the last step's log, where every rank is (cogvx_ext.script.zero3)."""
    last = getattr(run.args, "max_train_steps", None)
    if run.zero3_lora is None and step is not None and last and step >= last and run.transformer is not None:
        run.zero3_lora = snapshot_lora(run.accelerator, run.transformer)


def _save_plugin_state(run, models, weights, output_dir):
    from cogvx_ext.base.io import write_json_atomic
    from cogvx_ext.plugin.state import collect_states

    match = re.search(r"checkpoint-(\d+)$", os.path.normpath(output_dir))
    states = collect_states(run.pm, int(match.group(1)) if match else None)
    if states:
        write_json_atomic(os.path.join(output_dir, STATE_FILE), {"plugins": states})


def _load_plugin_state(run, models, input_dir):
    from cogvx_ext.plugin.state import restore_states

    path = os.path.join(input_dir, STATE_FILE)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        restore_states(run.pm, json.load(f).get("plugins", {}))


# ---------------------------------------------------------------------------------------------
# Models


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
    run.hook.cogvx_transformer_loaded(transformer=transformer, args=run.args)
    install_forward_hooks(transformer, run.hook, run.model)


def _rope_from_forward_hook(*args, **kwargs):
    # A chosen plugin computes RoPE from the tensor that reaches the transformer (cogvx_ext.plugin.forward);
    # the script's own per-step embedding, from --height/--width, would be thrown away.
    return None


def _vae_loaded(run, vae) -> None:
    run.vae = vae
    run.hook.cogvx_vae_loaded(vae=vae, args=run.args)


# ---------------------------------------------------------------------------------------------
# Data: VideoDataset, the encoding loop, DataLoader
#
# The scripts build VideoDataset (which decodes every clip), then run their own encoding loop over
# `train_dataset.instance_videos` calling a closure `encode_video` -> `vae.encode(...)`, and finally
# assign the encoded list back to `train_dataset.instance_videos`. The T2V script spreads that loop
# over ranks and broadcasts with `torch.empty_like` of the first local latent, which reshapes other
# clips' latents when shapes differ. So the real work happens when the dataset is built (the VAE
# is loaded and on its device by then, in both scripts): cogvx_ext.data.dataset streams, encodes this
# rank's share and shares it with real shapes. The script's loop then runs on tiny stand-in tensors,
# `vae.encode` answers them with a fixed-size stand-in posterior, and the script's assignment
# installs the real posteriors, which every rank already holds.

_STANDIN_SHAPE = (2, 3, 1, 1)  # [F, C, H, W]: no real video is 1x1 pixels


class ScriptDataset(torch.utils.data.Dataset):
    """Takes the place of the script's VideoDataset, with the attributes and items it has.

    T2V items: ``{"instance_prompt": id_token + prompt, "instance_video": posterior}``.
    I2V items: the prompt is prefixed at construction, because the I2V script replaces
    ``instance_prompts`` by prompt embeddings after construction and returns them as they are.
    """

    def __init__(self, run, **kwargs):
        from cogvx_ext.data.dataset import (
            Skipped,
            encode_samples,
            plan_samples,
            read_script_data,
            report_skipped,
            vae_device,
        )
        from cogvx_ext.data.ranks import check_ranks_agree

        self.run = run
        self.kind = run.kind
        self.id_token = kwargs.get("id_token") or ""
        accelerator = run.accelerator
        rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
        progress = accelerator is None or accelerator.is_local_main_process
        data_flags = (
            "instance_data_root",
            "dataset_name",
            "dataset_config_name",
            "caption_column",
            "video_column",
            "cache_dir",
        )
        entries, skipped = read_script_data(argparse.Namespace(**{k: kwargs.get(k) for k in data_flags}))
        samples, more_skipped = plan_samples(run.hook, entries, run.args, run.model, progress=progress)
        check_ranks_agree(
            samples, kwargs.get("instance_data_root"), vae_device(run.vae) if run.vae is not None else "cpu"
        )
        skipped += more_skipped
        if progress:
            report_skipped(skipped)
        if skipped:  # the same list on every rank: the ranks agree on the plan
            run.hook.cogvx_clips_skipped(skipped=skipped, when="plan", args=run.args)
        if not samples:
            raise UsageError("no clip can be used for training (every one was skipped, reasons above)")
        posteriors, failed = encode_samples(
            run.hook, samples, run.vae, run.kind, run.args, rank, world, progress
        )
        report_skipped(failed)  # each rank names the clips it failed to decode
        kept = [i for i, p in enumerate(posteriors) if p is not None]
        if len(kept) < len(samples):  # every rank knows which samples failed, not always why
            reasons = {item.path: item.reason for item in failed}
            lost = [
                Skipped(s.clip.path, reasons.get(s.clip.path, "failed to decode on another rank"))
                for s, p in zip(samples, posteriors)
                if p is None
            ]
            run.hook.cogvx_clips_skipped(skipped=lost, when="decode", args=run.args)
        if not kept:
            raise UsageError("no clip could be decoded (reasons above)")
        self.samples = [samples[i] for i in kept]
        self._posteriors = [posteriors[i] for i in kept]
        self.skipped = skipped + failed
        prefix = self.id_token if self.kind == "i2v" else ""
        self.instance_prompts = [prefix + s.clip.prompt for s in self.samples]
        self.instance_video_paths = [s.clip.path for s in self.samples]
        self.num_instance_videos = len(self.samples)
        self.instance_videos = [torch.zeros(_STANDIN_SHAPE) for _ in self.samples]
        run.dataset = self
        _answer_stand_ins(run)

    def __setattr__(self, name, value):
        # The script assigns what its encoding loop made of the stand-ins; keep the real posteriors.
        if (
            name == "instance_videos"
            and getattr(self, "_posteriors", None) is not None
            and "instance_videos" in self.__dict__
        ):
            if len(value) != len(self._posteriors):
                raise RuntimeError(
                    f"the script encoded {len(value)} items for {len(self._posteriors)} samples"
                )
            value, self._posteriors = self._posteriors, None
            _stop_answering_stand_ins(self.run)
        super().__setattr__(name, value)

    def __len__(self):
        return self.num_instance_videos

    def __getitem__(self, index):
        if self.kind == "i2v":
            return {
                "instance_prompt": self.instance_prompts[index],
                "instance_video": self.instance_videos[index],
            }
        return {
            "instance_prompt": self.id_token + self.instance_prompts[index],
            "instance_video": self.instance_videos[index],
        }


def _answer_stand_ins(run) -> None:
    vae = run.vae
    if vae is None or "encode" in vae.__dict__:
        return
    real_encode = vae.encode

    @functools.wraps(real_encode)
    def encode(x, *args, **kwargs):
        if tuple(x.shape[-2:]) == _STANDIN_SHAPE[-2:]:
            return _StandInOutput(x.device)
        return real_encode(x, *args, **kwargs)

    vae.encode = encode


def _stop_answering_stand_ins(run) -> None:
    if run.vae is not None:
        run.vae.__dict__.pop("encode", None)


class _StandInOutput:
    """Looks like ``AutoencoderKLOutput``; its posterior has one fixed shape on every rank."""

    def __init__(self, device):
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        self.latent_dist = DiagonalGaussianDistribution(torch.zeros(1, 2, 1, 1, 1, device=device))


class ScriptEncoding:
    """The scripts' own ``encode_video`` recipe, as the trylast ``cogvx_encode_sample``."""

    def __init__(self, run):
        self.run = run

    @hookimpl(trylast=True)
    def cogvx_encode_sample(self, sample, vae, kind):
        pixels = self.run.hook.cogvx_load_pixels(sample=sample, args=self.run.args)
        video = pixels.to(vae.device, dtype=vae.dtype).unsqueeze(0).permute(0, 2, 1, 3, 4)  # [B, C, F, H, W]
        latent_dist = vae.encode(video).latent_dist
        if kind != "i2v":
            return latent_dist
        # The I2V script conditions on the first frame with a little noise, sigma = exp(N(-3, 0.5)),
        # drawn once per clip when it encodes.
        image = video[:, :, :1]
        sigma = torch.exp(torch.normal(mean=-3.0, std=0.5, size=(1,), device=image.device)).to(image.dtype)
        noisy_image = image + torch.randn_like(image) * sigma[:, None, None, None, None]
        return latent_dist, vae.encode(noisy_image).latent_dist


def _make_dataloader(run, real_dataloader, dataset, *args, **kwargs):
    if not isinstance(dataset, ScriptDataset):
        return real_dataloader(dataset, *args, **kwargs)
    batch_size = kwargs.get("batch_size", args[0] if args else 1)
    accelerator = run.accelerator
    sampler = run.hook.cogvx_batch_sampler(
        samples=dataset.samples,
        batch_size=batch_size,
        num_replicas=accelerator.num_processes if accelerator else 1,
        args=run.args,
        model=run.model,
        stages=run.hook.cogvx_stages(args=run.args),
    )
    _log_memory_estimate(run, sampler, dataset.samples, batch_size)
    _watch_compilations(run, sampler, dataset.samples)
    if sampler is None:
        return real_dataloader(dataset, *args, **kwargs)
    for name in ("batch_size", "shuffle", "sampler", "drop_last"):
        kwargs.pop(name, None)
    _deepspeed_micro_batch(accelerator, batch_size)
    return real_dataloader(dataset, batch_sampler=sampler, **kwargs)


def _deepspeed_micro_batch(accelerator, batch_size) -> None:
    """Under DeepSpeed, give the micro batch size that the batch sampler hides.

    A DataLoader built on a batch sampler has ``batch_size`` None, and accelerate's DeepSpeed set-up
    reads an ``auto`` ``train_micro_batch_size_per_gpu`` from it, so ``accelerator.prepare`` stops.
    Each batch holds at most the script's ``--train_batch_size`` samples (a bucket's batches never
    hold more): that is the micro batch, as without buckets.
    """
    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
    if plugin is None or not plugin.is_auto("train_micro_batch_size_per_gpu"):
        return
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = int(batch_size or 1)


def _watch_compilations(run, sampler, samples) -> None:
    """Under accelerate's dynamo backend, bound the compilations by the plan's latent shapes and log
    each one (cogvx_ext.script.compiling); the model is compiled later, in ``accelerator.prepare``."""
    from cogvx_ext.data.dataset import latent_shape_key
    from cogvx_ext.script.compiling import CompileWatch, dynamo_backend

    accelerator = run.accelerator
    backend = dynamo_backend(accelerator)
    if backend is None:
        return
    shapes = {latent_shape_key(sample, run.model) for sample in samples}
    shapes |= {bucket.key for bucket in getattr(sampler, "buckets", ())}
    watch = CompileWatch(backend, len(shapes))
    _on_every_logged_step(accelerator, lambda values, step: watch.step_end(step))


def _log_memory_estimate(run, sampler, samples, batch_size) -> None:
    """One line at training start: the estimated peak accelerator memory of the run's largest batch
    (cogvx_ext.model.memory), so an out-of-memory an hour in can be told apart at step 0. An estimate that
    cannot be made is said, never a reason to stop."""
    import logging

    log = logging.getLogger("cogvx_ext.memory")
    if run.accelerator is not None and not run.accelerator.is_local_main_process:
        return  # the same estimate on every rank: traced and said once per machine
    try:
        from cogvx_ext.data.dataset import latent_shape_key
        from cogvx_ext.model.memory import estimate, format_bytes, setup_for_plugins

        if sampler is not None and hasattr(sampler, "buckets"):
            pairs = {(bucket.key, bucket.batch_size) for bucket in sampler.buckets}
        else:
            pairs = {(latent_shape_key(sample, run.model), int(batch_size or 1)) for sample in samples}
        if not pairs:
            return
        key, size = max(pairs, key=lambda pair: (run.model.tokens(pair[0]) * pair[1], pair))
        accelerator = run.accelerator
        setup = setup_for_plugins(
            run.pm,
            run.args,
            transformer_config=dict(run.transformer.config) if run.transformer is not None else None,
            mixed_precision=getattr(accelerator, "mixed_precision", None),
        )
        found = estimate(setup, key, size)
        log.info(
            "cogvx-ext: estimated peak accelerator memory per step: %s (largest batch: latent %s x %d; "
            "%s; allocated, before the allocator's reserve and the CUDA context)",
            format_bytes(found.peak),
            "x".join(map(str, key)),
            size,
            setup.describe(),
        )
    except Exception as exc:  # an estimate is advice: training goes on without it
        log.warning("cogvx-ext: no memory estimate for this run: %s", exc)


# ---------------------------------------------------------------------------------------------
# Prompt embeddings: compute_prompt_embeddings
#
# The T2V script runs the text encoder on every step's prompts; the I2V script on every sample's
# prompt at start. Both keep the text encoder on the accelerator for the whole run.


class ScriptPromptEmbeddings:
    """The script's own ``compute_prompt_embeddings``, as the trylast ``cogvx_prompt_embeddings``."""

    def __init__(self, script_function):
        self.script_function = script_function

    @hookimpl(trylast=True)
    def cogvx_prompt_embeddings(
        self, prompts, tokenizer, text_encoder, max_sequence_length, device, dtype, cached_only
    ):
        if cached_only:
            return None
        # The text encoder may have been moved to the CPU (everything was cached): run it where it is.
        where = next(text_encoder.parameters()).device
        embeddings = self.script_function(
            tokenizer, text_encoder, prompts, max_sequence_length, where, dtype, requires_grad=False
        )
        return embeddings.to(device)


def _prompt_embeddings_seam(run, script_function):
    @functools.wraps(script_function)
    def compute_prompt_embeddings(
        tokenizer, text_encoder, prompt, max_sequence_length, device, dtype, requires_grad=False
    ):
        if requires_grad:  # gradients flow into the text encoder: nothing to reuse
            return script_function(
                tokenizer, text_encoder, prompt, max_sequence_length, device, dtype, requires_grad=True
            )
        ask = functools.partial(
            run.hook.cogvx_prompt_embeddings,
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            max_sequence_length=max_sequence_length,
            dtype=dtype,
        )
        if not run.prompts_prepared:
            run.prompts_prepared = True
            _prepare_dataset_prompts(run, ask, text_encoder, device)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        return ask(prompts=prompts, device=device, cached_only=False)

    return compute_prompt_embeddings


def _prepare_dataset_prompts(run, ask, text_encoder, device) -> None:
    """Embed every dataset prompt once (a plugin may keep them), then take the text encoder off the
    accelerator when the plugins answer every prompt without it."""
    from tqdm.auto import tqdm

    dataset = run.dataset
    if dataset is None:  # the script's own VideoDataset: its prompts are not known here
        return
    prefix = "" if run.kind == "i2v" else dataset.id_token  # T2V adds the id token per item
    prompts = sorted({prefix + p for p in dataset.instance_prompts if isinstance(p, str)})
    chunk = max(1, int(getattr(run.args, "train_batch_size", 1) or 1))
    with torch.no_grad():
        for i in range(0, len(prompts), chunk):
            ask(prompts=prompts[i : i + chunk], device=device, cached_only=False)
        # Asked for on the CPU, in chunks: the check must not hold every embedding on the device.
        answered = all(
            ask(prompts=prompts[i : i + chunk], device=torch.device("cpu"), cached_only=True) is not None
            for i in range(0, len(prompts), chunk)
        )
    if answered and prompts:
        text_encoder.to("cpu")
        run.text_encoder_offloaded = text_encoder
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if run.accelerator is None or run.accelerator.is_local_main_process:
            tqdm.write(
                f"cogvx-ext: all {len(prompts)} prompt embeddings are at hand; the text encoder stays on the CPU",
                file=sys.stderr,
            )


# ---------------------------------------------------------------------------------------------
# Validation and the saved LoRA


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
        pipe.transformer, run.hook, run.model or ModelInfo.from_config(pipe.transformer.config)
    )
    run.hook.cogvx_pipeline_loaded(pipe=pipe, args=run.args)
    pipe._cogvx_ext_prepared = True


def write_lora_metadata(run, directory: str) -> None:
    from cogvx_ext import __version__
    from cogvx_ext.base.io import write_json_atomic
    from cogvx_ext.inference import METADATA_FILE

    settings: dict[str, Any] = {}
    for part in run.hook.cogvx_lora_metadata(args=run.args):
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
        run.hook.cogvx_validation_args(variants=variants, args=run.args, samples=samples)
        videos = []
        for pipeline_args in variants:
            videos.extend(real_log_validation(**{**bound, "pipeline_args": pipeline_args}) or [])
        if run.text_encoder_offloaded is not None:
            # The T2V validation pipeline shares the text encoder and moved it to the accelerator.
            run.text_encoder_offloaded.to("cpu")
        return videos

    return log_validation
