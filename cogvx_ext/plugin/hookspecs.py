"""Every hook a cogvx-ext plugin can implement, in the order they fire in a training run.

A plugin is any module or object with functions decorated by ``cogvx_ext.api.hookimpl`` whose
names are listed here. Implementations may take any subset of a hook's arguments, by name. hooks.md
documents each hook with an example; ``tests/test_hooks_documented.py`` keeps the two in step.

The run: every hook but ``cogvx_add_arguments`` and ``cogvx_stages`` takes ``run``, a
``cogvx_ext.api.RunContext``: the command (``train``, ``plan``, ``cache``, ``inference``), the
arguments, the model, the stage schedule (asked once, after ``cogvx_configure``), the processes
and a ``stash`` dict for a plugin's per-run data.

Order: ``--plugins`` (and ``COGVX_EXT_PLUGINS``, then ``load_trainer(plugins=...)``, then each
``--plugins`` flag, in order; a name given twice counts where it first appears) registers the
plugins left to right, and pluggy calls the last registered first. So for a firstresult hook,
of the plugins that answer, the one named *last* wins; ``tryfirst``/``trylast`` come before that
order, and the core's defaults are all ``trylast``.

Life of a run (T2V and I2V scripts alike)::

    get_args()  ── cogvx_add_arguments ─ parse ─ cogvx_configure ─ cogvx_stages (once)
                ─ cogvx_provides/cogvx_requires
                ─ cogvx_memory_check (only when a chosen plugin implements it)
    main(args)
      Accelerator(...)                      ── cogvx_accelerator_ready
      CogVideoXTransformer3DModel loaded    ── cogvx_transformer_loaded        (before LoRA)
      AutoencoderKLCogVideoX loaded         ── cogvx_vae_loaded
      VideoDataset(...)                     ── cogvx_probe and cogvx_clip_targets per clip,
                                               cogvx_clips_skipped             (data plugins only)
      encoding loop                         ── cogvx_load_pixels, cogvx_encode_sample per sample
      DataLoader(...)                       ── cogvx_batch_sampler
      compute_prompt_embeddings(...)        ── cogvx_prompt_embeddings
      every transformer forward             ── cogvx_transformer_forward, cogvx_rotary_embedding,
                                               cogvx_transformer_output
      every loop iteration (accelerator.log)── cogvx_step_end
      accelerator.save_state / load_state   ── cogvx_state_dict / cogvx_load_state_dict
      validation pipeline                   ── cogvx_pipeline_loaded, cogvx_validation_args
      LoRA saved                            ── cogvx_lora_metadata
      accelerator.end_training()            ── cogvx_train_end                 (every process)
      an exception escapes main             ── cogvx_exception
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # imported for annotations only; this module stays cheap to import
    import argparse

    import torch

    from cogvx_ext.data.clips import Clip, Sample, Stage, Target, VideoInfo
    from cogvx_ext.data.context import RunContext
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
def cogvx_configure(args: argparse.Namespace, run: RunContext) -> None:
    """Check and complete the parsed arguments, after parsing and before ``main(args)`` runs.

    Raise ``cogvx_ext.UsageError`` for a bad flag: the run stops with that one line and exit
    status 2, before anything is loaded.

    :param args: the script's parsed arguments; may be modified in place.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_provides(args: argparse.Namespace, run: RunContext) -> list[str]:
    """Name the capabilities this plugin provides to other plugins.

    Built-in capability names: ``"batch_rope"`` (the rotary embedding follows each batch's latent
    shape), ``"learned_posemb"`` (a learned positional table adapted to each batch's shape).

    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_requires(args: argparse.Namespace, model: ModelInfo, run: RunContext) -> list[tuple[str, str]]:
    """Name the capabilities this plugin needs, each with the advice shown when it is missing.

    Fires once after ``cogvx_configure``, with the model's positional settings read from its
    config, so a missing plugin stops the run at start rather than with a shape error later.
    Return ``[("batch_rope", "add rope_rescale to --plugins")]``, or ``[]``.

    :param args: the parsed arguments.
    :param model: positional facts of the model being trained.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_memory_check(
    setup: TrainingSetup | None,
    args: argparse.Namespace,
    model: ModelInfo | None,
    stages: list[Stage] | None,
    run: RunContext,
) -> None:
    """Check, or plan by, the run's accelerator memory before any model is loaded.

    Fires once after ``cogvx_requires`` (training) or ``cogvx_configure`` (``cogvx-ext plan``),
    and only when a chosen plugin implements it: building ``setup`` reads the model's configs.
    ``setup`` is a ``cogvx_ext.model.memory.TrainingSetup`` (the transformer config, LoRA rank,
    optimizer, precision, gradient checkpointing, validation, and where the text encoder and the
    VAE live: the text encoder leaves the device when a chosen plugin implements
    ``cogvx_prompt_embeddings``), or ``None`` when the configs cannot be read without a download
    (``cogvx_ext.model.memory.setup_from_args(args)`` raises the reason);
    ``cogvx_ext.model.memory.estimate(setup, latent_shape, batch_size)``
    gives a step's peak. Raise ``UsageError`` for a run that cannot fit. Not firstresult.
    Built-in: ``aspect_bucket`` (``--bucket_memory_budget``).

    :param setup: the memory-relevant settings of the run.
    :param args: the parsed arguments.
    :param model: positional facts of the model (from its config).
    :param stages: the stage schedule (``cogvx_stages``), or ``None``.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


# ---------------------------------------------------------------------------------------------
# Models and the accelerator


@hookspec
def cogvx_accelerator_ready(accelerator: Any, args: argparse.Namespace, run: RunContext) -> None:
    """The script has created its ``accelerate.Accelerator``.

    :param accelerator: the script's accelerator (trackers are not initialised yet).
    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_transformer_loaded(transformer: torch.nn.Module, args: argparse.Namespace, run: RunContext) -> None:
    """The script has loaded its ``CogVideoXTransformer3DModel``; LoRA adapters are not added yet.

    Modify the model in place (buffers, attention processors, hooks).

    :param transformer: the loaded transformer.
    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_vae_loaded(vae: torch.nn.Module, args: argparse.Namespace, run: RunContext) -> None:
    """The script has loaded its ``AutoencoderKLCogVideoX``.

    :param vae: the loaded VAE.
    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


