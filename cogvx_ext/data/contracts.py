"""What the core checks of every plugin's answer, whoever the plugin is.

A data plugin's targets decide tensor shapes long after they are made: a side that is not on the
VAE x patch grid fails at the second step with a tensor-size error, a frame count the VAE does not
take trains silently, and a transposed size without a RoPE that follows the batch trains silently
wrong; a frame index past the clip's end fails while decoding, on one rank. So every target is
checked as soon as a plugin returns it, before anything is decoded, and the run's needs follow
the shapes the data has, not the names of the plugins that made them.
``cogvx-ext plan`` and training call the same functions (through ``cogvx_ext.data.planning``), so they
reach the same verdict.
"""

from __future__ import annotations

import argparse
import numbers
from collections.abc import Iterable
from typing import Any

from cogvx_ext.base.errors import UsageError
from cogvx_ext.data.clips import Clip, Sample, Target
from cogvx_ext.data.context import RunContext
from cogvx_ext.model.facts import VAE_SPATIAL, ModelInfo

# Capability names the core asks for itself (besides what plugins require by name).
BATCH_ROPE = "batch_rope"
LEARNED_POSEMB = "learned_posemb"
FRAME_PADDING = "frame_padding"


def target_problem(target: Any, clip: Clip, model: ModelInfo) -> str | None:
    """The first rule ``target`` breaks, in words, or ``None`` when it is a target the model takes."""
    if not isinstance(target, Target):
        return f"a target must be a cogvx_ext.Target, not {type(target).__name__}"
    multiple = model.pixel_multiple
    for name in ("width", "height"):
        value = getattr(target, name)
        if not _whole(value) or value <= 0:
            return f"{name} must be a positive whole number of pixels, not {value!r}"
        if value % multiple:
            return (
                f"{name} {value} is not a multiple of {multiple} (VAE {VAE_SPATIAL} x patch "
                f"{model.patch_size})"
            )
    count = target.num_frames
    if count < 1 or (count - 1) % model.temporal_compression_ratio:
        return (
            f"{count} frames: the VAE takes {model.temporal_compression_ratio}k+1 frames "
            "(e.g. 9, 17, 49; cogvx_ext.data.video.stock_frame_indices picks them)"
        )
    frames = clip.info.num_frames
    for i in target.frame_indices:
        # Decoding an index past the end fails on one rank only (not as a skip), while the others
        # wait for its latents: a plugin that makes one is stopped here, before anything decodes.
        if not _whole(i):
            return f"frame index {i!r} is not a whole number"
        if i < 0:
            return f"frame index {i} is negative (frames count from 0)"
        if i >= frames:
            return f"frame index {i} is past the clip's end: it has {frames} frames (0 to {frames - 1})"
    crop = target.crop
    if len(crop) != 4 or not all(_whole(v) for v in crop):
        return f"crop must be (top, left, height, width) in whole source pixels, not {crop!r}"
    top, left, crop_h, crop_w = crop
    info = clip.info
    if (
        crop_h <= 0
        or crop_w <= 0
        or top < 0
        or left < 0
        or top + crop_h > info.height
        or left + crop_w > info.width
    ):
        return (
            f"crop (top {top}, left {left}, height {crop_h}, width {crop_w}) is not inside the "
            f"{info.width}x{info.height} source"
        )
    return None


def _whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def answering_plugin(caller: Any, kwargs: dict[str, Any], target: Target) -> str:
    """The plugin that returned ``target`` from a firstresult hook (asked again, on failures only).

    The plain implementation that answers first made it, unless a wrapper put it in afterwards.
    """
    impls = list(reversed(caller.get_hookimpls()))  # pluggy calls the last registered first
    wrappers = [i.plugin_name for i in impls if i.hookwrapper or i.wrapper]
    for impl in impls:
        if impl.hookwrapper or impl.wrapper:
            continue
        answer = impl.function(*[kwargs[name] for name in impl.argnames])
        if answer is not None:
            if target in answer or not wrappers:
                return impl.plugin_name
            break
    return " or ".join(wrappers) if wrappers else "?"


def check_clip_targets(
    caller: Any, kwargs: dict[str, Any], targets: Iterable[Any], clip: Clip, model: ModelInfo
) -> None:
    """Stop with one line naming the plugin, the clip and the rule when a target is not valid."""
    for target in targets:
        problem = target_problem(target, clip, model)
        if problem:
            plugin = answering_plugin(caller, kwargs, target) if isinstance(target, Target) else "?"
            raise UsageError(f"plugin '{plugin}' gave {clip.path} a target that cannot train: {problem}")


def provided_capabilities(hook: Any, run: RunContext) -> set[str]:
    return {cap for caps in hook.cogvx_provides(args=run.args, run=run) for cap in (caps or ())}


def check_requirements(hook: Any, run: RunContext) -> None:
    """Stop at start when a plugin needs a capability no chosen plugin provides."""
    model = run.model
    provided = provided_capabilities(hook, run)
    missing = []
    for needs in hook.cogvx_requires(args=run.args, model=model, run=run):
        for capability, advice in needs or ():
            if capability not in provided and advice not in missing:
                missing.append(advice)
    if missing:
        raise UsageError(f"{model.name} model: " + "; ".join(missing))


def data_needs(
    samples: Iterable[Sample], args: argparse.Namespace, model: ModelInfo
) -> list[tuple[str, str]]:
    """What the planned samples need from the plugins, by their shapes alone: ``[(capability, advice)]``.

    The script computes RoPE from ``--height/--width`` and diffusers adds the 5b-I2V table only at
    the config's size, so a target of another latent size needs a plugin that follows the batch;
    CogVideoX 1.5 takes an even latent frame count, so an odd one needs padding.
    """
    height, width = getattr(args, "height", None), getattr(args, "width", None)
    stock = (height // VAE_SPATIAL, width // VAE_SPATIAL) if height and width else None
    needs: list[tuple[str, str]] = []
    for sample in samples:
        t = sample.target
        frames, lat_h, lat_w = model.latent_shape(t.num_frames, t.height, t.width)
        where = f"{sample.clip.path} trains at {t.width}x{t.height}x{t.num_frames}"
        if stock is not None and (lat_h, lat_w) != stock:
            if model.rotary:
                needs.append(
                    (
                        BATCH_ROPE,
                        f"{where}, not --width x --height {width}x{height}: add rope_rescale to --plugins",
                    )
                )
            if model.learned_posemb:
                needs.append(
                    (
                        LEARNED_POSEMB,
                        f"{where}, not --width x --height {width}x{height}: add posemb_adapt to --plugins",
                    )
                )
        if model.patch_size_t and frames % model.patch_size_t:
            needs.append(
                (
                    FRAME_PADDING,
                    f"{where}, an odd latent frame count ({frames}): add rope_rescale to --plugins, which pads "
                    "it as the 1.5 pipelines do",
                )
            )
    return needs


def check_data_requirements(hook: Any, samples: Iterable[Sample], run: RunContext) -> None:
    """Stop before encoding when the data needs a capability no chosen plugin provides."""
    model = run.model
    provided = provided_capabilities(hook, run)
    for capability, advice in data_needs(samples, run.args, model):
        if capability not in provided:
            raise UsageError(f"{model.name} model: {advice}")
