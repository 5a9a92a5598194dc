"""The estimate of a step's peak, term by term; the largest batch that fits a budget; advice when none does."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cogvx_ext.model.facts import VAE_SPATIAL
from cogvx_ext.model.memory.resident import (
    optimizer_state_bytes,
    text_encoder_bytes,
    transformer_bytes,
    vae_bytes,
)
from cogvx_ext.model.memory.setup import DEFAULT_MARGIN, TrainingSetup
from cogvx_ext.model.memory.trace import (
    _FIRST_DEPTH,
    _extrapolate,
    activation_peak,
    step_activation_peak,
    vae_decode_peak,
    validation_latent,
)
from cogvx_ext.model.memory.units import format_bytes


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak allocated accelerator memory of one training step, by term (bytes)."""

    latent: tuple[int, int, int]
    batch_size: int
    terms: dict[str, int] = field(hash=False)
    validation_terms: dict[str, int] | None = field(default=None, hash=False)

    @property
    def train_peak(self) -> int:
        return sum(self.terms.values())

    @property
    def validation_peak(self) -> int | None:
        return None if self.validation_terms is None else sum(self.validation_terms.values())

    @property
    def peak(self) -> int:
        return max(self.train_peak, self.validation_peak or 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "peak_bytes": self.peak,
            "train_peak_bytes": self.train_peak,
            "validation_peak_bytes": self.validation_peak,
            "terms": dict(self.terms),
            "validation_terms": None if self.validation_terms is None else dict(self.validation_terms),
        }


TERM_LABELS = {
    "transformer": "transformer weights (frozen)",
    "lora": "LoRA weights",
    "lora_grads": "LoRA gradients",
    "optimizer": "optimizer states",
    "text_encoder": "text encoder weights",
    "vae": "VAE weights",
    "activations": "step peak: batch, activations, optimizer temporaries",
    "validation_vae": "validation pipeline's own VAE",
    "inference": "validation peak: transformer (CFG batch 2) or VAE decode",
}


@functools.lru_cache(maxsize=64)
def _validation_terms(setup: TrainingSetup) -> dict[str, int] | None:
    latent = validation_latent(setup)
    if latent is None:
        return None
    weights = transformer_bytes(setup)
    states, _ = optimizer_state_bytes(setup, weights)
    inference = _extrapolate(
        lambda n: step_activation_peak(setup, latent, 2, n, train=False), setup.num_layers, _FIRST_DEPTH
    )
    decode = vae_decode_peak(setup, latent)
    return {
        "transformer": weights.base,
        "lora": weights.lora,
        "optimizer": states,
        "text_encoder": text_encoder_bytes(setup),  # the pipeline moves it to the device
        "vae": vae_bytes(setup) if setup.vae_on_device else 0,
        "validation_vae": vae_bytes(setup),
        "inference": max(inference, decode),
    }


def estimate(setup: TrainingSetup, latent: tuple[int, int, int], batch_size: int = 1) -> MemoryEstimate:
    """The estimate for one batch of ``batch_size`` samples of latent shape ``(frames, h, w)``."""
    weights = transformer_bytes(setup)
    states, step_temporaries = optimizer_state_bytes(setup, weights)
    activations = _extrapolate(lambda b: activation_peak(setup, latent, b), batch_size)
    terms = {
        "transformer": weights.base,
        "lora": weights.lora,
        "lora_grads": weights.lora,
        "optimizer": states,
        "text_encoder": text_encoder_bytes(setup) if setup.text_encoder_on_device else 0,
        "vae": vae_bytes(setup) if setup.vae_on_device else 0,
        "activations": max(activations, step_temporaries),
    }
    return MemoryEstimate(tuple(latent), int(batch_size), terms, _validation_terms(setup))