# ---------------------------------------------------------------------------------------------
# Data: which samples exist, how they are decoded and encoded, how they are batched.
# These hooks replace the script's VideoDataset only when a plugin chosen for the run
# implements one of them; otherwise the script's own dataset runs unchanged.


@hookspec(firstresult=True)
def cogvx_stages(args: argparse.Namespace) -> list[Stage] | None:
    """Return the run's stage schedule (progressive resolution), or ``None`` for one stage.

    A list of ``cogvx_ext.Stage``, the first starting at optimizer step 0, start steps increasing.
    The core asks once per run, right after ``cogvx_configure`` (training, ``cogvx-ext plan`` and
    ``cogvx-ext cache`` alike), keeps the answer as ``run.stages`` and passes it as ``stages`` to
    ``cogvx_memory_check``, ``cogvx_clip_targets`` (one target per stage, tagged
    ``("stage", "<index>")``) and ``cogvx_batch_sampler`` (which draws each optimizer step's
    batches from its stage only). Stops at first non-None result.

    :param args: the parsed arguments.
    """


@hookspec(firstresult=True)
def cogvx_probe(path: str, args: argparse.Namespace, run: RunContext) -> VideoInfo | None:
    """Read one clip's metadata (size, frame count, frame rate) without decoding it.

    Fires once per listed clip when the core plans the dataset, before ``cogvx_clip_targets``.
    Return a ``cogvx_ext.VideoInfo`` (a frozen dataclass: build it with every field), or raise
    ``cogvx_ext.SkipClip(reason)`` for a file that cannot be used. The built-in default (trylast)
    reads the container's header with PyAV and rejects what is not a video. Answer for files of
    your own format (with ``cogvx_load_pixels``), or from a cache. Stops at first non-None result.

    :param path: the clip's path, as listed under ``--instance_data_root``.
    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec(firstresult=True)
def cogvx_clip_targets(
    clip: Clip, args: argparse.Namespace, model: ModelInfo, stages: list[Stage] | None, run: RunContext
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
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_clips_skipped(skipped: list[Any], when: str, args: argparse.Namespace, run: RunContext) -> None:
    """Clips are being left out of training; raise ``cogvx_ext.UsageError`` to stop instead.

    Fires only with a non-empty list, with the same list on every rank: after planning
    (``when == "plan"``: listing problems, failed probes, ``SkipClip`` from ``cogvx_clip_targets``;
    ``cogvx-ext plan`` fires it too, after its report) and after the encoding pass
    (``when == "decode"``: clips that passed the probe and failed to decode). The core has already
    named each clip with its reason.

    :param skipped: the clips left out, each with ``path`` and ``reason``.
    :param when: ``"plan"`` or ``"decode"``.
    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec(firstresult=True)
