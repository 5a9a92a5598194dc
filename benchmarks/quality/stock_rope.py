"""Arm (c) of the quality benchmark: aspect buckets with the stock script's rotary positions.

The stock script computes its rotary embedding once from ``--height``/``--width``. With buckets a
batch of another token count then fails in ``apply_rotary_emb``; the naive way past that error is
to stretch the stock table over the batch's grid (resample the positions, as one resizes a
learned table): every batch gets the position range of the ``--height x --width`` grid, spread
over its own rows and columns. That is what this plugin gives, whatever the batch's aspect, so
a 256x144 batch and a 144x256 batch see the same 3:2 position region. Inference uses the
pipeline's positions (fitted to each shape's aspect), so training and inference disagree, most
for portrait shapes.

(Calling the script's own function at the batch's height and width instead would give exactly
the pipeline's positions for CogVideoX-5b, whose config has the script's hard-coded 480x720 base:
that is arm (b). For 1.5 models it would not.)

It declares ``batch_rope`` only so that aspect_bucket accepts the run: it is a test plugin, not
a fix.
"""

from __future__ import annotations

import argparse

import torch
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

from cogvx_ext import hookimpl
from cogvx_ext.model.facts import VAE_SPATIAL, ModelInfo


class StockRope:
    def __init__(self) -> None:
        self.stock_size: tuple[int, int] | None = None  # (--height, --width)

    @hookimpl
    def cogvx_configure(self, args: argparse.Namespace) -> None:
        self.stock_size = (args.height, args.width)

    @hookimpl
    def cogvx_provides(self) -> list[str]:
        return ["batch_rope"]

    @hookimpl
    def cogvx_rotary_embedding(
        self, model: ModelInfo, latent_shape: tuple[int, int, int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not model.rotary:
            return None
        return stretched_stock_rope(model, self.stock_size, latent_shape, device)


def stretched_stock_rope(
    model: ModelInfo, stock_size: tuple[int, int], latent_shape: tuple[int, int, int], device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The stock ``height x width`` grid's position region (as the script fits it into the base),
    spread over the batch's token grid (``latent_shape`` = frames, height, width in latents)."""
    pixels_per_token = VAE_SPATIAL * model.patch_size
    stock_grid = (stock_size[0] // pixels_per_token, stock_size[1] // pixels_per_token)
    # The script's own fit, with its hard-coded 480x720 base (= the 5b config's 60x90 latents).
    region = get_resize_crop_region_for_grid(stock_grid, 720 // pixels_per_token, 480 // pixels_per_token)
    frames, height, width = latent_shape
    cos, sin = get_3d_rotary_pos_embed(
        embed_dim=model.attention_head_dim,
        crops_coords=region,
        grid_size=(height // model.patch_size, width // model.patch_size),
        temporal_size=frames,
        device=device,
    )
    return cos, sin
