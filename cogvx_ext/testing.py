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

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cogvx_ext.model.facts import RELEASED

MODEL_KINDS = ("2b", "5b", "5b-I2V", "1.5-5B", "1.5-5B-I2V")

LATENT_CHANNELS = 4  # 16 in the released VAEs
TIME_EMBED_DIM = 8  # 512 released; the 1.5-I2V ofs embedding must have the same width

# The 2b checkpoint ships its VAE with a different latent scale from every 5B one.
_VAE_SCALING_FACTOR = {"2b": 1.15258426}
_DEFAULT_VAE_SCALING_FACTOR = 0.7

# decord 0.6 cannot return frames of these widths (ndarray "Check failed: from_size"), whatever
# the height, whether the file has that width or decord resizes to it. Probed over even widths
# 2..398; every other even width decoded.
DECORD_BAD_WIDTHS = frozenset({2, 4, 6, 8, 12, 16, 24, 48, 72})

# Enough pieces that any lower-case English prompt tokenizes (unknown letters become <unk>).
_TOKENIZER_WORDS = (
    "a an the of in on at and with to from is are by over under into near its his her their "
    "cat dog bird fish car ball man woman person child tree house road river sea sky city "
    "red green blue yellow white black orange purple bright dark big small "
    "moving runs walks flies swims jumps drives rolls turns falls rises slowly quickly "
    "video clip scene frame camera light shadow square circle gradient background"
).split()


def _is_i2v(kind: str) -> bool:
    return kind.endswith("I2V")


def _check_kind(kind: str) -> None:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")


def tiny_transformer_config(kind: str) -> dict[str, Any]:
    """Keyword arguments for a tiny ``CogVideoXTransformer3DModel`` of this kind.

    Positional settings are the released model's; widths and depth are shrunk. The text length
    stays 226: the scripts tokenize to ``max_text_seq_length``, the pipelines always to 226, and
    the 5b-I2V learned table has ``226 + 13 * 30 * 45`` rows.
    """
    _check_kind(kind)
    config = dict(RELEASED[kind])  # positions and shapes as released
    config.update(
        num_attention_heads=2,
        attention_head_dim=16,  # RoPE needs a multiple of 16
        in_channels=LATENT_CHANNELS * (2 if _is_i2v(kind) else 1),  # I2V stacks image latents
        out_channels=LATENT_CHANNELS,
        time_embed_dim=TIME_EMBED_DIM,
        ofs_embed_dim=TIME_EMBED_DIM if config["ofs_embed_dim"] else None,
        text_embed_dim=32,
        num_layers=1,
        max_text_seq_length=226,
        temporal_compression_ratio=4,
    )
    return config


def _tiny_vae_config(kind: str) -> dict[str, Any]:
    # Four blocks as released: 8x in space (three downsamples), 4x in time (two compress_time).
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=LATENT_CHANNELS,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
        scaling_factor=_VAE_SCALING_FACTOR.get(kind, _DEFAULT_VAE_SCALING_FACTOR),
        invert_scale_latents=kind.startswith("1.5"),
    )


def _tiny_tokenizer():
    from transformers import T5Tokenizer

    # A unigram vocabulary like T5's sentencepiece one: whole words, then single letters and
    # digits so that any word still splits into known pieces.
    specials = ["<pad>", "</s>", "<unk>"]
    pieces = ["▁" + word for word in _TOKENIZER_WORDS] + ["▁"]
    pieces += list("abcdefghijklmnopqrstuvwxyz0123456789.,'-")
    vocab = [(piece, 0.0) for piece in specials] + [(piece, -1.0 - i / 100) for i, piece in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=226)


def model_dir_name(kind: str) -> str:
    """The folder name ``build_tiny_model`` uses for this kind.

    It matters: the diffusers scripts load the transformer in bfloat16 when the model path
    contains "5b" (any case) and in float16 otherwise, as for the released checkpoints.
    """
    _check_kind(kind)
    return f"tiny-cogvideox-{kind.lower()}"