def cogvx_load_pixels(sample: Sample, args: argparse.Namespace, run: RunContext) -> torch.Tensor | None:
    """Decode one sample's frames, cropped and resized to its target.

    Return a float tensor ``[F, 3, H, W]`` in ``[-1, 1]``. The built-in default (trylast)
    decodes with decord, resizing while decoding. Stops at first non-None result.

    :param sample: the clip and its target.
    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec(firstresult=True)
def cogvx_encode_sample(
    sample: Sample, vae: torch.nn.Module, kind: str, args: argparse.Namespace, run: RunContext
) -> Any:
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
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec(firstresult=True)
def cogvx_batch_sampler(
    samples: list[Sample],
    batch_size: int,
    num_replicas: int,
    args: argparse.Namespace,
    model: ModelInfo,
    stages: list[Stage] | None,
    run: RunContext,
) -> Any:
    """Return the batch sampler the script's ``DataLoader`` should use, or ``None``.

    The contract (``cogvx_ext.api.EpochBatchSampler`` keeps all of it for a subclass that says
    which batches an epoch holds):

    - it yields lists of indices into ``samples``; every batch holds one latent shape (the script
      concatenates latents);
    - ``len()`` is the exact number of batches of every epoch over all processes, constant for
      the run and the same on every rank (the script computes its step count from it once); a
      multiple of ``num_replicas``, so accelerate adds no batch; no ``batch_size`` attribute
      (accelerate would treat batches of another size as incomplete);
    - each ``iter()`` is one epoch and yields the same list on every rank (accelerate gives rank
      ``r`` batches ``r, r + R, ...``); count epochs yourself: accelerate's ``set_epoch`` restarts
      at 0 on resume and reaches the sampler only on one process;
    - the position survives a checkpoint through the plugin's ``cogvx_state_dict`` as (epoch,
      batch), derived from the optimizer step (``cogvx_ext.api.SamplerResume``): accelerate
      fetches ahead, so the sampler's own iteration does not say what was trained;
    - with ``stages``, every batch of an optimizer step comes from that step's stage, computed
      from the sampler's own position (``cogvx_ext.api.StagedBatchSampler``); samples of one clip
      and stage tagged ``("scale", ...)`` are alternatives: each pass trains one of them;
    - ``describe(samples, model)`` returns a ``cogvx_ext.api.SamplerReport`` (rows of latent
      shape, clips, batch size, batches, stage; the memory budget): what ``cogvx-ext plan``'s
      table, the compile bound and the memory estimate logged at start read. An
      ``EpochBatchSampler`` answers by counting epoch 0; a list of batches is counted; any other
      sampler is shown as if batched by ``--train_batch_size``, with a note.

    Stops at first non-None result.

    :param samples: the dataset's samples, in dataset order.
    :param batch_size: the script's ``--train_batch_size``.
    :param num_replicas: the number of training processes.
    :param args: the parsed arguments.
    :param model: positional facts of the model.
    :param stages: the schedule from ``cogvx_stages``, or ``None``.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
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
    run: RunContext,
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
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


