"""snr_shift: a noise schedule that follows each batch's size (opt-in).

CogVideoX shifts its noise schedule by one fixed ``snr_shift_scale`` (2b: 3.0; 5b, 5b-I2V and 1.5:
1.0), chosen for the size it was trained at. The same noise level destroys much less of a large
sample than of a small one (neighbouring latents are redundant, so more of them survive), and with
buckets a run's token count varies several-fold. This plugin gives each batch the shift

    s_b = s0 * clamp((N_b / N_ref) ** gamma, min, max)

with ``s0`` the model's own shift (its scheduler config), ``N_b`` the batch's video tokens, ``N_ref``
the tokens at the model's native size (5b: 720x480x49 -> 13x30x45 = 17,550; 1.5: 1360x768x81 ->
44,880) or ``--snr_shift_reference``, and ``gamma`` ``--snr_shift_gamma`` (1: the shift grows with
the token count, as SimpleTuner's and LTX-Video's trainers do from tokens; SD3's rule is the
square root of the pixel ratio, ``gamma`` 0.5). A larger shift means noisier samples at every
timestep. The scheduler then uses exactly the schedule of a CogVideoX scheduler built with
``s_b``, for the noise, the velocity target and the loss weight, at validation, and in
``cogvx_ext.inference.prepare_pipeline`` / ``cogvx-ext generate`` at the size asked for (the
rule is recorded in ``cogvx_ext.json``, with the shift each trained shape got).

The default clamp, a factor of 1/4 to 4 around ``s0``, keeps every bucket's log-SNR within
log 4 ~ 1.4 of the schedule the model was trained with: about as far as SD3 moved its schedule
between its 256 px and 1024 px training (shift 3.0), and wide enough that every size from a
quarter to four times the native token count (5b: 512x288x49 to 1440x816x49) gets its own shift
unclamped. Beyond it a rule fitted between two sizes is extrapolated far outside anything tried.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from cogvx_ext.api import ModelInfo, UsageError, hookimpl

DEFAULT_MIN_FACTOR = 0.25
DEFAULT_MAX_FACTOR = 4.0


def parse_reference(text: str) -> tuple[int, int, int]:
    """``"720x480x49"`` -> ``(720, 480, 49)`` (width, height, frames)."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"--snr_shift_reference {text}: give WIDTHxHEIGHTxFRAMES (e.g. 720x480x49)")
    width, height, frames = map(int, parts)
    return width, height, frames


def shape_label(model: ModelInfo, latent_shape: tuple[int, int, int]) -> str:
    """The pixel size of a latent shape, WIDTHxHEIGHTxFRAMES (frames as the VAE decodes them)."""
    frames, height, width = latent_shape
    return f"{width * 8}x{height * 8}x{(frames - 1) * model.temporal_compression_ratio + 1}"