def largest_batch(
    setup: TrainingSetup,
    latent: tuple[int, int, int],
    budget: int,
    margin: float = DEFAULT_MARGIN,
    limit: int = 256,
) -> int:
    """The largest batch whose estimated peak stays within ``budget x (1 - margin)``; 0 if none."""
    allowed = budget * (1 - margin)
    if estimate(setup, latent, 1).peak > allowed:
        return 0
    one, two = estimate(setup, latent, 1), estimate(setup, latent, 2)
    per_sample = max(1, two.train_peak - one.train_peak)
    fixed = one.train_peak - per_sample
    size = max(1, min(limit, int((allowed - fixed) // per_sample)))
    return size


def _largest_fitting(candidates: list, fits: Callable[[Any], bool]) -> Any:
    """The first of ``candidates`` (largest first, memory falling along the list) that fits, by
    binary search; None when none does."""
    low, high = 0, len(candidates)
    while low < high:
        middle = (low + high) // 2
        if fits(candidates[middle]):
            high = middle
        else:
            low = middle + 1
    return candidates[low] if low < len(candidates) else None


@dataclass(frozen=True)
class Run:
    """One step as a run makes it: the setup, the latent shape, the batch size."""

    setup: TrainingSetup
    latent: tuple[int, int, int]
    batch_size: int = 1

    @property
    def peak(self) -> int:
        return estimate(self.setup, self.latent, self.batch_size).peak


@dataclass(frozen=True)
class Change:
    """What would make a step fit: the changes, cheapest first, and the step they make."""

    steps: tuple[str, ...]  # each one a flag or plugin as the user writes it
    run: Run

    @property
    def peak(self) -> int:
        return self.run.peak

    def describe(self) -> str:
        steps = list(self.steps)
        if len(steps) < 2:
            return steps[0] if steps else "no change"
        return ", ".join(steps[:-1]) + " and " + steps[-1]


LATENT_CACHE = "latent_cache in --plugins (the text encoder leaves the device)"
NO_VALIDATION = "no --validation_prompt (the validation pipeline is the peak)"
SMALLER_BATCH = "--train_batch_size 1"


def _cheap_changes(run: Run) -> list[tuple[str, Callable[[Run], Run]]]:
    """The changes that keep what is trained, in the order of what they cost the run: none
    (latent_cache is faster), samples per step made up by accumulation, the optimizer's precision,
    recomputation (about a third more time per step), validation."""
    setup = run.setup
    found = []
    if setup.text_encoder_on_device:
        found.append(
            (LATENT_CACHE, lambda r: replace(r, setup=replace(r.setup, text_encoder_on_device=False)))
        )
    if run.batch_size > 1:
        found.append((SMALLER_BATCH, lambda r: replace(r, batch_size=1)))
    if setup.optimizer in ("adam", "adamw") and not setup.use_8bit_adam:
        found.append(("--use_8bit_adam", lambda r: replace(r, setup=replace(r.setup, use_8bit_adam=True))))
    if not setup.gradient_checkpointing:
        found.append(
            (
                "--gradient_checkpointing",
                lambda r: replace(r, setup=replace(r.setup, gradient_checkpointing=True)),
            )
        )
    if setup.validation is not None:
        found.append((NO_VALIDATION, lambda r: replace(r, setup=replace(r.setup, validation=None))))
    return found


def fitting_frames(run: Run, allowed: int) -> int | None:
    """The most pixel frames (fewer than the run's) at which the step fits; None if none does."""
    model = run.setup.model
    frames, height, width = run.latent
    top = (frames - 1) * model.temporal_compression_ratio + 1
    counts = [n for n in range(top - 1, 4, -1) if model.valid_frame_count(n)]
    return _largest_fitting(
        counts,
        lambda n: (
            replace(run, latent=model.latent_shape(n, height * VAE_SPATIAL, width * VAE_SPATIAL)).peak
            <= allowed
        ),
    )


_SCALES = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25)


def scaled_side(side: int, scale: float, multiple: int) -> int:
    """A side of a picture with ``scale`` of the area, down to a multiple of ``multiple``."""
    return max(multiple, int(side * math.sqrt(scale)) // multiple * multiple)


def fitting_scale(run: Run, allowed: int) -> float | None:
    """The largest fraction of the picture's area (from 0.9 down to 0.25) at which the step fits."""
    frames, height, width = run.latent

    def shrunk(scale: float) -> Run:
        return replace(run, latent=(frames, scaled_side(height, scale, 2), scaled_side(width, scale, 2)))

    return _largest_fitting(list(_SCALES), lambda scale: shrunk(scale).peak <= allowed)


def fitting_change(
    run: Run, allowed: int, size: tuple[int, int] | None = None
) -> tuple[Change | None, Change | None]:
    """The cheapest changes that bring a step's estimated peak within ``allowed`` bytes, each one
    estimated, not guessed: ``(change, other)``. ``change`` is one change that keeps what is
    trained when one suffices (the first in ``_cheap_changes``' order: the largest smaller batch
    that fits for a smaller batch), else the fewest of them that fit together, else the fewest of
    them with the most frames that fit; ``other`` is then the same with a smaller area instead of
    fewer frames. ``size``: the run's ``(width, height)`` (``--width``, ``--height``), to word an
    area change as those flags; else the bucket's.
    ``(None, None)`` when nothing here makes it fit."""
    if run.peak <= allowed:
        return Change((), run), None
    cheap = _cheap_changes(run)
    for label, apply in cheap:
        if label == SMALLER_BATCH:
            # The largest batch that fits, not 1: fewer samples per step is this change's cost.
            batch = largest_batch(run.setup, run.latent, allowed, margin=0.0, limit=run.batch_size - 1)
            if batch >= 1:
                return Change((f"--train_batch_size {batch}",), replace(run, batch_size=batch)), None
            continue
        changed = apply(run)
        if changed.peak <= allowed:
            return Change((label,), changed), None
    together = _apply(run, cheap)
    if cheap and together.peak <= allowed:
        return Change(*_needed(run, cheap, lambda r: r, allowed)), None
    found = []
    frames = fitting_frames(together, allowed)
    if frames is not None:
        model = together.setup.model

        def fewer_frames(r: Run) -> Run:
            _, height, width = r.latent
            return replace(r, latent=model.latent_shape(frames, height * VAE_SPATIAL, width * VAE_SPATIAL))

        steps, changed = _needed(run, cheap, fewer_frames, allowed)
        found.append(Change((*steps, f"--max_num_frames {frames}"), changed))
    scale = fitting_scale(together, allowed)
    if scale is not None:

        def smaller_area(r: Run) -> Run:
            f, height, width = r.latent
            return replace(r, latent=(f, scaled_side(height, scale, 2), scaled_side(width, scale, 2)))

        steps, changed = _needed(run, cheap, smaller_area, allowed)
        if size is not None:
            w, h = scaled_side(size[0], scale, 16), scaled_side(size[1], scale, 16)
            words = f"--width {w} --height {h} ({scale:.0%} of the area)"
        else:
            _, height, width = changed.latent
            words = (
                f"an area of at most {width * VAE_SPATIAL}x{height * VAE_SPATIAL} ({scale:.0%} of the pixels)"
            )
        found.append(Change((*steps, words), changed))
    first, second = (found + [None, None])[:2]
    return first, second


def _needed(
    run: Run, cheap: list[tuple[str, Callable[[Run], Run]]], last: Callable[[Run], Run], allowed: int
) -> tuple[tuple[str, ...], Run]:
    """The cheap changes that ``last`` still needs, all of them applied, to fit: each left out in
    turn, dearest first, while the rest fits without it."""
    kept = list(cheap)
    for item in reversed(cheap):
        rest = [c for c in kept if c is not item]
        if last(_apply(run, rest)).peak <= allowed:
            kept = rest
    return tuple(label for label, _ in kept), last(_apply(run, kept))


def _apply(run: Run, changes: list[tuple[str, Callable[[Run], Run]]]) -> Run:
    for _, apply in changes:
        run = apply(run)
    return run


def advice(
    setup: TrainingSetup,
    latent: tuple[int, int, int],
    budget: int,
    margin: float = DEFAULT_MARGIN,
    size: tuple[int, int] | None = None,
) -> str:
    """What would make one sample of this shape fit the budget (``fitting_change``), in words."""
    change, other = fitting_change(Run(setup, tuple(latent), 1), int(budget * (1 - margin)), size)
    if change is None:
        return "a smaller model or a larger budget"
    words = f"{change.describe()}: {format_bytes(change.peak)}"
    if other is not None:
        words += f"; or with {other.describe()}: {format_bytes(other.peak)}"
    return words
