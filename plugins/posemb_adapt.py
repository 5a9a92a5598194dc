"""posemb_adapt: the 5b-I2V learned positional table at any size, in training and at inference.

CogVideoX 5b-I2V adds a learned table ``[1, 226 + 13*30*45, D]`` (``patch_embed.pos_embedding``)
after patchifying. diffusers' ``CogVideoXPatchEmbed.forward`` raises ``ValueError("It is
currently not possible to generate videos at a different resolution that the defaults...")``
for any latent height or width but the config's 60 x 90, in training and in the pipeline, and
at 60 x 90 with another frame count silently adds a sin-cos table instead.

This plugin takes the table's addition over, on the patch embedding itself: it switches the
patch embedding's own positional step off (its ``use_learned_positional_embeddings`` and
``use_positional_embeddings`` attributes, which only gate that step, so the check and the
sin-cos swap are skipped) and adds, from a forward hook on the patch embedding, the table
adapted to the batch's latent grid (``cogvx_ext.api.adapt_learned_posemb``, cached per shape).
At the default grid that is the table itself, so the sum is bit-identical to the stock forward.
Nothing else changes: the buffer is not touched (checkpoints stay as they were), and
``transformer.config.sample_height/width`` stay, because the pipelines read them as the RoPE
base. ``--posemb_mode drop`` leaves the table out instead.

The same is done to every pipeline's transformer (``cogvx_pipeline_loaded``), and the mode is
recorded with the LoRA so ``cogvx_ext.inference.prepare_pipeline`` repeats it.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from typing import Any

import torch

from cogvx_ext.api import ModelInfo, UsageError, adapt_learned_posemb, hookimpl

MODES = ("interpolate", "drop")
# Adapted tables kept per transformer, one per batch shape. Small on purpose: on the real model
# one entry at 1360x768x13 latents is ~330 MB in bfloat16, and rebuilding one is a single resize.
CACHE_SIZE = 4
_ATTR = "_cogvx_ext_posemb_adapter"


class LearnedPosembAdapter:
    """Makes one transformer's patch embedding add its learned table adapted to each batch's grid."""

    def __init__(self, transformer: torch.nn.Module, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown posemb mode {mode!r}; choose one of {', '.join(MODES)}")
        self.patch_embed = transformer.patch_embed
        self.model = ModelInfo.from_config(transformer.config)
        self.mode = mode
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._saved_flags = (
            self.patch_embed.use_positional_embeddings,
            self.patch_embed.use_learned_positional_embeddings,
        )
        self.patch_embed.use_positional_embeddings = False
        self.patch_embed.use_learned_positional_embeddings = False
        self._handle = None
        if mode == "interpolate":
            self._handle = self.patch_embed.register_forward_hook(self._add_table, with_kwargs=True)

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self.patch_embed.use_positional_embeddings, self.patch_embed.use_learned_positional_embeddings = (
            self._saved_flags
        )
        self._cache.clear()

    def table_for(self, latent_shape: tuple[int, int, int]) -> torch.Tensor:
        # The live buffer, so a later .to(device, dtype) of the model is followed; its data
        # pointer is in the key so a moved or reloaded table is never served from a stale entry.
        table = self.patch_embed.pos_embedding
        key = (latent_shape, table.device, table.dtype, table.data_ptr())
        adapted = self._cache.get(key)
        if adapted is None:
            text_len = self.patch_embed.max_text_seq_length
            adapted = adapt_learned_posemb(table, self.model, latent_shape, text_len)
            self._cache[key] = adapted
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return adapted

    def _add_table(
        self, module: torch.nn.Module, args: tuple, kwargs: dict, output: torch.Tensor
    ) -> torch.Tensor:
        # CogVideoXPatchEmbed.forward(text_embeds, image_embeds): image_embeds is [B, F, C, H, W].
        image_embeds = args[1] if len(args) > 1 else kwargs["image_embeds"]
        latent_shape = (int(image_embeds.shape[1]), int(image_embeds.shape[3]), int(image_embeds.shape[4]))
        table = self.table_for(latent_shape)
        if table.shape[1] != output.shape[1]:
            raise ValueError(
                f"posemb_adapt: the learned table has {table.shape[1]} rows for latent shape {latent_shape}, "
                f"the patch embedding made {output.shape[1]} tokens (text length must be "
                f"{self.patch_embed.max_text_seq_length})"
            )
        # As the stock forward does: embeds + pos_embedding.to(dtype=embeds.dtype).
        return output + table.to(dtype=output.dtype)


def install(transformer: torch.nn.Module, mode: str) -> LearnedPosembAdapter | None:
    """Adapt ``transformer``'s learned positional table per batch; None for models without one.

    Idempotent for one mode; a different mode replaces the previous adapter.
    """
    if not getattr(transformer.config, "use_learned_positional_embeddings", False):
        return None
    current = getattr(transformer, _ATTR, None)
    if current is not None:
        if current.mode == mode:
            return current
        current.remove()
    adapter = LearnedPosembAdapter(transformer, mode)
    setattr(transformer, _ATTR, adapter)
    return adapter


def uninstall(transformer: torch.nn.Module) -> None:
    adapter = getattr(transformer, _ATTR, None)
    if adapter is not None:
        adapter.remove()
        delattr(transformer, _ATTR)


class PosembAdapt:
    """The plugin; one instance per run holds the run's mode."""

    def __init__(self) -> None:
        self.mode = "interpolate"

    @hookimpl
    def cogvx_add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("posemb_adapt (cogvx-ext)")
        group.add_argument(
            "--posemb_mode",
            choices=MODES,
            default="interpolate",
            help="For models with a learned positional table (5b-I2V): 'interpolate' (default) resamples "
            "its video part to each batch's latent grid; 'drop' leaves the table out. Recorded with the LoRA.",
        )

    @hookimpl
    def cogvx_configure(self, args: argparse.Namespace) -> None:
        self._read_args(args)

    def _read_args(self, args: argparse.Namespace) -> None:
        self.mode = getattr(args, "posemb_mode", None) or "interpolate"
        if self.mode not in MODES:
            raise UsageError(f"--posemb_mode {self.mode}: choose one of {', '.join(MODES)}")

    @hookimpl
    def cogvx_provides(self) -> list[str]:
        """``learned_posemb``."""
        return ["learned_posemb"]

    @hookimpl
    def cogvx_transformer_loaded(self, transformer: torch.nn.Module) -> None:
        """Keeps the learned positional table, to adapt it to each batch's shape."""
        install(transformer, self.mode)

    @hookimpl
    def cogvx_pipeline_loaded(self, pipe: Any, args: argparse.Namespace) -> None:
        """The learned table at other sizes in the pipeline too."""
        # At inference (cogvx_ext.inference) no cogvx_configure fires: the recorded settings arrive here.
        self._read_args(args)
        install(pipe.transformer, self.mode)

    @hookimpl
    def cogvx_training_settings(self) -> dict[str, Any]:
        return {"posemb_mode": self.mode}  # the positional table the model trains with

    @hookimpl
    def cogvx_lora_metadata(self) -> dict[str, Any]:
        """``posemb_mode``."""
        return {"posemb_mode": self.mode}