class SnrShift:
    """The plugin; one instance per run holds the run's settings and the shifts it gave."""

    def __init__(self) -> None:
        self.gamma = 1.0
        self.min_factor = DEFAULT_MIN_FACTOR
        self.max_factor = DEFAULT_MAX_FACTOR
        self.reference: tuple[int, int, int] | None = None
        self._shifts: dict[tuple[Any, ...], float] = {}
        self.trained: dict[str, float] = {}  # WIDTHxHEIGHTxFRAMES -> shift, in the order first trained
        self._last_trained: float | None = None

    @hookimpl
    def cogvx_add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(
            "snr_shift (cogvx-ext)", "each batch's SNR shift from its token count: s0 * (N / N_ref) ** gamma"
        )
        group.add_argument(
            "--snr_shift_gamma",
            type=float,
            default=1.0,
            help="exponent of the token ratio (default 1: the shift grows with the tokens; 0.5 is SD3's "
            "square-root rule; 0 keeps the model's own shift)",
        )
        group.add_argument(
            "--snr_shift_min",
            type=float,
            default=DEFAULT_MIN_FACTOR,
            help=f"smallest shift as a factor of the model's own (default {DEFAULT_MIN_FACTOR:g})",
        )
        group.add_argument(
            "--snr_shift_max",
            type=float,
            default=DEFAULT_MAX_FACTOR,
            help=f"largest shift as a factor of the model's own (default {DEFAULT_MAX_FACTOR:g})",
        )
        group.add_argument(
            "--snr_shift_reference",
            default=None,
            metavar="WIDTHxHEIGHTxFRAMES",
            help="the size that keeps the model's own shift (default: the model's native size, 720x480x49 "
            "for CogVideoX 1.0, 1360x768x81 for 1.5)",
        )

    @hookimpl
    def cogvx_configure(self, args: argparse.Namespace) -> None:
        self._read(args)

    def _read(self, args: argparse.Namespace) -> None:
        self.gamma = float(getattr(args, "snr_shift_gamma", 1.0))
        self.min_factor = float(getattr(args, "snr_shift_min", DEFAULT_MIN_FACTOR))
        self.max_factor = float(getattr(args, "snr_shift_max", DEFAULT_MAX_FACTOR))
        if self.gamma < 0:
            raise UsageError(
                f"--snr_shift_gamma {self.gamma:g}: give 0 or more (larger samples, larger shift)"
            )
        if not 0 < self.min_factor <= 1 <= self.max_factor:
            raise UsageError(
                f"--snr_shift_min {self.min_factor:g} / --snr_shift_max {self.max_factor:g}: "
                "give 0 < min <= 1 <= max (factors of the model's own shift)"
            )
        reference = getattr(args, "snr_shift_reference", None)
        self.reference = parse_reference(reference) if reference else None
        self._shifts.clear()

    def reference_size(self, model: ModelInfo) -> tuple[int, int, int]:
        return self.reference or model.native_size

    def reference_tokens(self, model: ModelInfo) -> int:
        width, height, frames = self.reference_size(model)
        return model.tokens(model.latent_shape(frames, height, width))

    @hookimpl
    def cogvx_snr_shift(
        self, model: ModelInfo | None, latent_shape: tuple[int, int, int], shift: float, run
    ) -> float | None:
        """``s0 * clamp((N / N_ref) ** gamma, min, max)``; the first shift of each trained shape is
        printed, and recorded with the LoRA."""
        if model is None:
            return None  # no model known: nothing to measure the tokens by
        key = (model, latent_shape, shift)
        if key not in self._shifts:
            factor = (model.tokens(latent_shape) / self.reference_tokens(model)) ** self.gamma
            self._shifts[key] = shift * min(max(factor, self.min_factor), self.max_factor)
        answer = self._shifts[key]
        if run.command == "train" and torch.is_grad_enabled():  # a training step, not validation
            self._last_trained = answer
            label = shape_label(model, latent_shape)
            if label not in self.trained:
                self.trained[label] = answer
                if run.is_main_process:
                    self._say(model, latent_shape, label, shift, answer)
        return answer

    def _say(self, model, latent_shape, label, shift, answer) -> None:
        from tqdm.auto import tqdm

        width, height, frames = self.reference_size(model)
        tqdm.write(
            f"cogvx-ext: snr_shift: {label} ({model.tokens(latent_shape)} tokens) trains with SNR shift "
            f"{answer:.4g} (the model's {shift:g} at {width}x{height}x{frames}, "
            f"{self.reference_tokens(model)} tokens)",
            file=sys.stderr,
        )

    @hookimpl
    def cogvx_step_end(self, logs: dict[str, Any]) -> None:
        if self._last_trained is not None:
            logs["snr_shift"] = self._last_trained  # the batch's, beside its loss

    @hookimpl
    def cogvx_pipeline_loaded(self, args: argparse.Namespace) -> None:
        # At inference (cogvx_ext.inference) no cogvx_configure fires: the recorded settings arrive here.
        self._read(args)

    def _settings(self) -> dict[str, Any]:
        reference = self.reference
        return {
            "snr_shift_gamma": self.gamma,
            "snr_shift_min": self.min_factor,
            "snr_shift_max": self.max_factor,
            "snr_shift_reference": "x".join(map(str, reference)) if reference else None,
        }

    @hookimpl
    def cogvx_training_settings(self) -> dict[str, Any]:
        return self._settings()  # the noise schedule the model learns

    @hookimpl
    def cogvx_lora_metadata(self) -> dict[str, Any]:
        """The rule, and the shift each trained shape got (``snr_shifts``, WIDTHxHEIGHTxFRAMES)."""
        return {**self._settings(), "snr_shifts": dict(self.trained)}