# ---------------------------------------------------------------------------------------------
# The cache command (``cogvx-ext cache fill|prune``) asks the cache plugin through these.


@hookspec(firstresult=True)
def cogvx_cache_summary(run: RunContext) -> dict[str, Any] | None:
    """Describe this process's cache use so far, for ``cogvx-ext cache fill``'s report.

    Return ``{"root": str, "hits": int, "misses": int, "recomputed": int, "store_errors": int}``
    (entries read, encoded, bad entries encoded again, entries that could not be written), or
    ``None`` when the plugin keeps no cache. The cache commands need a plugin that answers. Stops
    at first non-None result.

    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec(firstresult=True)
def cogvx_cache_prune(
    samples: list[Sample], args: argparse.Namespace, dry_run: bool, temp_age: float, run: RunContext
) -> Any:
    """Remove cache entries that ``samples`` (the dataset as planned) no longer reach.

    For ``cogvx-ext cache prune``: name each removed item on stdout (with ``dry_run``: what would
    be removed, removing nothing), and remove temporary files older than ``temp_age`` seconds.
    Return ``{"root": str, "kept": int, "removed": int, "temporary": int, "freed_bytes": int}``.
    Stops at first non-None result.

    :param samples: every planned sample of the dataset (their clips, targets and prompts).
    :param args: the parsed arguments (the script's data flags and the plugins' own).
    :param dry_run: list, do not remove.
    :param temp_age: the age in seconds from which a temporary file is a killed writer's.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


# ---------------------------------------------------------------------------------------------
# The transformer's forward pass (training and validation alike)


