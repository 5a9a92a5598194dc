"""Every hook a cogvx-ext plugin can implement, in the order they fire in a training run.

A plugin is any module or object with functions decorated by ``cogvx_ext.hookimpl`` whose names
are listed here. Implementations may take any subset of a hook's arguments, by name. hooks.md
documents each hook with an example; ``tests/test_hooks_documented.py`` keeps the two in step.

Life of a run (T2V and I2V scripts alike)::

    get_args()  ── cogvx_add_arguments ─ parse ─ cogvx_configure ─ cogvx_provides/cogvx_requires
                ─ cogvx_memory_check (only when a chosen plugin implements it)
    main(args)
      Accelerator(...)                      ── cogvx_accelerator_ready
      CogVideoXTransformer3DModel loaded    ── cogvx_transformer_loaded        (before LoRA)
      AutoencoderKLCogVideoX loaded         ── cogvx_vae_loaded
      VideoDataset(...)                     ── cogvx_stages, then cogvx_probe and
                                               cogvx_clip_targets per clip, cogvx_clips_skipped,
                                               cogvx_memory_check (the planned samples)
                                                                               (data plugins only)
      encoding loop                         ── cogvx_load_pixels, cogvx_encode_sample per sample
      DataLoader(...)                       ── cogvx_batch_sampler
      compute_prompt_embeddings(...)        ── cogvx_prompt_embeddings
      every transformer forward             ── cogvx_transformer_forward, cogvx_rotary_embedding,
                                               cogvx_transformer_output
      every loop iteration (accelerator.log)── cogvx_step_end
      accelerator.save_state / load_state   ── cogvx_state_dict / cogvx_load_state_dict
      validation pipeline                   ── cogvx_pipeline_loaded, cogvx_validation_args
      LoRA saved                            ── cogvx_lora_metadata
      an exception escapes main             ── cogvx_exception
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # imported for annotations only; this module stays cheap to import
    import argparse

    import torch

    from cogvx_ext.data.clips import Clip, Sample, Stage, Target, VideoInfo
    from cogvx_ext.model.facts import ModelInfo
    from cogvx_ext.model.memory.setup import TrainingSetup

PROJECT = "cogvx_ext"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------------
# Set-up: arguments, configuration, plugin dependencies


@hookspec
def cogvx_add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the plugin's flags to the training script's own argument parser.

    Fires inside the script's ``get_args()``, just before it parses, so the script's ``--help``
    lists the flags. Put them in an argument group named after the plugin.

    :param parser: the script's ``argparse.ArgumentParser``.
    """


@hookspec
def cogvx_configure(args: argparse.Namespace) -> None:
    """Check and complete the parsed arguments, after parsing and before ``main(args)`` runs.

    Raise ``cogvx_ext.UsageError`` for a bad flag: the run stops with that one line and exit
    status 2, before anything is loaded.

    :param args: the script's parsed arguments; may be modified in place.
    """


@hookspec
def cogvx_provides(args: argparse.Namespace) -> list[str]:
    """Name the capabilities this plugin provides to other plugins.

    Built-in capability names: ``"batch_rope"`` (the rotary embedding follows each batch's latent
    shape), ``"learned_posemb"`` (a learned positional table adapted to each batch's shape).

    :param args: the parsed arguments.
    """


@hookspec
def cogvx_requires(args: argparse.Namespace, model: ModelInfo) -> list[tuple[str, str]]:
    """Name the capabilities this plugin needs, each with the advice shown when it is missing.

    Fires once after ``cogvx_configure``, with the model's positional settings read from its
    config, so a missing plugin stops the run at start rather than with a shape error later.
    Return ``[("batch_rope", "add rope_rescale to --plugins")]``, or ``[]``.

    :param args: the parsed arguments.
    :param model: positional facts of the model being trained.
    """


@hookspec
def cogvx_memory_check(
    setup: TrainingSetup | None,
    args: argparse.Namespace,
    model: ModelInfo | None,
    stages: list[Stage] | None,
    samples: list[Sample] | None,
) -> None:
    """Check, or plan by, the run's accelerator memory.

    Fires only when a chosen plugin implements it (building ``setup`` reads the model's
    configs). In training twice: before any model is loaded (after ``cogvx_requires``) with
    ``samples=None``, and once the clips are planned (in the dataset, after the script has loaded
    its models) with the planned ``samples``, before anything is decoded. ``cogvx-ext plan`` fires
    it once, with the samples, right after reading the clips' headers. ``setup`` is a ``cogvx_ext.model.memory.TrainingSetup`` (the transformer
    config, LoRA rank, optimizer, precision, gradient checkpointing, validation, and where the
    text encoder and the VAE live: the text encoder leaves the device when a chosen plugin
    implements ``cogvx_prompt_embeddings``), or ``None`` when the configs cannot be read without
    a download (``cogvx_ext.model.memory.setup_from_args(args)`` raises the reason);
    ``cogvx_ext.model.memory.estimate(setup, latent_shape, batch_size)``
    gives a step's peak. Raise ``UsageError`` for a run that cannot fit. Not firstresult.
    Built-in: ``aspect_bucket`` (``--bucket_memory_budget``).

    :param setup: the memory-relevant settings of the run.
    :param args: the parsed arguments.
    :param model: positional facts of the model (from its config).
    :param stages: the stage schedule (``cogvx_stages``), or ``None``.
    :param samples: the planned samples (their targets' shapes are what training runs), or
        ``None`` before the clips are read.
    """


# ---------------------------------------------------------------------------------------------
# Models and the accelerator


@hookspec
def cogvx_accelerator_ready(accelerator: Any, args: argparse.Namespace) -> None:
    """The script has created its ``accelerate.Accelerator``.

    :param accelerator: the script's accelerator (trackers are not initialised yet).
    :param args: the parsed arguments.
    """


@hookspec
def cogvx_transformer_loaded(transformer: torch.nn.Module, args: argparse.Namespace) -> None:
    """The script has loaded its ``CogVideoXTransformer3DModel``; LoRA adapters are not added yet.

    Modify the model in place (buffers, attention processors, hooks).

    :param transformer: the loaded transformer.
    :param args: the parsed arguments.
    """


@hookspec
def cogvx_vae_loaded(vae: torch.nn.Module, args: argparse.Namespace) -> None:
    """The script has loaded its ``AutoencoderKLCogVideoX``.

    :param vae: the loaded VAE.
    :param args: the parsed arguments.
    """


# ---------------------------------------------------------------------------------------------
# Data: which samples exist, how they are decoded and encoded, how they are batched.
# These hooks replace the script's VideoDataset only when a plugin chosen for the run
# implements one of them; otherwise the script's own dataset runs unchanged.


@hookspec(firstresult=True)
def cogvx_stages(args: argparse.Namespace) -> list[Stage] | None:
    """Return the run's stage schedule (progressive resolution), or ``None`` for one stage.

    A list of ``cogvx_ext.Stage``, the first starting at optimizer step 0, start steps increasing.
    The core asks once when it plans the dataset and passes the answer as ``stages`` to
    ``cogvx_clip_targets`` (one target per stage, tagged ``("stage", "<index>")``) and to
    ``cogvx_batch_sampler`` (which draws each optimizer step's batches from its stage only).
    Stops at first non-None result.

    :param args: the parsed arguments.
    """


@hookspec(firstresult=True)
def cogvx_probe(path: str, args: argparse.Namespace) -> VideoInfo | None:
    """Read one clip's metadata (size, frame count, frame rate) without decoding it.

    Fires once per listed clip when the core plans the dataset, before ``cogvx_clip_targets``.
    Return a ``cogvx_ext.VideoInfo`` (a frozen dataclass: build it with every field), or raise
    ``cogvx_ext.SkipClip(reason)`` for a file that cannot be used. The built-in default (trylast)
    reads the container's header with PyAV and rejects what is not a video. Answer for files of
    your own format (with ``cogvx_load_pixels``), or from a cache. Stops at first non-None result.

    :param path: the clip's path, as listed under ``--instance_data_root``.
    :param args: the parsed arguments.
    """


