"""Builders for testing plugins offline: tiny random CogVideoX models, real mp4 clips, datasets.

Nothing here downloads anything. A tiny model keeps every setting of the released checkpoint
that decides positions and shapes (sample size, patch sizes, rotary / learned / sin-cos
positions, I2V channel stacking, the 1.5 ``ofs`` embedding, the VAE's latent scaling) and
shrinks everything else, so a plugin that works on it meets the same shape rules as on the
real model. Building one takes about a second; see ``../shared/docs/cogvideox-facts.md``.

Clips are H.264 (yuv420p) mp4 files with moving content, decodable by decord.

``run_minimal_trainer(tiny_training_args(model, data, out) + ["--plugins", ...])`` trains with
cogvx-ext's minimal trainer (the diffusers script's seams, written for tests) in a fresh process,
offline, as a user's launch would: a plugin's end-to-end test in seconds on a CPU.

Clips are written with PyAV (a dependency); ``write_bad_clips`` also needs ``imageio-ffmpeg`` (the
``test`` extra) for its ffmpeg binary. Building the tokenizer needs transformers >= 5.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cogvx_ext.data.synthetic import DECORD_BAD_WIDTHS, write_bad_clips, write_clip, write_dataset
from cogvx_ext.model.tiny import (
    LATENT_CHANNELS,
    MODEL_KINDS,
    TIME_EMBED_DIM,
    build_tiny_model,
    model_dir_name,
    tiny_transformer_config,
)
from cogvx_ext.trainers import minimal_trainer

__all__ = [
    "DECORD_BAD_WIDTHS",
    "LATENT_CHANNELS",
    "MODEL_KINDS",
    "TIME_EMBED_DIM",
    "build_tiny_model",
    "minimal_trainer",
    "model_dir_name",
    "run_minimal_trainer",
    "tiny_training_args",
    "tiny_transformer_config",
    "write_bad_clips",
    "write_clip",
    "write_dataset",
]


def tiny_training_args(
    model: str | os.PathLike,
    data: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    width: int = 160,
    height: int = 96,
    frames: int = 9,
    steps: int = 2,
) -> list[str]:
    """The training script's flags for a short run of a tiny model (from ``build_tiny_model``) on a
    dataset folder (from ``write_dataset``): ``WIDTHxHEIGHT``, ``frames`` frames, ``steps`` optimizer
    steps, batch 1, LoRA rank 4. Add ``--plugins ...`` and your plugins' flags."""
    args = [
        "--pretrained_model_name_or_path", model, "--instance_data_root", data,
        "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--height", height, "--width", width, "--max_num_frames", frames, "--fps", 8,
        "--train_batch_size", 1, "--max_train_steps", steps, "--output_dir", output_dir, "--seed", 0,
        "--rank", 4, "--lora_alpha", 4, "--learning_rate", "1e-3",
    ]  # fmt: skip
    return [str(arg) for arg in args]


def run_minimal_trainer(
    args: list[str],
    *,
    kind: str = "t2v",
    script: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run the minimal trainer for ``kind`` (``t2v`` or ``i2v``; or ``script``, e.g. the diffusers
    script) with ``args`` in a fresh Python process, offline, and return what it did (``returncode``,
    ``stdout``, ``stderr`` as text). Checks nothing: assert on the result yourself. The caller's
    ``COGVX_EXT_*`` settings are left out, so only the plugins in ``args`` run."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    full_env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
    command = [sys.executable, str(Path(script) if script else minimal_trainer(kind)), *map(str, args)]
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=timeout)
