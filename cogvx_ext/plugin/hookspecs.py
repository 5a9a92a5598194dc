"""Every hook a cogvx-ext plugin can implement, in the order they fire in a training run.

A plugin is any module or object with functions decorated by ``cogvx_ext.api.hookimpl`` whose
names are listed here. Implementations may take any subset of a hook's arguments, by name.

These docstrings are the hook reference: ``python -m cogvx_ext.plugin.hookdoc`` writes hooks.md
from them, from ``docs/hooks_template.md`` (the introduction and the timeline) and from the
example plugins in ``examples/hooks/`` (which ``tests/test_hooks_examples.py`` runs);
``tests/test_hooks_reference.py`` fails when hooks.md is not what it writes. Write a docstring
as: a summary line; paragraphs on when it fires, what to return and what the core does with it
(reST ``literals`` become Markdown code); "Stops at first non-None result." on every
firstresult hook; one ``:param name:`` line per argument, in the signature's order. The
generator adds which built-in plugins implement the hook (from the installed entry points and
the implementations' own docstrings) and the example.

The run: every hook but ``cogvx_add_arguments`` and ``cogvx_stages`` takes ``run``, a
``cogvx_ext.api.RunContext``: the command (``train``, ``plan``, ``cache``, ``inference``), the
arguments, the model, the stage schedule (asked once, after ``cogvx_configure``), the processes
and a ``stash`` dict for a plugin's per-run data. The order plugins are called in and what their
state does across checkpoints are in ``docs/hooks_template.md``.
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
    lists the flags (``cogvx-ext run SCRIPT --plugins LIST --help``). Put them in an argument group
    named after the plugin.

    :param parser: the training script's own ``argparse.ArgumentParser``.
    """