@hookspec(firstresult=True)
def cogvx_clip_targets(
    clip: Clip, args: argparse.Namespace, model: ModelInfo, stages: list[Stage] | None
) -> list[Target] | None:
    """Decide the training sample(s) made from one clip: size, crop and frame indices.

    Return a list of ``cogvx_ext.Target`` (several for multi-scale or staged training), or raise
    ``cogvx_ext.SkipClip(reason)`` to leave the clip out; skipped clips are reported by name,
    never dropped silently. With ``stages``, return the targets of every stage, each tagged
    ``("stage", "<index>")``. The built-in default (trylast) does what the stock script does:
    cover ``--height × --width`` (or each stage's size) and centre-crop. Stops at first non-None
    result.

    :param clip: the clip's path, prompt and probed metadata.
    :param args: the parsed arguments.
    :param model: positional facts of the model (frame rules, compression factors).
    :param stages: the schedule from ``cogvx_stages``, or ``None``.
    """


@hookspec
def cogvx_clips_skipped(skipped: list[Any], when: str, args: argparse.Namespace) -> None:
    """Clips are being left out of training; raise ``cogvx_ext.UsageError`` to stop instead.

    Fires only with a non-empty list, with the same list on every rank: after planning
    (``when == "plan"``: listing problems, failed probes, ``SkipClip`` from ``cogvx_clip_targets``;
    ``cogvx-ext plan`` fires it too, after its report) and after the encoding pass
    (``when == "decode"``: clips that passed the probe and failed to decode). The core has already
    named each clip with its reason.

    :param skipped: the clips left out, each with ``path`` and ``reason``.
    :param when: ``"plan"`` or ``"decode"``.
    :param args: the parsed arguments.
    """


@hookspec(firstresult=True)
def cogvx_load_pixels(sample: Sample, args: argparse.Namespace) -> torch.Tensor | None:
    """Decode one sample's frames, cropped and resized to its target.

    Return a float tensor ``[F, 3, H, W]`` in ``[-1, 1]``. The built-in default (trylast)
    decodes with decord, resizing while decoding. Stops at first non-None result.

    :param sample: the clip and its target.
    :param args: the parsed arguments.
    """


@hookspec(firstresult=True)
def cogvx_encode_sample(sample: Sample, vae: torch.nn.Module, kind: str, args: argparse.Namespace) -> Any:
    """Produce one sample's VAE posterior (a ``DiagonalGaussianDistribution``).

    For the I2V script (``kind == "i2v"``) return a pair ``(video_posterior, image_posterior)``,
    where the image is the noised first frame, as the script does. The built-in default (trylast)
    calls ``cogvx_load_pixels`` and encodes. To cache, answer hits from a ``tryfirst``
    implementation (returning skips the decoding below it) and store misses from a
    ``wrapper=True`` one. Stops at first non-None result.

    :param sample: the clip and its target.
    :param vae: the script's VAE, on its device and dtype.
    :param kind: ``"t2v"`` or ``"i2v"``: which script is running.
    :param args: the parsed arguments.
    """


@hookspec(firstresult=True)
def cogvx_batch_sampler(
    samples: list[Sample],
    batch_size: int,
    num_replicas: int,
    args: argparse.Namespace,
    model: ModelInfo,
    stages: list[Stage] | None,
) -> Any:
    """Return the batch sampler the script's ``DataLoader`` should use, or ``None``.

    It yields lists of sample indices. Every batch must hold one latent shape (the script
    concatenates latents). ``len()`` must be exact, constant and equal on every rank; the number
    of batches per epoch should be a multiple of ``num_replicas`` so accelerate adds no padding.
    With ``stages``, every batch of an optimizer step comes from that step's stage
    (``cogvx_ext.data.stages.StagedBatchSampler`` does the arithmetic). Samples of one clip and stage
    tagged ``("scale", ...)`` are alternatives: each epoch trains one of them. Stops at first
    non-None result.

    :param samples: the dataset's samples, in dataset order.
    :param batch_size: the script's ``--train_batch_size``.
    :param num_replicas: the number of training processes.
    :param args: the parsed arguments.
    :param model: positional facts of the model.
    :param stages: the schedule from ``cogvx_stages``, or ``None``.
    """


