"""Builders for testing plugins offline: tiny random CogVideoX models, real mp4 clips, datasets.

Nothing here downloads anything. A tiny model keeps every setting of the released checkpoint
that decides positions and shapes (sample size, patch sizes, rotary / learned / sin-cos
positions, I2V channel stacking, the 1.5 ``ofs`` embedding, the VAE's latent scaling) and
shrinks everything else, so a plugin that works on it meets the same shape rules as on the
real model. Building one takes about a second; see ``../shared/docs/cogvideox-facts.md``.

Clips are H.264 (yuv420p) mp4 files with moving content, decodable by decord.

Clips are written with PyAV (a dependency); ``write_bad_clips`` also needs ``imageio-ffmpeg`` (the
``test`` extra) for its ffmpeg binary. Building the tokenizer needs transformers >= 5.
"""

from cogvx_ext.data.synthetic import DECORD_BAD_WIDTHS, write_bad_clips, write_clip, write_dataset
from cogvx_ext.model.tiny import (
    LATENT_CHANNELS,
    MODEL_KINDS,
    TIME_EMBED_DIM,
    build_tiny_model,
    model_dir_name,
    tiny_transformer_config,
)

__all__ = [
    "DECORD_BAD_WIDTHS",
    "LATENT_CHANNELS",
    "MODEL_KINDS",
    "TIME_EMBED_DIM",
    "build_tiny_model",
    "model_dir_name",
    "tiny_transformer_config",
    "write_bad_clips",
    "write_clip",
    "write_dataset",
]