def build_tiny_model(out_dir: str | Path, kind: str = "5b", seed: int = 0) -> Path:
    """Write a tiny random CogVideoX of this kind in diffusers format; return its folder.

    The model goes to ``out_dir / model_dir_name(kind)`` (see there why the name matters) and
    loads offline with ``from_pretrained(path, subfolder=...)`` or as a whole pipeline
    (``CogVideoXPipeline``, or ``CogVideoXImageToVideoPipeline`` for the I2V kinds). Weights are
    float32 and depend only on ``kind`` and ``seed``.
    """
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDPMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    _check_kind(kind)
    tokenizer = _tiny_tokenizer()
    # Leave the caller's random state alone: weights come from this seed only.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(**tiny_transformer_config(kind))
        vae = AutoencoderKLCogVideoX(**_tiny_vae_config(kind))
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=32,  # = the transformer's text_embed_dim
                d_kv=16,
                d_ff=64,
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
                feed_forward_proj="gated-gelu",  # as in t5-v1_1-xxl
                dropout_rate=0.0,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
    scheduler = CogVideoXDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        snr_shift_scale=3.0 if kind == "2b" else 1.0,
        timestep_spacing="trailing",
    )
    pipeline_class = CogVideoXImageToVideoPipeline if _is_i2v(kind) else CogVideoXPipeline
    pipe = pipeline_class(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    path = Path(out_dir) / model_dir_name(kind)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


# ---------------------------------------------------------------------------------------------
# Clips and datasets


def _check_clip_size(width: int, height: int, num_frames: int) -> None:
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise ValueError(f"H.264 (yuv420p) needs even width and height >= 2, got {width}x{height}")
    if width in DECORD_BAD_WIDTHS:
        raise ValueError(
            f"decord 0.6 cannot decode frames {width} pixels wide "
            f"(it fails on widths {sorted(DECORD_BAD_WIDTHS)}); choose another width"
        )
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got num_frames={num_frames}")


def _frames(width: int, height: int, num_frames: int, seed: int):
    """Yield RGB frames: a drifting two-colour gradient with a square bouncing across it."""
    rng = np.random.default_rng(seed)
    start, end, square_colour = rng.integers(0, 256, size=(3, 3))
    angle = rng.uniform(0, 2 * np.pi)
    side = max(2, min(width, height) // 4)
    position = rng.uniform(0, 1, size=2) * (width - side, height - side)
    velocity = np.array([np.cos(angle), np.sin(angle)]) * max(2.0, min(width, height) / 12)
    ys, xs = np.mgrid[0:height, 0:width]
    ramp = (np.cos(angle) * xs / width + np.sin(angle) * ys / height) / 2 + 0.5
    for index in range(num_frames):
        mix = (ramp + index / max(num_frames, 8)) % 1.0
        frame = start + (end - start) * mix[..., None]
        x, y = position.astype(int)
        frame[y : y + side, x : x + side] = square_colour
        yield np.ascontiguousarray(frame.clip(0, 255).astype(np.uint8))
        position += velocity
        for axis, limit in enumerate((width - side, height - side)):
            if not 0 <= position[axis] <= limit:
                velocity[axis] = -velocity[axis]
                position[axis] = np.clip(position[axis], 0, limit)


def write_clip(
    path: str | Path, width: int, height: int, num_frames: int, fps: int = 8, seed: int = 0
) -> Path:
    """Write an H.264 yuv420p mp4 of ``num_frames`` frames whose content moves; return its path.

    Content differs per ``seed``. Raises ``ValueError`` for sizes H.264 or decord cannot take.
    """
    import av

    _check_clip_size(width, height, num_frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18"}
        for frame in _frames(width, height, num_frames, seed):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def write_dataset(
    root: str | Path,
    clips: Sequence[tuple[int, int, int] | tuple[int, int, int, int]],
    prompts: Sequence[str] | None = None,
) -> Path:
    """Write a dataset folder the scripts read; return ``root``.

    ``clips`` holds ``(width, height, num_frames)`` or ``(width, height, num_frames, fps)``.
    Writes ``root/videos/*.mp4``, ``root/videos.txt`` and ``root/prompts.txt`` (one line per clip,
    paths relative to root): train with ``--instance_data_root root --caption_column prompts.txt
    --video_column videos.txt``.
    """
    root = Path(root)
    if prompts is None:
        prompts = [f"a bright square moving over a gradient, clip {i}" for i in range(len(clips))]
    if len(prompts) != len(clips):
        raise ValueError(f"got {len(prompts)} prompts for {len(clips)} clips")
    for prompt in prompts:
        # The scripts read one prompt per line and drop blank lines.
        if not prompt.strip() or "\n" in prompt:
            raise ValueError(f"a prompt must be one non-blank line, got {prompt!r}")
    video_lines = []
    for index, clip in enumerate(clips):
        width, height, num_frames, *rest = clip
        name = f"videos/clip_{index:03d}_{width}x{height}x{num_frames}.mp4"
        write_clip(root / name, width, height, num_frames, fps=rest[0] if rest else 8, seed=index)
        video_lines.append(name)
    (root / "videos.txt").write_text("\n".join(video_lines) + "\n", encoding="utf-8")
    (root / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    return root


def write_bad_clips(root: str | Path) -> dict[str, Path]:
    """Write clips that stress a data pipeline; return them by name.

    - ``truncated``: a real mp4 cut to half its bytes (its index is lost: decord cannot open it)
    - ``not_a_video``: a text file named ``.mp4``
    - ``zero_frames``: a well-formed mp4 holding no frame (ffmpeg's muxer drops an empty track, so
      it has no video stream at all; decord refuses it)
    - ``one_frame``: 1 frame, 64x64
    - ``tiny_32x32``: 9 frames, 32x32 (2 latent pixels before patching)
    - ``wide_8x1``: 9 frames, 256x32; ``tall_1x8``: 9 frames, 32x256
    - ``three_frames``: 3 frames, 64x64 (the scripts keep 4k+1 frames: only the first)
    """
    import imageio_ffmpeg

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clips = {
        "one_frame": write_clip(root / "one_frame.mp4", 64, 64, 1),
        "tiny_32x32": write_clip(root / "tiny_32x32.mp4", 32, 32, 9, seed=1),
        "wide_8x1": write_clip(root / "wide_8x1.mp4", 256, 32, 9, seed=2),
        "tall_1x8": write_clip(root / "tall_1x8.mp4", 32, 256, 9, seed=3),
        "three_frames": write_clip(root / "three_frames.mp4", 64, 64, 3, seed=4),
    }

    whole = write_clip(root / "truncated.mp4", 64, 64, 9, seed=5).read_bytes()
    clips["truncated"] = root / "truncated.mp4"
    clips["truncated"].write_bytes(whole[: len(whole) // 2])

    clips["not_a_video"] = root / "not_a_video.mp4"
    clips["not_a_video"].write_text("this is a text file, not an mp4\n", encoding="utf-8")

    # Told to keep no frame, ffmpeg still writes a complete mp4 (ftyp + moov), without the track.
    clips["zero_frames"] = root / "zero_frames.mp4"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi"]
        + ["-i", "color=c=gray:s=64x64:r=8", "-frames:v", "0", "-c:v", "libx264", "-pix_fmt", "yuv420p"]
        + [str(clips["zero_frames"])],
        check=True,
        capture_output=True,
    )
    return clips
