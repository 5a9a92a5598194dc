"""Which GPU a run needs: the estimate as *reserved* memory, and a verdict for common cards.

The estimate is allocated memory (``max_memory_allocated``). What a card must hold is more: the
caching allocator keeps freed blocks (``max_memory_reserved``), and the CUDA context and kernel
images sit outside PyTorch's counters. Reserved is taken as allocated x ``RESERVE_FACTOR`` +
``CUDA_CONTEXT``:

* ``RESERVE_FACTOR`` = 20.7 / 17.92: finetrainers publishes its CogVideoX-5b LoRA at 720x480x49
  (rank 128, batch 1, gradient checkpointing, AdamW, everything precomputed) at 20.7 GiB reserved
  at the peak; this estimate gives that configuration 17.92 GiB allocated (README, "How close").
  PyTorch's own guidance puts reserved 5-20 % above allocated; +15.5 % sits inside it.
* ``CUDA_CONTEXT``: 0.5 GiB, the middle of the 0.3-0.6 GiB a CUDA 12 context with PyTorch's
  kernels takes, depending on the card and the libraries loaded.

A card *fits* a run when its reserved estimate stays 10 % under the card's memory (the estimate
was 7.5 % under the published figure for the diffusers script); within those 10 % it is *tight*;
above, it *does not fit*, and the cheapest change that brings the run under the 10 % line is
named (``estimate.fitting_change``: every candidate estimated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cogvx_ext.model.memory.estimate import Change, Run, fitting_change, largest_batch
from cogvx_ext.model.memory.units import GiB, format_bytes

RESERVE_FACTOR = 20.7 / 17.92
CUDA_CONTEXT = GiB // 2
RESERVE_SOURCE = (
    "x 1.155 for the allocator's reserve (finetrainers' CogVideoX-5b LoRA at 720x480x49: 20.7 GiB "
    "reserved, 17.92 GiB allocated by this estimate) + 0.5 GiB CUDA context"
)
HEADROOM = 0.10

MiB = 2**20
# Card sizes as sold (GB) and the memory nvidia-smi reports for a card of that size.
CARDS: tuple[tuple[int, int, str], ...] = (
    (24, 24564 * MiB, "RTX 4090"),
    (40, 40960 * MiB, "A100 40GB"),
    (48, 49140 * MiB, "RTX A6000"),
    (80, 81559 * MiB, "H100 80GB"),
    (141, 143771 * MiB, "H200"),
)


def reserved_bytes(allocated: int) -> int:
    """The reserved memory (and the CUDA context) a card must hold for an allocated peak."""
    return math.ceil(allocated * RESERVE_FACTOR) + CUDA_CONTEXT


def allocated_within(card: int, headroom: float = HEADROOM) -> int:
    """The allocated peak whose reserved estimate stays ``headroom`` under ``card`` bytes."""
    return max(0, int((card * (1 - headroom) - CUDA_CONTEXT) / RESERVE_FACTOR))


@dataclass(frozen=True)
class CardVerdict:
    gb: int
    card_bytes: int
    name: str
    verdict: str  # "fits", "tight" or "does not fit"
    reserved: int  # the run as planned
    max_batch: int | None  # fits: the largest batch of the plan's largest shape that fits
    change: Change | None = None  # does not fit: the cheapest change that makes it fit
    other: Change | None = None  # the same with a smaller area instead of fewer frames

    def text(self) -> str:
        share = f"{format_bytes(self.reserved)} of {format_bytes(self.card_bytes)}"
        if self.verdict == "fits":
            return f"fits ({share}), batch up to {self.max_batch}"
        if self.verdict == "tight":
            return f"tight ({share}: within {HEADROOM:.0%} of the card)"
        if self.change is None:
            return f"does not fit ({share}), nor with any change tried here"
        words = f"does not fit ({share}); fits with {self.change.describe()} ({_reserved_text(self.change)})"
        if self.other is not None:
            words += f", or {self.other.describe()} ({_reserved_text(self.other)})"
        return words

    def to_json(self) -> dict[str, Any]:
        def change(found: Change | None) -> dict[str, Any] | None:
            if found is None:
                return None
            return {"changes": list(found.steps), "reserved_bytes": reserved_bytes(found.peak)}

        return {
            "card_bytes": self.card_bytes,
            "card": self.name,
            "verdict": self.verdict,
            "reserved_bytes": self.reserved,
            "max_batch": self.max_batch,
            "change": change(self.change),
            "other_change": change(self.other),
            "text": self.text(),
        }


def _reserved_text(change: Change) -> str:
    return f"{format_bytes(reserved_bytes(change.peak))} reserved"


def card_verdicts(planned: list[Run], size: tuple[int, int] | None = None, cards=CARDS) -> list[CardVerdict]:
    """A verdict per card for the run's planned steps (each shape at its batch size).

    ``size``: ``(--width, --height)``, to word an area change as those flags."""
    if not planned:
        return []
    largest = max(planned, key=lambda run: (run.peak, run.setup.model.tokens(run.latent)))
    # The shape whose samples cost the most decides how large every batch may be.
    widest = max(planned, key=lambda run: (run.setup.model.tokens(run.latent), run.peak))
    reserved = reserved_bytes(largest.peak)
    verdicts = []
    for gb, card, name in cards:
        allowed = allocated_within(card)
        if reserved <= card * (1 - HEADROOM):
            size_ok = largest_batch(widest.setup, widest.latent, allowed, margin=0.0)
            verdicts.append(CardVerdict(gb, card, name, "fits", reserved, max(1, size_ok)))
        elif reserved <= card:
            verdicts.append(CardVerdict(gb, card, name, "tight", reserved, None))
        else:
            change, other = fitting_change(largest, allowed, size)
            verdicts.append(CardVerdict(gb, card, name, "does not fit", reserved, None, change, other))
    return verdicts


def encode_note(encoding, card: int, latent_cache: bool, tiling_on: bool) -> tuple[str, str | None]:
    """``(verdict, words)`` for encoding the clips on a card of ``card`` bytes (``encoding``: an
    ``encoding.EncodeEstimate`` of the largest picture, with its tiled figure when tiling matters).

    The scripts encode at the start with every model loaded; latent_cache turns VAE tiling on by
    itself where the encode would not fit, and ``cogvx-ext cache fill`` encodes with the VAE alone."""
    line = card * (1 - HEADROOM)

    def at_start(activations: int | None) -> bool:
        return activations is not None and reserved_bytes(encoding.models_at_start + activations) <= line

    def alone(activations: int | None) -> bool:
        return activations is not None and reserved_bytes(encoding.vae + activations) <= line

    untiled, tiled = encoding.activations, encoding.tiled_activations
    if at_start(tiled if tiling_on else untiled):
        return "fits", None
    if at_start(tiled):
        if latent_cache:
            return "tiling", "encoding: VAE tiling, which latent_cache turns on by itself"
        return "needs tiling", "encoding at start needs --enable_tiling (or latent_cache, which turns it on)"
    if alone(untiled) or alone(tiled):
        fill = (
            "cogvx-ext cache fill (the VAE alone)"
            if latent_cache
            else "latent_cache and cogvx-ext cache fill"
        )
        return "cache fill first", f"encoding at start does not fit with the models loaded: {fill} first"
    return "does not fit", "encoding does not fit even tiled"