@hookspec
def cogvx_transformer_forward(
    transformer: torch.nn.Module,
    inputs: dict[str, Any],
    latent_shape: tuple[int, int, int],
    model: ModelInfo,
    run: RunContext,
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
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec(firstresult=True)
def cogvx_rotary_embedding(
    model: ModelInfo, latent_shape: tuple[int, int, int], device: torch.device, run: RunContext
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
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec(firstresult=True)
def cogvx_transformer_output(
    transformer: torch.nn.Module, inputs: dict[str, Any], output: Any, model: ModelInfo, run: RunContext
) -> Any:
    """Return a replacement for one forward's output, or ``None`` to keep it.

    Fires after every forward, with the inputs as the forward saw them. Used to undo what
    ``cogvx_transformer_forward`` did to the shape (a padded frame is cut off again, so it stays
    out of the loss). Stops at first non-None result.

    :param transformer: the model that was called.
    :param inputs: the keyword arguments the forward received.
    :param output: what the forward returned (a tuple, or an output object).
    :param model: positional facts of the model.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


# ---------------------------------------------------------------------------------------------
# Training progress and state


@hookspec
def cogvx_step_end(step: int, logs: dict[str, Any], accelerator: Any, run: RunContext) -> None:
    """One iteration of the script's training loop has finished.

    Fires from the script's ``accelerator.log(logs, step=...)`` call, once per loop iteration
    (per micro-batch under gradient accumulation). Add entries to ``logs`` to send them to the
    script's trackers with the loss.

    :param step: the script's ``global_step`` (optimizer steps so far).
    :param logs: what the script is about to log (``loss``, ``lr``); add to it in place.
    :param accelerator: the script's accelerator.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_state_dict(step: int | None, run: RunContext) -> dict[str, Any] | None:
    """Return this plugin's state to save with the script's checkpoint (JSON-serialisable).

    Fires when the script calls ``accelerator.save_state``. The core asks one plugin at a time
    through the plugin manager (a ``wrapper=True`` implementation receives the list holding that
    plugin's state) and writes every answer to ``cogvx_ext_state.json`` in the checkpoint folder,
    atomically, keyed by what the plugin is (``module:Class``), not by its name on the command line.

    Which processes: the diffusers scripts save on the main process alone, so this fires there
    only (under DeepSpeed every process saves and is asked; the first process of each machine
    writes the file). Every process resumes from that one file: keep state that is the same on
    every process (or that every process can take from the main one), and make no collective
    call here. It fires inside the iteration that made optimizer step ``step``: after its forward
    and backward, before its ``cogvx_step_end`` (state counted in ``cogvx_step_end`` is one
    iteration behind).

    :param step: the optimizer step being saved (from the script's ``checkpoint-<step>`` folder
        name), or ``None`` when the folder is named otherwise.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_load_state_dict(state: dict[str, Any], run: RunContext) -> None:
    """Restore this plugin's state from a checkpoint (``--resume_from_checkpoint``).

    Fires when the script calls ``accelerator.load_state`` (``--resume_from_checkpoint``), on
    every process, only for plugins that saved state, one plugin at a time through the plugin
    manager. Every process reads ``cogvx_ext_state.json`` of the checkpoint folder (the one the
    main process wrote, or its machine's copy), so every process gets the main process's state.

    :param state: what this plugin's ``cogvx_state_dict`` returned when the checkpoint was saved.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


# ---------------------------------------------------------------------------------------------
# Validation, inference and the saved LoRA


@hookspec
def cogvx_pipeline_loaded(pipe: Any, args: argparse.Namespace, run: RunContext) -> None:
    """The script has built a CogVideoX pipeline (validation, final test, or ``cogvx_ext.inference``).

    Adapt it in place so inference sees what training saw (positional embeddings, RoPE).

    :param pipe: a ``CogVideoXPipeline`` or ``CogVideoXImageToVideoPipeline``.
    :param args: the parsed arguments, or the recorded training settings at inference.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_validation_args(
    variants: list[dict[str, Any]], args: argparse.Namespace, samples: list[Sample] | None, run: RunContext
) -> None:
    """Change, in place, the list of pipeline calls one validation prompt makes.

    ``variants`` starts as ``[pipeline_args]``, what the script passes to the pipeline (prompt,
    height, width, ...); the script's ``log_validation`` then runs once per entry. Replace it to
    validate at other sizes, edit the entries to change other settings.

    :param variants: the pipeline arguments of each validation call; modify in place.
    :param args: the parsed arguments.
    :param samples: the training samples (their targets are the trained shapes), or ``None``
        when the script's own dataset is in use.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_lora_metadata(args: argparse.Namespace, run: RunContext) -> dict[str, Any]:
    """Return settings to record with the saved LoRA (JSON-serialisable).

    The core writes every plugin's contribution to ``cogvx_ext.json`` next to the LoRA weights,
    so ``cogvx_ext.inference.prepare_pipeline`` can set inference up the same way.

    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_train_end(
    output_dir: str,
    lora: str,
    checkpoint: str | None,
    step: int | None,
    args: argparse.Namespace,
    run: RunContext,
) -> None:
    """Training has ended and the final LoRA is saved: print a summary, copy or upload the result.

    Fires once on every process, from the script's ``accelerator.end_training()`` (trackers and
    the process group are still up), after the main process has saved the final LoRA: every
    process waits for that save (not for the main process's final validation). Not after a run
    that failed (``cogvx_exception`` fires instead). Only a chosen plugin that implements it
    adds the wait.

    :param output_dir: the script's ``--output_dir``.
    :param lora: the final LoRA file, ``output_dir/pytorch_lora_weights.safetensors`` (written by
        the main process; on another machine it is there only when ``output_dir`` is shared).
    :param checkpoint: the newest ``checkpoint-<step>`` folder in ``output_dir`` at or before
        ``step`` (the one ``--resume_from_checkpoint latest`` takes), or ``None``.
    :param step: the final optimizer step (the script's ``global_step``), or ``None`` when no
        step ran.
    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_exception(exc: BaseException, args: argparse.Namespace, run: RunContext) -> None:
    """An exception is escaping the script's ``main``; it propagates unchanged afterwards.

    :param exc: the exception.
    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """
