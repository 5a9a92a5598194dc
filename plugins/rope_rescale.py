"""rope_rescale: rotary positions that follow every batch, equal to inference, on all CogVideoX models.

* The rotary embedding is computed from the latent shape that reaches the transformer, in the
  mode chosen with ``--rope_mode`` (``cogvx_ext.model.rope`` defines the modes; ``pipeline``, the
  default, is bit-identical to what the diffusers pipelines compute at that shape). The mode is
  recorded with the saved LoRA, and ``cogvx_ext.inference.prepare_pipeline`` uses it again.
* CogVideoX 1.5 training gets what its pipelines do: an odd latent frame count is padded with
  one leading frame (cut off the output again, so it stays out of the loss), 1.5-I2V gets
  ``ofs = 2.0``, and 1.5-I2V image latents are brought to the pipeline's scale.
* ``--validation_resolutions`` runs validation at each listed size, not only at
  ``--height`` x ``--width``.

The entry point names the class; the loader makes one instance per run, so no state outlives it.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from cogvx_ext.api import ROPE_MODES, ModelInfo, UsageError, hookimpl, report_warning, rotary_embedding

# The value CogVideoX 1.5-I2V pipelines pass as ``ofs`` (THUDM trained with it).
PIPELINE_OFS = 2.0


def parse_resolutions(text: str, multiple: int = 16) -> list[tuple[int, int]]:
    """``"1024x576,576x1024"`` -> ``[(1024, 576), (576, 1024)]`` (width, height)."""
    sizes = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        width, sep, height = item.lower().partition("x")
        if not (sep and width.isdigit() and height.isdigit()):
            raise UsageError(f"--validation_resolutions: '{item}' is not WIDTHxHEIGHT (e.g. 1024x576)")
        size = (int(width), int(height))
        if size[0] % multiple or size[1] % multiple or 0 in size:
            raise UsageError(
                f"--validation_resolutions: {item} must have sides that are multiples of {multiple}"
            )
        sizes.append(size)
    return sizes


def trained_validation_sizes(samples: list[Any] | None) -> list[tuple[int, int]]:
    """The largest trained size of each orientation present (landscape, portrait, square), as
    (width, height); nothing when training used one size (the script's --height/--width do)."""
    sizes = {(s.target.width, s.target.height) for s in samples or ()}
    if len(sizes) < 2:
        return []
    largest: dict[str, tuple[int, int]] = {}
    for width, height in sorted(sizes, key=lambda wh: (wh[0] * wh[1], wh)):
        orientation = "landscape" if width > height else "portrait" if height > width else "square"
        largest[orientation] = (width, height)
    return [largest[o] for o in ("landscape", "portrait", "square") if o in largest]


class RopeRescale:
    """The plugin; one instance per run holds the run's settings."""

    def __init__(self) -> None:
        self.mode = "pipeline"
        self.validation_sizes: list[tuple[int, int]] = []
        self.vae_scaling_factor: float | None = None
        self.invert_scale_latents = False
        # Per transformer (by id): the padded hidden_states of the forward in flight and how many
        # frames were put in front, so the output hook cuts exactly what this plugin added.
        self._padded: dict[int, tuple[torch.Tensor, int]] = {}

    # ---- set-up ---------------------------------------------------------------------------

    @hookimpl
    def cogvx_add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("rope_rescale (cogvx-ext)")
        group.add_argument(
            "--rope_mode",
            choices=ROPE_MODES,
            default="pipeline",
            help="How rotary positions follow each batch's size: 'pipeline' (default) equals the diffusers "
            "pipeline at that size; 'extrapolate' (integer positions), 'interpolate' (squeezed into the "
            "model's base grid) and 'ntk' (frequency base raised) differ beyond the base grid. Recorded "
            "with the LoRA.",
        )
        group.add_argument(
            "--validation_resolutions",
            default=None,
            help="Comma list of WIDTHxHEIGHT (e.g. 1024x576,576x1024): run validation at each. Default "
            "with several trained shapes: the largest trained size of each orientation present.",
        )

    @hookimpl
    def cogvx_configure(self, args: argparse.Namespace) -> None:
        self._read_args(args)

    @hookimpl
    def cogvx_provides(self) -> list[str]:
        """``batch_rope`` and ``frame_padding``."""
        # frame_padding: odd 1.5 latent frame counts are padded in cogvx_transformer_forward.
        return ["batch_rope", "frame_padding"]

    @hookimpl
    def cogvx_requires(self, model: ModelInfo) -> list[tuple[str, str]]:
        """Nothing; on a model without RoPE (2b) it warns once that it does nothing in training."""
        if not model.rotary and not model.patch_size_t:
            # Not a stop: a fixed plugin list (the plan's default) may meet a 2b model.
            report_warning(
                f"rope_rescale does nothing in training for the {model.name} model (no RoPE: its sin-cos "
                "positions follow every batch's size by themselves); only its validation sizes apply "
                "(--validation_resolutions)"
            )
        return []

    def _read_args(self, args: argparse.Namespace) -> None:
        self.mode = getattr(args, "rope_mode", None) or "pipeline"
        if self.mode not in ROPE_MODES:
            raise UsageError(f"--rope_mode {self.mode}: choose one of {', '.join(ROPE_MODES)}")
        self.validation_sizes = parse_resolutions(getattr(args, "validation_resolutions", None) or "")

    @hookimpl
    def cogvx_vae_loaded(self, vae: torch.nn.Module) -> None:
        """Reads the VAE's scaling factor (CogVideoX 1.5 I2V image latents)."""
        self.vae_scaling_factor = float(vae.config.scaling_factor)
        self.invert_scale_latents = bool(getattr(vae.config, "invert_scale_latents", False))

    # ---- every forward --------------------------------------------------------------------

    @hookimpl
    def cogvx_transformer_forward(
        self, transformer: torch.nn.Module, inputs: dict[str, Any], model: ModelInfo
    ) -> None:
        """CogVideoX 1.5: pads an odd latent frame count, passes ``ofs``, scales I2V image latents."""
        if not model.patch_size_t:
            return  # 1.0 models take any frame count and have no ofs
        hidden_states = inputs["hidden_states"]
        if model.is_i2v and torch.is_grad_enabled():
            hidden_states = self._image_latents_to_pipeline_scale(hidden_states, model)
        pad = -hidden_states.shape[1] % model.patch_size_t
        if pad:
            hidden_states = self._pad_frames(hidden_states, pad, model)
            self._padded[id(transformer)] = (hidden_states, pad)
        inputs["hidden_states"] = hidden_states
        if model.ofs and inputs.get("ofs") is None:
            # The 1.5-I2V pipelines pass ofs = 2.0; the stock I2V script passes nothing and the
            # transformer then fails. One value per sample, in the latents' dtype, as the pipeline.
            inputs["ofs"] = hidden_states.new_full((hidden_states.shape[0],), PIPELINE_OFS)

    def _image_latents_to_pipeline_scale(self, hidden_states: torch.Tensor, model: ModelInfo) -> torch.Tensor:
        # The I2V script multiplies the image latents (channels C:2C) by scaling_factor, while the
        # 1.5-I2V pipeline, under the VAE's invert_scale_latents, multiplies them by
        # 1/scaling_factor: the model was trained that way, so training follows the pipeline and
        # rescales by 1/scaling_factor^2. Only training forwards (the pipelines run under no_grad
        # and already scale as intended).
        if self.vae_scaling_factor is None:
            raise RuntimeError(
                "rope_rescale: a 1.5-I2V training forward ran before the VAE was seen (cogvx_vae_loaded), "
                "so the image latents cannot be brought to the pipeline's scale"
            )
        if not self.invert_scale_latents:
            return hidden_states
        channels = model.out_channels
        video, image = hidden_states[:, :, :channels], hidden_states[:, :, channels:]
        return torch.cat([video, image / self.vae_scaling_factor**2], dim=2)

    @staticmethod
    def _pad_frames(hidden_states: torch.Tensor, pad: int, model: ModelInfo) -> torch.Tensor:
        # The 1.5 pipelines make the latent frame count even by generating `pad` extra latent frames
        # in front and dropping them at the end. Their I2V image latents are [image, zeros...]
        # over the padded length: the image sits with the padded frame and the zeros grow at the
        # end. Here the noisy video part gets a copy of its first frame in front (the closest
        # stand-in for the pipeline's extra frame) and an I2V image part gets zero frames at the
        # end, which gives exactly the pipeline's image layout for the script's [image, zeros].
        channels = model.out_channels if model.is_i2v else hidden_states.shape[2]
        video, image = hidden_states[:, :, :channels], hidden_states[:, :, channels:]
        video = torch.cat([video[:, :1].expand(-1, pad, -1, -1, -1), video], dim=1)
        if image.shape[2]:
            image = torch.cat([image, image.new_zeros(image.shape[0], pad, *image.shape[2:])], dim=1)
            return torch.cat([video, image], dim=2)
        return video

    @hookimpl
    def cogvx_rotary_embedding(
        self, model: ModelInfo, latent_shape: tuple[int, int, int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The embedding of ``--rope_mode`` at each batch's shape (equal to the pipeline's by default),
        cached per shape."""
        if not model.rotary:
            return None
        return rotary_embedding(model, latent_shape, device, mode=self.mode)

    @hookimpl
    def cogvx_transformer_output(
        self, transformer: torch.nn.Module, inputs: dict[str, Any], output: Any
    ) -> Any:
        """Cuts off the frame it padded, so the padded frame stays out of the loss."""
        padded = self._padded.pop(id(transformer), None)
        if padded is None or padded[0] is not inputs.get("hidden_states"):
            return None
        pad = padded[1]
        if isinstance(output, tuple):
            return (output[0][:, pad:], *output[1:])
        output["sample"] = output["sample"][:, pad:]
        return output

    # ---- validation, inference, saved LoRA ------------------------------------------------

    @hookimpl
    def cogvx_pipeline_loaded(self, pipe: Any, args: argparse.Namespace) -> None:
        """Its RoPE mode in the pipeline's own RoPE step."""
        # At inference (cogvx_ext.inference) no cogvx_configure fires: the recorded settings arrive here.
        self._read_args(args)
        # The pipeline computes its own RoPE before denoising, and the forward hook replaces it. In
        # the other modes the pipeline's own would be wasted work, and for 1.5 beyond 2400 px it
        # raises before any forward: let the pipeline ask this mode instead.
        pipe.__dict__.pop("_prepare_rotary_positional_embeddings", None)
        if self.mode == "pipeline" or not pipe.transformer.config.use_rotary_positional_embeddings:
            return
        model, mode, spatial = (
            ModelInfo.from_config(pipe.transformer.config),
            self.mode,
            pipe.vae_scale_factor_spatial,
        )

        def prepare_rotary_positional_embeddings(height, width, num_frames, device):
            latent_shape = (num_frames, height // spatial, width // spatial)
            return rotary_embedding(model, latent_shape, device, mode=mode)

        pipe._prepare_rotary_positional_embeddings = prepare_rotary_positional_embeddings

    @hookimpl
    def cogvx_validation_args(self, variants: list[dict[str, Any]], samples: list[Any] | None) -> None:
        """``--validation_resolutions``: by default the largest trained size of each orientation present."""
        sizes = self.validation_sizes or trained_validation_sizes(samples)
        if sizes:
            variants[:] = [
                {**v, "width": width, "height": height} for v in variants for width, height in sizes
            ]

    @hookimpl
    def cogvx_training_settings(self) -> dict[str, Any]:
        return {"rope_mode": self.mode}  # the positions the model learns

    @hookimpl
    def cogvx_lora_metadata(self) -> dict[str, Any]:
        """``rope_mode``."""
        return {"rope_mode": self.mode}