@hookspec
def cogvx_configure(args: argparse.Namespace, run: RunContext) -> None:
    """Check and complete the parsed arguments, after parsing and before ``main(args)`` runs.

    Raise ``UsageError("...")`` for a bad flag: the run stops with that one line and exit status
    2, before anything loads.

    :param args: the parsed ``argparse.Namespace``; change it in place.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_provides(args: argparse.Namespace, run: RunContext) -> list[str]:
    """Name the capabilities this plugin provides to other plugins.

    Fires once after ``cogvx_configure``; the lists of all plugins are merged. Built-in capability
    names: ``"batch_rope"`` (the rotary embedding follows each batch's latent shape),
    ``"frame_padding"`` (CogVideoX 1.5 targets with an odd latent frame count are padded),
    ``"learned_posemb"`` (a learned positional table adapted to each batch's shape),
    ``"shape_batches"`` (batches of one shape from samples of several).

    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_requires(args: argparse.Namespace, model: ModelInfo, run: RunContext) -> list[tuple[str, str]]:
    """Name the capabilities this plugin needs, each with the advice shown when it is missing.

    Return a list of ``(capability, advice)`` pairs, or ``[]``. Fires once after
    ``cogvx_configure``, with the model's positional facts read from its
    ``transformer/config.json`` (a local folder or the Hugging Face cache) before anything loads:
    when a capability no chosen plugin provides is needed, the run stops at start with the advice
    (``cogvx-ext: 5b model: add rope_rescale to --plugins``) rather than with a shape error later.
    When the config cannot be read at start, it fires when the transformer has loaded, still
    before any data or training. Whatever plugins declare, the core adds what the targets' shapes
    need (see ``cogvx_clip_targets``).

    :param args: the parsed arguments.
    :param model: the ``ModelInfo`` of the model being trained.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_memory_check(
    setup: TrainingSetup | None,
    args: argparse.Namespace,
    model: ModelInfo | None,
    stages: list[Stage] | None,
    samples: list[Sample] | None,
    run: RunContext,
) -> None:
    """Check, or plan by, the run's accelerator memory.

    Fires only when a chosen plugin implements it (building ``setup`` reads the model's configs).
    In training twice: before any model loads (after ``cogvx_requires``) with ``samples=None``,
    and once the clips are planned (in the dataset, after the script has loaded its models) with
    the planned ``samples``, before anything is decoded. ``cogvx-ext plan`` fires it once, with the
    samples, right after reading the clips' headers.
    ``cogvx_ext.model.memory.estimate.estimate(setup, latent_shape, batch_size).peak`` is a step's
    estimated peak allocated memory in bytes; ``largest_batch(setup, latent_shape, budget,
    margin)`` and ``advice(setup, latent_shape, budget, margin)`` (same module) help plan by a
    budget. Raise ``UsageError`` for a run that cannot fit: it stops with that one line. ``setup``
    and ``model`` are ``None`` when the model's configs cannot be had without a download: an
    implementation must allow that.

    :param setup: a ``cogvx_ext.model.memory.setup.TrainingSetup``: the transformer's config
        (``--pretrained_model_name_or_path``'s ``transformer/config.json``, a Hub model in the
        local cache, or the released model its name says; ``--model`` in ``cogvx-ext plan``), LoRA
        rank, optimizer, mixed precision, gradient checkpointing, validation, and where the text
        encoder and the VAE live (the text encoder is off the device when a chosen plugin
        implements ``cogvx_prompt_embeddings``: the core moves it to the CPU once every prompt is
        answered); ``None`` when the configs cannot be had without a download
        (``setup_from_args(args)`` raises the reason).
    :param args: the parsed arguments.
    :param model: the ``ModelInfo`` (from the config), or ``None`` with ``setup``.
    :param stages: the schedule of ``cogvx_stages``, or ``None``.
    :param samples: the planned samples (their targets' shapes are what training runs), or
        ``None`` before the clips are read.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


# ---------------------------------------------------------------------------------------------
# Models and the accelerator


@hookspec
def cogvx_accelerator_ready(accelerator: Any, args: argparse.Namespace, run: RunContext) -> None:
    """The script has created its ``accelerate.Accelerator``.

    Fires once, before the models load; trackers are not initialised yet.

    :param accelerator: the script's ``accelerate.Accelerator``, just created.
    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_transformer_loaded(transformer: torch.nn.Module, args: argparse.Namespace, run: RunContext) -> None:
    """The script has loaded its ``CogVideoXTransformer3DModel``; LoRA adapters are not added yet.

    Fires right after ``from_pretrained``, before ``add_adapter`` (LoRA) and before dtype and
    device moves. Modify the model in place (buffers, attention processors, hooks).

    :param transformer: the ``CogVideoXTransformer3DModel`` the script just loaded.
    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_vae_loaded(vae: torch.nn.Module, args: argparse.Namespace, run: RunContext) -> None:
    """The script has loaded its ``AutoencoderKLCogVideoX``.

    Fires right after the VAE loads.

    :param vae: the script's ``AutoencoderKLCogVideoX``.
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

    A list of ``Stage(start_step, area, height, width, frames, batch_size, token_budget,
    warmup_steps)`` (only the first two are required; the first stage starts at step 0, start
    steps increase). A stage runs from its optimizer step (counting ``global_step``, gradient
    accumulation included) to the next one's. The answer goes as ``stages`` to
    ``cogvx_clip_targets`` (the targets of every stage, each tagged ``("stage", "<index>")``) and
    to ``cogvx_batch_sampler`` (each optimizer step's batches come from its stage only); samples
    are ordered stage by stage, so the stages are encoded one after the other.

    The core asks once per run, right after ``cogvx_configure`` (training, ``cogvx-ext plan`` and
    ``cogvx-ext cache`` alike), keeps the answer as ``run.stages`` and passes it on as ``stages``.
    Answer from ``args`` alone. Stops at first non-None result.

    :param args: the parsed arguments.
    """


@hookspec(firstresult=True)
def cogvx_probe(path: str, args: argparse.Namespace, run: RunContext) -> VideoInfo | None:
    """Read one clip's metadata (size, frame count, frame rate) without decoding it.

    Return a ``VideoInfo(width, height, num_frames, fps)`` (a frozen dataclass; give every field),
    or raise ``SkipClip("reason")`` for a file that cannot be used. Fires once per listed clip
    when the core plans the dataset, before ``cogvx_clip_targets``. The core's default (trylast):
    PyAV reads the container's header (no frame decoded) and rejects what is not a video. Answer
    for files of your own format (with ``cogvx_load_pixels``), or from a cache. Stops at first
    non-None result.

    :param path: the clip's path as listed (``--instance_data_root`` joined with a line of
        ``--video_column``).
    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec(firstresult=True)
def cogvx_clip_targets(
    clip: Clip, args: argparse.Namespace, model: ModelInfo, stages: list[Stage] | None, run: RunContext
) -> list[Target] | None:
    """Decide the training sample(s) made from one clip: size, crop and frame indices.

    Return a list of ``Target(height, width, frame_indices, crop, tags)``: ``crop`` is ``(top,
    left, height, width)`` in display pixels, resized to ``height x width``; ``frame_indices``
    index the shown frames; several targets make several samples (scales, stages). With
    ``stages``, return every stage's targets, each tagged ``("stage", "<index>")``
    (``cogvx_ext.data.clips.STAGE_TAG``). Raise ``SkipClip("reason")`` to leave the clip out: it
    is reported by path and reason, never dropped silently. The core's default (trylast): the
    stock rule, one target at ``--height x --width`` (with stages: at each stage's size, an area
    keeping the ``--height x --width`` aspect, and its frame count), cover and centre crop (never a
    stretch), the script's frame selection. Stops at first non-None result.

    Rules the core checks on every target, whoever returned it, before anything is decoded (in
    training and in ``cogvx-ext plan`` alike); a broken rule stops the run with one line naming
    the plugin, the clip and the rule (``cogvx_ext.data.contracts``):

    - ``width`` and ``height`` are positive multiples of 16 (``model.pixel_multiple``: VAE 8 x
      patch 2);
    - the frame count is 4k+1 (``model.valid_frame_count`` also says which counts 1.5 takes
      without padding); frame indices are whole numbers from 0;
    - ``crop`` lies inside the source (``clip.info.width x clip.info.height``).

    Requirements follow the data: when a target's latent size differs from the one
    ``--height/--width`` give, a RoPE model needs a ``batch_rope`` provider (``rope_rescale``) and
    5b-I2V a ``learned_posemb`` one (``posemb_adapt``); a CogVideoX 1.5 target with an odd latent
    frame count needs ``frame_padding`` (``rope_rescale``). Whoever produced the targets.

    ``tags`` name what made a target (a stage, a scale, an augmentation); ``latent_cache``'s key
    includes them, so a plugin that changes the pixels beyond size, crop and frames must say so
    in a tag, or cached latents of the plain target would be used. ``Target`` and ``Clip`` are
    frozen dataclasses: make new ones (``dataclasses.replace(target, ...)``), never change one
    in place. Helpers: ``cogvx_ext.plugin.defaults.cover_crop_box(src_width, src_height, width,
    height)`` (the centred crop with the target's aspect: no stretch),
    ``cogvx_ext.data.video.stock_frame_indices(num_frames, max_frames, skip_start, skip_end)``
    (the script's 4k+1 frame choice).

    :param clip: a ``Clip`` (``index``, ``path``, ``prompt``, ``info``: a ``VideoInfo`` with
        ``width``, ``height`` (the display size: upright, square pixels), ``num_frames`` (frames
        shown), ``fps``, ``stored_width``, ``stored_height``, ``rotation`` (clockwise degrees),
        ``sample_aspect`` (``"N:D"``), ``frame_times`` (presentation seconds of each shown frame;
        ``info.times()`` counts from the first) and ``decoder`` (``decord`` or ``pyav``)).
    :param args: the parsed arguments.
    :param model: the ``ModelInfo`` (frame rules, compression factors).
    :param stages: the list from ``cogvx_stages``, or ``None``.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_clips_skipped(skipped: list[Any], when: str, args: argparse.Namespace, run: RunContext) -> None:
    """Clips are being left out of training; raise ``UsageError`` to stop the run instead.

    Fires only with a non-empty list, with the same list on every rank, after the core has named
    each clip with its reason: after planning (``when == "plan"``: listing problems, failed
    probes, ``SkipClip`` from ``cogvx_clip_targets``; ``cogvx-ext plan`` fires it after its
    report) and after the encoding pass (``when == "decode"``: clips that passed the probe and
    failed to decode).

    :param skipped: the clips left out, each with ``path`` and ``reason`` (never empty).
    :param when: ``"plan"`` or ``"decode"``.
    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec(firstresult=True)
def cogvx_load_pixels(sample: Sample, args: argparse.Namespace, run: RunContext) -> torch.Tensor | None:
    """Decode one sample's frames, cropped and resized to its target.

    Return a float tensor ``[F, 3, H, W]`` in ``[-1, 1]`` at the target size. The core's default
    (trylast): ``cogvx_ext.data.video.read_frames`` decodes the target's frames upright at display
    aspect, resizing while decoding, and crops: with decord, or PyAV for the files the probe gave
    to it (and for any file decord fails on while training). For files of your own format,
    answer ``cogvx_probe`` too (the default probe rejects what is not a video). Stops at first
    non-None result.

    Called in a thread of its own, one call at a time in the encoding order, while the sample
    before is VAE-encoded (``cogvx_ext.data.decode_ahead``; an exception is raised in the encoding
    loop, as if called there): depend only on the arguments, not on state another hook set for the
    current sample, and draw no random numbers from torch's global generator (seed a
    ``torch.Generator`` of your own from the sample). ``COGVX_EXT_DECODE_AHEAD=0`` calls it in the
    encoding loop instead.

    :param sample: a ``Sample`` (``clip``, ``target``).
    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec(firstresult=True)
def cogvx_encode_sample(
    sample: Sample, vae: torch.nn.Module, kind: str, args: argparse.Namespace, run: RunContext
) -> Any:
    """Produce one sample's VAE posterior.

    Return a ``DiagonalGaussianDistribution`` (or anything with ``.parameters`` ``[1, 2C, F, H,
    W]``); for the I2V script (``kind == "i2v"``) a pair ``(video, image)`` where the image is the
    noised first frame as the script makes it. Runs under ``torch.no_grad()``, once per sample
    when the script first reaches its encoding loop (each rank its share, then shared). The
    core's default (trylast): the script's own recipe on ``cogvx_load_pixels``' frames. To cache,
    answer hits from a ``tryfirst`` implementation (its answer stops the call before anything
    decodes) and store misses from a ``wrapper=True`` one. Stops at first non-None result.

    :param sample: a ``Sample``: the clip and its target.
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

    The core's default (trylast): ``None`` (the script's shuffled ``DataLoader``) when all samples
    share a shape, otherwise a ``UsageError`` asking for a plugin that batches by shape; ``None``
    with stages (the plugin that sets a schedule makes sure a sampler follows it). Stops at first
    non-None result.

    :param samples: the dataset's ``Sample``s, in dataset order.
    :param batch_size: the script's ``--train_batch_size``.
    :param num_replicas: the number of training processes.
    :param args: the parsed arguments.
    :param model: the ``ModelInfo``.
    :param stages: the list from ``cogvx_stages``, or ``None``.
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

    Replaces the scripts' ``compute_prompt_embeddings`` (T2V: every step; I2V: once per sample at
    start). Before the first answer the core asks for every prompt of the dataset once, then
    again with ``cached_only``: answer only from what you have, without the text encoder, or
    ``None``; when every prompt is answered that way the text encoder moves to the CPU for the
    rest of the run (validation moves it back to the CPU afterwards). Calls that need gradients
    go to the script's function directly. The core's default (trylast): the script's own
    function, run where the text encoder is. Stops at first non-None result.

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
    ``None`` when the plugin keeps no cache. The cache commands stop with one line when no plugin
    answers. Stops at first non-None result.

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
    :param dry_run: name what would go, remove nothing.
    :param temp_age: seconds after which a temporary file is a killed writer's.
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
    ``cogvx_ext.inference``), before ``cogvx_rotary_embedding``. Training forwards run with
    gradients enabled, the pipelines under ``torch.no_grad()``.

    :param transformer: the model being called.
    :param inputs: the forward's keyword arguments (``hidden_states`` ``[B, F, C, H, W]``,
        ``encoder_hidden_states``, ``timestep``, ``image_rotary_emb``, ``ofs``, ...): change them
        in place.
    :param latent_shape: ``(frames, height, width)`` of ``hidden_states`` as it arrived.
    :param model: the ``ModelInfo``.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec(firstresult=True)
def cogvx_rotary_embedding(
    model: ModelInfo, latent_shape: tuple[int, int, int], device: torch.device, run: RunContext
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Return the rotary embedding ``(cos, sin)`` for a forward pass on this latent shape.

    Fires before every forward of a model that uses RoPE, after ``cogvx_transformer_forward``,
    with the shape of the tensor that actually reaches the transformer (accelerate fetches
    batches ahead, so no sampler state is trusted). The result replaces ``image_rotary_emb``.
    When a chosen plugin implements it, the script's own per-step embedding (computed from
    ``--height/--width``) is skipped. Return ``None`` when your option is off: when every plugin
    does, the core's default (trylast) answers with what the diffusers pipeline computes at this
    latent shape (``cogvx_ext.model.rope.default_rotary_embedding``), so a forward never goes
    without RoPE. Stops at first non-None result.

    :param model: the ``ModelInfo``.
    :param latent_shape: ``(frames, height, width)`` in latent units, after any padding.
    :param device: where the tensors must live.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec(firstresult=True)
def cogvx_snr_shift(
    model: ModelInfo, latent_shape: tuple[int, int, int], shift: float, run: RunContext
) -> float | None:
    """Return the SNR shift (the scheduler's ``snr_shift_scale``) for samples of this latent shape.

    Fires wherever the scheduler meets a sample: in the training step at ``add_noise`` (the
    noise), ``get_velocity`` (the clean-sample estimate the loss compares) and so for the loss
    weight ``1 / (1 - alphas_cumprod[t])``, which follows the last ``add_noise``; at every
    denoising step of validation, of ``cogvx_ext.inference.prepare_pipeline`` and of ``cogvx-ext
    generate``; and once per bucket in ``cogvx-ext plan`` (its table and JSON show the answer).
    The scheduler then uses exactly the schedule of a CogVideoX scheduler built with that shift
    (``alphas_cumprod / (s + (1 - s) * alphas_cumprod)``, then its zero-terminal-SNR rescale).
    When a chosen plugin implements it, the script's ``CogVideoXDPMScheduler`` is replaced by one
    whose schedule follows each batch. Return ``None`` to keep ``shift``. Called for every batch:
    answer from a cache. Stops at first non-None result.

    :param model: the ``ModelInfo``.
    :param latent_shape: ``(frames, height, width)`` in latent units, before any padding.
    :param shift: the model's own shift (its scheduler config's ``snr_shift_scale``).
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
    :param output: what it returned (a tuple, or an output object).
    :param model: the ``ModelInfo``.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


# ---------------------------------------------------------------------------------------------
# Training progress and state


@hookspec
def cogvx_step_end(step: int, logs: dict[str, Any], accelerator: Any, run: RunContext) -> None:
    """One iteration of the script's training loop has finished.

    Fires from the script's ``accelerator.log(logs, step=...)`` call: once per loop iteration (per
    micro-batch under gradient accumulation), on every rank. Add entries to ``logs`` to send them
    to the script's trackers with the loss (``--report_to``) and to its progress bar
    (``Steps: ... loss=0.1, lr=0.001, stage=1``), which is all there is under the scripts' default
    ``--report_to``.

    :param step: the script's ``global_step`` (optimizer steps so far).
    :param logs: the dict the script is about to log (``loss``, ``lr``); add entries in place.
    :param accelerator: the script's accelerator.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_state_dict(step: int | None, run: RunContext) -> dict[str, Any] | None:
    """Return this plugin's state to save with the script's checkpoint (JSON-serialisable), or ``None``.

    Fires when the script calls ``accelerator.save_state(dir)`` (its checkpoints). The core asks
    each plugin in turn through the plugin manager and writes the answers to
    ``dir/cogvx_ext_state.json``, atomically, keyed by what the plugin is (``module:Class``, or
    the module's name for a module plugin; ``cogvx_ext.plugin.state.plugin_identity``), not by the
    name it got on the command line: resuming with ``--plugins
    cogvx_ext_plugins.aspect_bucket:AspectBucket`` finds what ``aspect_bucket`` saved. A
    ``wrapper=True`` implementation receives the list holding the state of the one plugin being
    asked (``[]`` when it has none) and returns such a list.

    Which processes: the diffusers scripts save on the main process alone, so this fires there
    only (under DeepSpeed every process saves and is asked; the first process of each machine
    writes the file). Every process resumes from that one file: keep state that is the same on
    every process (or that every process can take from the main one), and make no collective
    call here. It fires inside the iteration that made optimizer step ``step``: after its forward
    and backward, before its ``cogvx_step_end`` (state counted in ``cogvx_step_end`` is one
    iteration behind).

    :param step: the optimizer step being saved, read from the script's ``checkpoint-<step>``
        folder name (``None`` for a folder named otherwise).
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_load_state_dict(state: dict[str, Any], run: RunContext) -> None:
    """Restore this plugin's state from a checkpoint (``--resume_from_checkpoint``).

    Fires when the script calls ``accelerator.load_state(dir)`` (``--resume_from_checkpoint``),
    on every process, only for plugins with saved state, each with the state saved under its
    identity, one plugin at a time through the plugin manager (wrappers see each call). Every
    process reads ``cogvx_ext_state.json`` of the checkpoint folder (the one the main process
    wrote, or its machine's copy), so every process gets the main process's state.

    :param state: what this plugin's ``cogvx_state_dict`` returned when the checkpoint was saved.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_training_settings(args: argparse.Namespace, run: RunContext) -> dict[str, Any] | None:
    """Return this plugin's settings that change what is trained, the data or the model (JSON-serialisable).

    The core records every chosen plugin's answer in each checkpoint (``cogvx_ext_state.json``,
    keyed by what the plugin is, ``module:Class``), with the plugin set. On
    ``--resume_from_checkpoint`` it compares the checkpoint's record with the resuming run's, at
    start, before any model loads: a plugin with settings that is left out or added, or a setting
    of another value, stops the run with one line listing the differences
    (``--allow_changed_plugins_on_resume`` continues with one warning line). Name each setting
    after its flag (without the dashes) and give the value the run uses, defaults resolved.
    Return ``None``, or leave the hook out, when nothing the plugin does changes the data or the
    model (logging, a cache under content keys): such a plugin may come and go between a
    checkpoint and its resume. ``{}`` means the plugin's presence alone changes the training.
    Not firstresult: each plugin is asked on its own (a ``wrapper=True`` implementation receives
    the list holding that plugin's answer).

    :param args: the parsed arguments, after ``cogvx_configure``.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


# ---------------------------------------------------------------------------------------------
# Validation, inference and the saved LoRA


@hookspec
def cogvx_pipeline_loaded(pipe: Any, args: argparse.Namespace, run: RunContext) -> None:
    """The script has built a CogVideoX pipeline (validation, final test, or ``cogvx_ext.inference``).

    Fires once per pipeline: the ones the script builds (validation, the final test) and the one
    ``cogvx_ext.inference.prepare_pipeline`` prepares. Adapt it in place so inference sees what
    training saw (positional embeddings, RoPE).

    :param pipe: a ``CogVideoXPipeline`` or ``CogVideoXImageToVideoPipeline``.
    :param args: the parsed arguments, or at inference a namespace of the settings recorded with
        the LoRA.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_validation_args(
    variants: list[dict[str, Any]], args: argparse.Namespace, samples: list[Sample] | None, run: RunContext
) -> None:
    """Change, in place, the list of pipeline calls one validation prompt makes.

    ``variants`` starts as ``[pipeline_args]``, what the script passes to the pipeline for one
    validation prompt (``prompt``, ``height``, ``width``, ...); the script's ``log_validation`` then
    runs once per entry, and each entry's videos are written to ``OUTPUT_DIR/validation/step-N/``
    (``final/`` after training) as ``<prompt>-<W>x<H>-<i>.mp4`` and logged to tensorboard and wandb
    under ``validation/<W>x<H>/<prompt>`` (README, "See what it learned"). Replace it to validate at other sizes, edit the entries to change other
    settings. Plugins run in turn on the same list (use ``trylast=True`` to see what the others
    chose).

    :param variants: the pipeline arguments of each validation call; change the list in place.
    :param args: the parsed arguments.
    :param samples: the training ``Sample``s (their targets are the trained shapes), or ``None``
        when the script's own dataset is in use.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """


@hookspec
def cogvx_lora_metadata(args: argparse.Namespace, run: RunContext) -> dict[str, Any]:
    """Return settings to record with the saved LoRA (a JSON-serialisable dict).

    Fires at every LoRA save (checkpoints and the end). The core merges all plugins' dicts into
    the ``settings`` of ``cogvx_ext.json`` next to ``pytorch_lora_weights.safetensors``, with the
    plugin list, so ``cogvx_ext.inference.prepare_pipeline(pipe, lora_dir)`` can set inference up
    the same way.

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

    Fires once (``SystemExit`` is not reported).

    :param exc: the exception escaping the script's ``main``.
    :param args: the parsed arguments.
    :param run: the run's context (``cogvx_ext.api.RunContext``).
    """