@hookspec(firstresult=True)
def cogvx_prompt_embeddings(
    prompts: list[str],
    tokenizer: Any,
    text_encoder: torch.nn.Module,
    max_sequence_length: int,
    device: torch.device,
    dtype: torch.dtype,
    cached_only: bool,
) -> torch.Tensor | None:
    """Return the text embeddings of ``prompts``: ``[len(prompts), max_sequence_length, D]``.

    Replaces the scripts' ``compute_prompt_embeddings`` (T2V: every step; I2V: once per sample
    at start). Before the first answer the core asks for every prompt of the dataset once, then
    again with ``cached_only``: answer only from what you have, without the text encoder, or
    ``None``; when every prompt is answered that way the text encoder leaves the accelerator.
    The built-in default (trylast) runs the script's own function where the text encoder is.
    Calls that need gradients go to the script's function directly. Stops at first non-None
    result.

    :param prompts: the texts as the script encodes them (id token included).
    :param tokenizer: the script's tokenizer.
    :param text_encoder: the script's text encoder (on the accelerator, or the CPU once all is cached).
    :param max_sequence_length: tokens per prompt (the transformer's ``max_text_seq_length``).
    :param device: where the result must live.
    :param dtype: the result's dtype.
    :param cached_only: answer without running the text encoder, or return ``None``.
    """


# ---------------------------------------------------------------------------------------------
# The cache command (``cogvx-ext cache fill|prune``) asks the cache plugin through these.


@hookspec(firstresult=True)
def cogvx_cache_summary() -> dict[str, Any] | None:
    """Describe this process's cache use so far, for ``cogvx-ext cache fill``'s report.

    Return ``{"root": str, "hits": int, "misses": int, "recomputed": int, "store_errors": int}``
    (entries read, encoded, bad entries encoded again, entries that could not be written), or
    ``None`` when the plugin keeps no cache. The cache commands need a plugin that answers. Stops
    at first non-None result.
    """


@hookspec(firstresult=True)
def cogvx_cache_prune(samples: list[Sample], args: argparse.Namespace, dry_run: bool, temp_age: float) -> Any:
    """Remove cache entries that ``samples`` (the dataset as planned) no longer reach.

    For ``cogvx-ext cache prune``: name each removed item on stdout (with ``dry_run``: what would
    be removed, removing nothing), and remove temporary files older than ``temp_age`` seconds.
    Return ``{"root": str, "kept": int, "removed": int, "temporary": int, "freed_bytes": int}``.
    Stops at first non-None result.

    :param samples: every planned sample of the dataset (their clips, targets and prompts).
    :param args: the parsed arguments (the script's data flags and the plugins' own).
    :param dry_run: list, do not remove.
    :param temp_age: the age in seconds from which a temporary file is a killed writer's.
    """


# ---------------------------------------------------------------------------------------------
# The transformer's forward pass (training and validation alike)


@hookspec
def cogvx_transformer_forward(
    transformer: torch.nn.Module, inputs: dict[str, Any], latent_shape: tuple[int, int, int], model: ModelInfo
) -> None:
    """Adjust the keyword arguments of one transformer forward, in place.

    Fires before every forward (training, validation, and inference set up by
    ``cogvx_ext.inference``), before ``cogvx_rotary_embedding``. ``inputs`` holds
    ``hidden_states`` ``[B, F, C, H, W]``, ``encoder_hidden_states``, ``timestep``,
    ``image_rotary_emb`` and whatever else the caller passed (``ofs``). A training forward runs
    with gradients enabled; the pipelines run under ``torch.no_grad()``.

    :param transformer: the model being called.
    :param inputs: the forward's keyword arguments; modify in place.
    :param latent_shape: ``(frames, height, width)`` of ``hidden_states`` as it arrived.
    :param model: positional facts of the model.
    """


@hookspec(firstresult=True)
def cogvx_rotary_embedding(
    model: ModelInfo, latent_shape: tuple[int, int, int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Return the rotary embedding ``(cos, sin)`` for a forward pass on this latent shape.

    Fires before every forward of a model that uses RoPE, after ``cogvx_transformer_forward``,
    with the shape of the tensor that actually reaches the transformer (accelerate fetches
    batches ahead, so no sampler state is trusted). The result replaces ``image_rotary_emb``. Return
    ``None`` when your option is off: the core's default (trylast) then answers with the diffusers
    pipeline's embedding at this latent shape, so a forward never goes without RoPE (the script's
    own embedding, from ``--height/--width``, was skipped). Stops at first non-None result.

    :param model: positional facts of the model.
    :param latent_shape: ``(frames, height, width)`` in latent units, after any padding.
    :param device: where the embedding must live.
    """


@hookspec(firstresult=True)
def cogvx_transformer_output(
    transformer: torch.nn.Module, inputs: dict[str, Any], output: Any, model: ModelInfo
) -> Any:
    """Return a replacement for one forward's output, or ``None`` to keep it.

    Fires after every forward, with the inputs as the forward saw them. Used to undo what
    ``cogvx_transformer_forward`` did to the shape (a padded frame is cut off again, so it stays
    out of the loss). Stops at first non-None result.

    :param transformer: the model that was called.
    :param inputs: the keyword arguments the forward received.
    :param output: what the forward returned (a tuple, or an output object).
    :param model: positional facts of the model.
    """


# ---------------------------------------------------------------------------------------------
# Training progress and state


@hookspec
def cogvx_step_end(step: int, logs: dict[str, Any], accelerator: Any) -> None:
    """One iteration of the script's training loop has finished.

    Fires from the script's ``accelerator.log(logs, step=...)`` call, once per loop iteration
    (per micro-batch under gradient accumulation). Add entries to ``logs`` to send them to the
    script's trackers with the loss.

    :param step: the script's ``global_step`` (optimizer steps so far).
    :param logs: what the script is about to log (``loss``, ``lr``); add to it in place.
    :param accelerator: the script's accelerator.
    """


@hookspec
def cogvx_state_dict(step: int | None) -> dict[str, Any] | None:
    """Return this plugin's state to save with the script's checkpoint (JSON-serialisable).

    Fires when the script calls ``accelerator.save_state``. The core asks one plugin at a time
    through the plugin manager (a ``wrapper=True`` implementation receives the list holding that
    plugin's state) and writes every answer to ``cogvx_ext_state.json`` in the checkpoint folder,
    atomically, keyed by what the plugin is (``module:Class``), not by its name on the command line.

    :param step: the optimizer step being saved (from the script's ``checkpoint-<step>`` folder
        name), or ``None`` when the folder is named otherwise.
    """


@hookspec
def cogvx_load_state_dict(state: dict[str, Any]) -> None:
    """Restore this plugin's state from a checkpoint (``--resume_from_checkpoint``).

    Fires when the script calls ``accelerator.load_state``, only for plugins that saved state,
    one plugin at a time through the plugin manager.

    :param state: what this plugin's ``cogvx_state_dict`` returned when the checkpoint was saved.
    """


# ---------------------------------------------------------------------------------------------
# Validation, inference and the saved LoRA


@hookspec
def cogvx_pipeline_loaded(pipe: Any, args: argparse.Namespace) -> None:
    """The script has built a CogVideoX pipeline (validation, final test, or ``cogvx_ext.inference``).

    Adapt it in place so inference sees what training saw (positional embeddings, RoPE).

    :param pipe: a ``CogVideoXPipeline`` or ``CogVideoXImageToVideoPipeline``.
    :param args: the parsed arguments, or the recorded training settings at inference.
    """


@hookspec
def cogvx_validation_args(
    variants: list[dict[str, Any]], args: argparse.Namespace, samples: list[Sample] | None
) -> None:
    """Change, in place, the list of pipeline calls one validation prompt makes.

    ``variants`` starts as ``[pipeline_args]``, what the script passes to the pipeline (prompt,
    height, width, ...); the script's ``log_validation`` then runs once per entry. Replace it to
    validate at other sizes, edit the entries to change other settings.

    :param variants: the pipeline arguments of each validation call; modify in place.
    :param args: the parsed arguments.
    :param samples: the training samples (their targets are the trained shapes), or ``None``
        when the script's own dataset is in use.
    """


@hookspec
def cogvx_lora_metadata(args: argparse.Namespace) -> dict[str, Any]:
    """Return settings to record with the saved LoRA (JSON-serialisable).

    The core writes every plugin's contribution to ``cogvx_ext.json`` next to the LoRA weights,
    so ``cogvx_ext.inference.prepare_pipeline`` can set inference up the same way.

    :param args: the parsed arguments.
    """


@hookspec
def cogvx_exception(exc: BaseException, args: argparse.Namespace) -> None:
    """An exception is escaping the script's ``main``; it propagates unchanged afterwards.

    :param exc: the exception.
    :param args: the parsed arguments.
    """
