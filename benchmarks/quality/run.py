"""Does training at each clip's own aspect help? A measured experiment on a small CogVideoX-5b.

One command::

    python benchmarks/quality/run.py --out DIR [--quick] [--arms a,b,c,d] [--seeds 0,1,2] [--threads 1]
        [--trainer SCRIPT]

What it does (seeded; every arm gets the same clips, model, steps, batch size, learning rate and
seed):

1. **Data.** Synthetic H.264 clips (9 frames) in 16:9 (256x144), 9:16 (144x256), 4:3 (192x144)
   and 1:1 (160x160), written with PyAV. The picture is full to the edges: a striped background
   drifting along the long side, and one object (red/green/blue/yellow square or circle) that
   enters at one edge and leaves at the other, along the long side. The prompt names the object
   and the direction ("a red circle moves from left to right"). A separate set of held-out clips,
   same kinds, is used only for evaluation.
2. **Model.** A small random CogVideoX-5b: the released positional settings (rotary, linspace
   positions fitted into the 60x90 latent base, sample_frames 49, patch 2), 2 layers, 4 heads of
   64, a tiny VAE and T5 (cogvx_ext.testing). Shared by all arms. The VAE gets a trained VAE's
   narrow posterior (``make_posterior_narrow``: with random weights the script's posterior
   samples are mostly noise and no arm can learn anything that tells them apart).
3. **Training**, through the real training path: cogvx-ext's minimal trainer
   (``cogvx_ext/trainers/tiny_t2v_trainer.py``, the diffusers script's seams, loss and LoRA), in
   its own process per arm. LoRA (rank 64 = the full width, so the adapter can learn from random
   weights) on to_q/to_k/to_v/to_out, as the script does.

   * ``a`` stock: ``--height 160 --width 240`` (3:2, as the stock 720x480); every clip is
     resized to cover 240x160 and centre-cropped; RoPE from --height/--width. No plugins.
   * ``b`` ``--plugins aspect_bucket,rope_rescale``: each clip at its own bucket, RoPE per batch,
     equal to the pipeline's.
   * ``c`` buckets with the stock RoPE: ``--plugins aspect_bucket,benchmarks/quality/stock_rope.py``
     (the stock grid's position region stretched over each batch; see that file for why this is
     what naive bucketing amounts to).
   * ``d`` ``--plugins aspect_bucket,rope_rescale,snr_shift --snr_shift_reference 240x160x9``: arm
     b with each bucket's SNR shift from its token count, relative to the stock arm's size (as
     the released 5b's is relative to 720x480x49): 0.96 at 16:9 and 9:16, 0.72 at 4:3, 0.67 at 1:1.

   Every seed of ``--seeds`` gets its own clips, model and training; each (seed, arm) is saved
   under ``DIR/seed<N>/`` when it finishes, and a rerun with the same ``--out`` reuses what is
   there (a stopped run goes on where it stopped).
4. **Evaluation** at each held-out clip's own size, RoPE from the pipeline
   (``CogVideoXPipeline._prepare_rotary_positional_embeddings``), LoRA loaded into the pipeline
   with ``load_lora_weights``: the training loss (v-prediction turned into a clean-sample
   estimate, weighted 1 / (1 - alpha_bar), as the script) over a fixed grid of timesteps and
   noise seeds, the same for every arm; also over the edge region only (latent cells outside the
   window a stock 3:2 centre crop keeps). Per aspect: the mean over clips, a bootstrap 95 %
   interval (clips resampled; over several seeds, seeds and then clips resampled), and the paired
   difference between arms with its interval. ``own_loss`` is the same loss under each arm's own
   training noise schedule (for arm d the shift of the clip's size; for a, b, c the model's own).
   **Sampling**: each arm's pipeline (arm d through ``prepare_pipeline``, so the shift follows the
   size) generates latents for held-out prompts at the trained sizes and at 16:9 below and above
   them (192x112, 320x176), 9 frames, no guidance; the statistic is the squared 2-Wasserstein
   distance between generated and held-out latents per channel taken as Gaussians
   (benchmarks/README.md says why).
   The untrained model (LoRA off) is reported as a reference, and arm b is probed with one input
   changed (another clip's prompt, no RoPE, arm c's positions) to show what the model uses.

Writes ``DIR/results.json``, ``DIR/quality.png`` and ``DIR/table.md``; prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# name -> (width, height); sides multiples of 16 (VAE 8 x patch 2).
ASPECTS = {"16:9": (256, 144), "9:16": (144, 256), "4:3": (192, 144), "1:1": (160, 160)}
STOCK_SIZE = (240, 160)  # width, height: 3:2 like the stock --width 720 --height 480
FRAMES = 9  # 4k+1 -> 3 latent frames
FPS = 8
ARMS = {
    "a": "stock: one 240x160 centre crop, RoPE from --height/--width",
    "b": "aspect_bucket,rope_rescale",
    "c": "aspect_bucket + stock RoPE (stretched)",
    "d": "aspect_bucket,rope_rescale,snr_shift",
}
# Arm d's reference size: the stock arm's, as 720x480x49 is the released 5b's (3x10x15 = 450
# tokens; the buckets have 300 to 432, so their shifts are 0.67 to 0.96).
SNR_REFERENCE = f"{STOCK_SIZE[0]}x{STOCK_SIZE[1]}x{FRAMES}"
# Bumped when the evaluation changes: saved (seed, arm) results of another evaluation are redone.
EVALUATION = 2
# Paired differences reported (first - second; below 0: the first is better).
PAIRS = (("b", "a"), ("c", "a"), ("b", "c"), ("d", "b"), ("d", "a"))
# Sampling evaluation: name -> (aspect of the held-out clips compared, width, height). The trained
# sizes, and 16:9 below and above them (the shift rule applied beyond the trained token counts).
SAMPLE_SIZES = {
    "192x112": ("16:9", 192, 112),
    "256x144": ("16:9", 256, 144),
    "320x176": ("16:9", 320, 176),
    "144x256": ("9:16", 144, 256),
    "192x144": ("4:3", 192, 144),
    "160x160": ("1:1", 160, 160),
}
REFERENCE = "untrained"
# What the model uses, probed on arm b (see clip_losses): how much the loss rises without each input.
PROBED_ARM = "b"
PROBES = ("other_prompt", "no_rope", "stock_rope")

PRESETS = {
    # clips per aspect (train, held out), optimizer steps, timesteps in the grid, noise seeds
    # sample_prompts: held-out prompts sampled per size (at most eval_clips); sample_steps: denoising steps
    "full": dict(
        train_clips=16,
        eval_clips=16,
        steps=600,
        timesteps=10,
        noise_seeds=2,
        batch=4,
        sample_prompts=8,
        sample_steps=20,
    ),
    "quick": dict(
        train_clips=8,
        eval_clips=8,
        steps=120,
        timesteps=5,
        noise_seeds=1,
        batch=4,
        sample_prompts=4,
        sample_steps=10,
    ),
    # For the test that keeps the code path alive: seconds, measures nothing.
    "smoke": dict(
        train_clips=1,
        eval_clips=1,
        steps=1,
        timesteps=2,
        noise_seeds=1,
        batch=1,
        sample_prompts=1,
        sample_steps=2,
    ),
}
LEARNING_RATE = 1e-3
RANK = 64
MEAN_GAIN = 5.0  # the random VAE's posterior mean varies by ~0.26; x 5 x scaling 0.7 -> ~0.9
TRANSFORMER = dict(num_layers=2, num_attention_heads=4, attention_head_dim=64, time_embed_dim=64)

OBJECT_COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 70, 230),
    "yellow": (235, 220, 40),
}
OBJECT_SHAPES = ("square", "circle")
DIRECTIONS = {  # name -> (axis, sign): axis 0 moves along x, 1 along y
    "from left to right": (0, 1),
    "from right to left": (0, -1),
    "from top to bottom": (1, 1),
    "from bottom to top": (1, -1),
}


# ---------------------------------------------------------------------------------------------
# Data


def clip_frames(width: int, height: int, rng: np.random.Generator) -> tuple[list[np.ndarray], str]:
    """RGB frames full to the edges and the prompt that says what moves where."""
    colour_name = str(rng.choice(list(OBJECT_COLOURS)))
    shape = str(rng.choice(OBJECT_SHAPES))
    if width > height:
        direction = str(rng.choice(list(DIRECTIONS)[:2]))
    elif height > width:
        direction = str(rng.choice(list(DIRECTIONS)[2:]))
    else:
        direction = str(rng.choice(list(DIRECTIONS)))
    axis, sign = DIRECTIONS[direction]
    long_side, cross_side = (width, height) if axis == 0 else (height, width)
    size = int(0.45 * min(width, height))
    # Background: stripes across the direction of motion, drifting with it, between two
    # random dark colours; the clip's colours are not in the prompt.
    low, high = rng.integers(20, 120, size=(2, 3))
    period = rng.uniform(0.25, 0.5) * long_side
    phase = rng.uniform(0, 2 * np.pi)
    drift = sign * rng.uniform(0.5, 1.5) * long_side / FRAMES / 4
    cross = rng.uniform(0.3, 0.7) * cross_side
    # The object starts fully outside one edge and ends fully outside the other.
    travel = long_side + size
    jitter = rng.uniform(-0.1, 0.1) * size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    along, across = (xs, ys) if axis == 0 else (ys, xs)
    frames = []
    for index in range(FRAMES):
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * (along - drift * index) / period + phase)
        frame = low + (high - low) * wave[..., None]
        progress = (index + 0.5) / FRAMES
        centre = -size / 2 + travel * progress + jitter
        if sign < 0:
            centre = long_side - centre
        if shape == "square":
            inside = (np.abs(along - centre) <= size / 2) & (np.abs(across - cross) <= size / 2)
        else:
            inside = (along - centre) ** 2 + (across - cross) ** 2 <= (size / 2) ** 2
        frame[inside] = OBJECT_COLOURS[colour_name]
        frames.append(np.ascontiguousarray(frame.clip(0, 255).astype(np.uint8)))
    return frames, f"a {colour_name} {shape} moves {direction}"


def write_frames(path: Path, frames: list[np.ndarray]) -> None:
    import av

    height, width = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # x264 encodes in threads by default, and then the bytes vary from run to run.
        stream.options = {"crf": "18", "threads": "1"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def write_split(root: Path, per_aspect: int, seed: int) -> list[dict]:
    """Clips of every aspect in ``root`` (the scripts' listing files too); returns their records."""
    rng = np.random.default_rng(seed)
    records = []
    for aspect, (width, height) in ASPECTS.items():
        for index in range(per_aspect):
            frames, prompt = clip_frames(width, height, rng)
            name = f"videos/{aspect.replace(':', 'x')}_{index:03d}_{width}x{height}.mp4"
            write_frames(root / name, frames)
            records.append(
                {"path": name, "prompt": prompt, "aspect": aspect, "width": width, "height": height}
            )
    # Interleave the aspects so that the stock script's shuffled loader and the buckets see the same set.
    (root / "videos.txt").write_text("".join(r["path"] + "\n" for r in records), encoding="utf-8")
    (root / "prompts.txt").write_text("".join(r["prompt"] + "\n" for r in records), encoding="utf-8")
    return records


def build_model(out: Path, seed: int) -> Path:
    """The tiny 5b of cogvx_ext.testing (VAE, T5, tokenizer, scheduler) with a wider, deeper
    transformer; positional settings as released."""
    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    from cogvx_ext.testing import build_tiny_model, tiny_transformer_config

    path = build_tiny_model(out, "5b", seed=seed)
    config = {**tiny_transformer_config("5b"), **TRANSFORMER}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(**config)
    # The scripts load a model whose path names "5b" in bfloat16 (as the released weights are
    # stored) and then cast it to float32: store values bfloat16 holds exactly, so that the model
    # trained on and the one evaluated (loaded in float32) are the same.
    with torch.no_grad():
        for parameter in transformer.parameters():
            parameter.copy_(parameter.to(torch.bfloat16).float())
    transformer.save_pretrained(path / "transformer", safe_serialization=True)
    vae = AutoencoderKLCogVideoX.from_pretrained(path, subfolder="vae")
    make_posterior_narrow(vae)
    vae.save_pretrained(path / "vae", safe_serialization=True)
    return path


def make_posterior_narrow(vae) -> None:
    """Give the random VAE a trained VAE's posterior: a narrow one around a mean of about unit scale.

    The encoder's last convolution gives the posterior's mean (first half of its channels) and
    log-variance (second half). Random weights give a log-variance near 0, i.e. a standard
    deviation near 1 against a mean that varies by about 0.26: the posterior sample the script
    trains on (``latent_dist.sample()``) is then ~94 % noise drawn afresh at every step, which
    nothing can predict, and every arm measures the same floor. A trained VAE's posterior is
    narrow; so the log-variance is pinned to the clamp's floor (-30) and the mean scaled so the
    scaled latents have about unit spread.
    """
    import torch

    conv = vae.encoder.conv_out.conv
    channels = conv.out_channels // 2
    with torch.no_grad():
        conv.weight[:channels] *= MEAN_GAIN
        conv.bias[:channels] *= MEAN_GAIN
        conv.weight[channels:] = 0.0
        conv.bias[channels:] = -30.0


# ---------------------------------------------------------------------------------------------
# Training


def arm_command(
    arm: str, trainer: Path, model: Path, data: Path, out: Path, preset: dict, seed: int
) -> list[str]:
    stock_w, stock_h = STOCK_SIZE
    script_args = [
        "--pretrained_model_name_or_path", str(model), "--instance_data_root", str(data),
        "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--height", str(stock_h), "--width", str(stock_w), "--fps", str(FPS), "--max_num_frames", str(FRAMES),
        "--train_batch_size", str(preset["batch"]), "--max_train_steps", str(preset["steps"]),
        "--checkpointing_steps", str(10**9), "--rank", str(RANK), "--lora_alpha", str(RANK),
        "--learning_rate", str(LEARNING_RATE), "--lr_scheduler", "constant", "--seed", str(seed),
        "--output_dir", str(out),
    ]  # fmt: skip
    if arm == "a":
        return [sys.executable, str(trainer), *script_args]
    buckets = ",".join(f"{w}x{h}" for w, h in ASPECTS.values())
    plugins = {
        "b": ["aspect_bucket,rope_rescale"],
        "c": [f"aspect_bucket,{HERE / 'stock_rope.py'}:StockRope"],
        "d": ["aspect_bucket,rope_rescale,snr_shift", "--snr_shift_reference", SNR_REFERENCE],
    }[arm]
    return [
        sys.executable,
        "-m",
        "cogvx_ext",
        str(trainer),
        *script_args,
        "--buckets",
        buckets,
        "--plugins",
        *plugins,
    ]


def train_arm(arm: str, command: list[str], out: Path, threads: int) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    env.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
    )
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train.log"
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        log.write((" ".join(command) + "\n").encode())
        log.flush()
        status = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    if status != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise SystemExit(f"arm {arm}: training exited with status {status}; end of {log_path}:\n{tail}")
    return seconds


# ---------------------------------------------------------------------------------------------
# Evaluation


def read_clip(path: Path):
    """[F, C, H, W] float in [-1, 1], every frame of the file (PyAV)."""
    import av
    import torch

    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    video = torch.from_numpy(np.stack(frames)).float().permute(0, 3, 1, 2)
    return video / 127.5 - 1.0


def edge_mask(width: int, height: int, latent_h: int, latent_w: int):
    """Latent cells whose centre lies outside the window a stock centre crop to STOCK_SIZE keeps
    (the clip is scaled to cover STOCK_SIZE, then the middle is cut out)."""
    import torch

    scale = max(STOCK_SIZE[0] / width, STOCK_SIZE[1] / height)
    kept_w, kept_h = STOCK_SIZE[0] / scale, STOCK_SIZE[1] / scale
    left, top = (width - kept_w) / 2, (height - kept_h) / 2
    cell_w, cell_h = width / latent_w, height / latent_h
    xs = (torch.arange(latent_w) + 0.5) * cell_w
    ys = (torch.arange(latent_h) + 0.5) * cell_h
    inside_x = (xs >= left) & (xs <= left + kept_w)
    inside_y = (ys >= top) & (ys <= top + kept_h)
    return ~(inside_y[:, None] & inside_x[None, :])  # [H, W]


def stock_rope_module():
    """Arm c's plugin file, imported as the trainer imports it (by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("quality_stock_rope", HERE / "stock_rope.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timestep_grid(count: int, num_train_timesteps: int) -> list[int]:
    """Midpoints of ``count`` equal slices of [0, T): the expectation over uniform t, on a grid."""
    return [int((i + 0.5) * num_train_timesteps / count) for i in range(count)]


def prepare_eval_inputs(pipe, records: list[dict], root: Path, seed: int) -> list[dict]:
    """Latents (one seeded posterior sample each, as the script's collate samples) and prompt
    embeddings of the held-out clips; the same for every arm."""
    import torch

    prepared = []
    text_length = pipe.transformer.config.max_text_seq_length
    for index, record in enumerate(records):
        video = read_clip(root / record["path"])[:FRAMES]
        with torch.no_grad():
            posterior = pipe.vae.encode(video.unsqueeze(0).permute(0, 2, 1, 3, 4)).latent_dist
            generator = torch.Generator().manual_seed(seed * 100003 + index)
            latents = posterior.sample(generator=generator) * pipe.vae.config.scaling_factor
            prompt_embeds, _ = pipe.encode_prompt(
                record["prompt"], do_classifier_free_guidance=False, max_sequence_length=text_length
            )
        latents = latents.permute(0, 2, 1, 3, 4).contiguous()  # [1, F, C, H, W] as the script
        prepared.append({**record, "latents": latents, "prompt_embeds": prompt_embeds, "index": index})
    for item in prepared:
        # For the other_prompt probe: the next clip of this aspect whose prompt differs (else its own).
        same = [o for o in prepared if o["aspect"] == item["aspect"] and o["prompt"] != item["prompt"]]
        later = [o for o in same if o["index"] > item["index"]] or same or [item]
        item["other_prompt_embeds"] = later[0]["prompt_embeds"]
    return prepared


def clip_losses(
    pipe,
    item: dict,
    timesteps: list[int],
    noise_seeds: int,
    seed: int,
    probe: str | None = None,
    scheduler=None,
) -> tuple[float, float]:
    """(whole-frame loss, edge-region loss) of one clip: the script's loss, averaged over the grid.

    ``scheduler`` (default the pipeline's) gives the noise schedule: the model's own, or an arm's
    own training schedule (arm d: the SNR shift of the clip's size).

    ``probe`` changes one input to see what the model uses: ``other_prompt`` (the prompt of
    another held-out clip of that aspect that differs), ``no_rope`` (attention without positions),
    ``stock_rope`` (arm c's training positions instead of the pipeline's).
    """
    import torch

    latents = item["latents"]
    _, frames, channels, height, width = latents.shape
    grid = [(t, s) for t in timesteps for s in range(noise_seeds)]
    batch = len(grid)
    noise = torch.stack(
        [
            torch.randn(
                latents.shape[1:],
                generator=torch.Generator().manual_seed(seed * 7919 + s * 104729 + item["index"]),
            )
            for _, s in grid
        ]
    )
    model_input = latents.expand(batch, -1, -1, -1, -1)
    t = torch.tensor([t for t, _ in grid], dtype=torch.long)
    scheduler = scheduler or pipe.scheduler
    noisy = scheduler.add_noise(model_input, noise, t)
    rope = pipe._prepare_rotary_positional_embeddings(height * 8, width * 8, frames, torch.device("cpu"))
    prompt_embeds = item["prompt_embeds"]
    if probe == "other_prompt":
        prompt_embeds = item["other_prompt_embeds"]
    elif probe == "no_rope":
        rope = None
    elif probe == "stock_rope":
        from cogvx_ext.model.facts import ModelInfo

        model = ModelInfo.from_config(pipe.transformer.config)
        rope = stock_rope_module().stretched_stock_rope(
            model, STOCK_SIZE[::-1], (frames, height, width), "cpu"
        )
    with torch.no_grad():
        output = pipe.transformer(
            hidden_states=noisy,
            encoder_hidden_states=prompt_embeds.expand(batch, -1, -1),
            timestep=t,
            image_rotary_emb=rope,
            return_dict=False,
        )[0]
    prediction = scheduler.get_velocity(output, noisy, t)
    weights = (1 / (1 - scheduler.alphas_cumprod[t])).reshape(-1, 1, 1, 1, 1)
    error = weights * (prediction - model_input) ** 2  # [B, F, C, H, W]
    edge = edge_mask(item["width"], item["height"], height, width)
    return float(error.mean()), float(error[..., edge].mean())


def bootstrap_interval(values: np.ndarray, rng: np.random.Generator, resamples: int = 4000) -> list[float]:
    if len(values) < 2:
        return [float(values.mean()), float(values.mean())]
    picks = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[picks].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def grouped_interval(groups: list[np.ndarray], statistic, rng: np.random.Generator, resamples: int = 1000):
    """``statistic(groups)`` and its bootstrap 95 % interval, resampling the seeds (groups) and then
    the units (rows) within each picked seed: the interval covers the run-to-run spread of
    training as well as the choice of held-out clips."""
    point = float(statistic(groups))
    if sum(len(g) for g in groups) < 2:
        return point, [point, point]
    values = []
    for _ in range(resamples):
        picked = [groups[i] for i in rng.integers(0, len(groups), len(groups))] if len(groups) > 1 else groups
        values.append(statistic([g[rng.integers(0, len(g), len(g))] for g in picked]))
    return point, [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


# ---------------------------------------------------------------------------------------------
# Sampling: generated clips against held-out clips


def channel_moments(latents) -> np.ndarray:
    """Per clip and latent channel: the mean and the mean square over frames, rows and columns
    (``latents`` ``[clips, F, C, H, W]``) -> ``[clips, C, 2]``."""
    values = latents.double()
    return np.stack([values.mean(dim=(1, 3, 4)).numpy(), (values**2).mean(dim=(1, 3, 4)).numpy()], axis=-1)


def moment_distance(generated: np.ndarray, held_out: np.ndarray) -> float:
    """The squared 2-Wasserstein distance between the two sets' latents, each channel taken as a
    Gaussian with the set's mean and spread: mean over channels of (mu_g - mu_h)^2 + (sd_g - sd_h)^2
    (the inputs ``[clips, C, 2]`` as ``channel_moments`` gives them). See benchmarks/README.md for
    why this statistic."""
    mu_g, mu_h = generated[..., 0].mean(0), held_out[..., 0].mean(0)
    sd_g = np.sqrt(np.maximum(generated[..., 1].mean(0) - mu_g**2, 0))
    sd_h = np.sqrt(np.maximum(held_out[..., 1].mean(0) - mu_h**2, 0))
    return float(np.mean((mu_g - mu_h) ** 2 + (sd_g - sd_h) ** 2))


def prepare_sampling_refs(pipe, records: list[dict], root: Path, preset: dict) -> dict:
    """Per sampling size: the prompts of the first held-out clips of its aspect (their embeddings)
    and those clips resized to the size, encoded (the posterior's mode), as channel moments."""
    import torch
    import torch.nn.functional as F

    refs = {}
    text_length = pipe.transformer.config.max_text_seq_length
    for label, (aspect, width, height) in SAMPLE_SIZES.items():
        chosen = [r for r in records if r["aspect"] == aspect][: preset["sample_prompts"]]
        moments, embeds = [], []
        for record in chosen:
            video = read_clip(root / record["path"])[:FRAMES]
            video = F.interpolate(
                video, size=(height, width), mode="bilinear", antialias=True, align_corners=False
            )
            with torch.no_grad():
                latents = pipe.vae.encode(video.clamp(-1, 1).unsqueeze(0).permute(0, 2, 1, 3, 4)).latent_dist
                latents = (latents.mode() * pipe.vae.config.scaling_factor).permute(0, 2, 1, 3, 4)
                prompt_embeds, _ = pipe.encode_prompt(
                    record["prompt"], do_classifier_free_guidance=False, max_sequence_length=text_length
                )
            moments.append(channel_moments(latents)[0])
            embeds.append(prompt_embeds)
        refs[label] = {
            "moments": np.stack(moments),
            "prompt_embeds": torch.cat(embeds),
            "size": (width, height),
        }
    return refs


def sample_moments(pipe, ref: dict, preset: dict, seed: int) -> np.ndarray:
    """Channel moments of clips the pipeline generates (no guidance, latents not decoded) for the
    held-out prompts at the reference's size, one seeded generator per prompt (the same for every arm)."""
    import torch

    width, height = ref["size"]
    generators = [torch.Generator().manual_seed(seed * 7907 + i) for i in range(len(ref["prompt_embeds"]))]
    with torch.no_grad():
        latents = pipe(
            prompt_embeds=ref["prompt_embeds"],
            height=height,
            width=width,
            num_frames=FRAMES,
            num_inference_steps=preset["sample_steps"],
            guidance_scale=1.0,
            generator=generators,
            output_type="latent",
        ).frames
    return channel_moments(latents)


# ---------------------------------------------------------------------------------------------
# One seed's evaluation, arm by arm


class Evaluator:
    """The pipeline and held-out inputs of one seed; evaluates one arm at a time."""

    def __init__(self, model: Path, records: list[dict], root: Path, preset: dict, seed: int):
        import torch
        from diffusers import CogVideoXPipeline

        self.pipe = CogVideoXPipeline.from_pretrained(model, dtype=torch.float32)
        self.pipe.set_progress_bar_config(disable=True)
        self.base_scheduler = self.pipe.scheduler
        self.preset, self.seed = preset, seed
        self.items = prepare_eval_inputs(self.pipe, records, root, seed)
        self.timesteps = timestep_grid(preset["timesteps"], self.pipe.scheduler.config.num_train_timesteps)
        self.refs = prepare_sampling_refs(self.pipe, records, root, preset)

    def arm(self, name: str, lora_dir: Path | None) -> dict:
        """Per held-out clip ``[loss, edge loss, own loss]``, the probes (arm b), and per sampling
        size the generated clips' channel moments. The LoRA is loaded as users load it: arms with
        the SNR shift through ``cogvx_ext.inference.prepare_pipeline`` (the shift follows the size)."""
        from cogvx_ext.plugin.forward import remove_forward_hooks

        pipe, preset, seed = self.pipe, self.preset, self.seed
        adapter = f"arm_{name}"
        if lora_dir is not None and name == "d":
            from cogvx_ext.inference import prepare_pipeline

            prepare_pipeline(pipe, lora_dir, adapter_name=adapter, lora_scale=1.0)
        elif lora_dir is not None:
            pipe.load_lora_weights(str(lora_dir), adapter_name=adapter)
            pipe.set_adapters([adapter], [1.0])  # lora_alpha = rank
        own = pipe.scheduler  # the arm's training schedule: the model's own, or following the size
        try:
            per_clip = []
            for item in self.items:
                args = (pipe, item, self.timesteps, preset["noise_seeds"], seed)
                loss, edge = clip_losses(*args, scheduler=self.base_scheduler)
                own_loss = loss if own is self.base_scheduler else clip_losses(*args, scheduler=own)[0]
                per_clip.append([loss, edge, own_loss])
            probes = {}
            if name == PROBED_ARM:
                for probe in PROBES:
                    probes[probe] = [
                        list(
                            clip_losses(pipe, item, self.timesteps, preset["noise_seeds"], seed, probe=probe)
                        )
                        for item in self.items
                    ]
            sampling = {
                label: sample_moments(pipe, ref, preset, seed).tolist() for label, ref in self.refs.items()
            }
            shifts = {}
            if own is not self.base_scheduler:
                shift_for = own._cogvx_shift_for
                shifts = {
                    label: shift_for((FRAMES // 4 + 1, h // 8, w // 8))
                    for label, (_, w, h) in SAMPLE_SIZES.items()
                }
        finally:
            remove_forward_hooks(pipe.transformer)
            pipe.scheduler = self.base_scheduler
            if lora_dir is not None:
                pipe.delete_adapters([adapter])
        return {
            "per_clip": per_clip,
            "probes": probes,
            "sampling": sampling,
            "sampling_reference": {label: ref["moments"].tolist() for label, ref in self.refs.items()},
            "sampling_shifts": shifts,
            "timesteps": self.timesteps,
        }


# ---------------------------------------------------------------------------------------------
# Summaries: per seed and pooled

LOSS_KEYS = ("loss", "edge_loss", "own_loss")  # the columns of per_clip


def mean_of(groups: list[np.ndarray]) -> float:
    return float(np.concatenate(groups).mean())


def summarise(evals: dict[int, dict[str, dict]], records: dict[int, list[dict]], seeds: list[int]) -> dict:
    """``arms``, ``paired``, ``probes``, ``sampling``, ``sampling_paired`` over the given seeds
    (one seed: intervals over its held-out clips; several: over seeds and clips)."""
    rng = np.random.default_rng(seeds[0])
    names = [n for n in (REFERENCE, *ARMS) if all(n in evals[s] for s in seeds)]

    def column(name: str, seed: int, aspect: str, index: int) -> np.ndarray:
        rows = np.array(evals[seed][name]["per_clip"])
        return rows[[r["aspect"] == aspect for r in records[seed]], index]

    def cells(values_for, keys=LOSS_KEYS, suffix="") -> dict:
        out = {}
        for aspect in ASPECTS:
            entry = {}
            for index, key in enumerate(keys):
                groups = [values_for(seed, aspect, index) for seed in seeds]
                value, interval = grouped_interval(groups, mean_of, rng)
                entry[f"{key}{suffix}"], entry[f"{key}{suffix}_ci95"] = value, interval
            out[aspect] = entry
        return out

    arms = {}
    for name in names:
        arms[name] = cells(lambda seed, aspect, i, n=name: column(n, seed, aspect, i))
        for aspect in ASPECTS:
            arms[name][aspect]["clips"] = sum(
                sum(r["aspect"] == aspect for r in records[seed]) for seed in seeds
            )
    paired = {
        f"{x}-{y}": cells(
            lambda seed, aspect, i, x=x, y=y: column(x, seed, aspect, i) - column(y, seed, aspect, i)
        )
        for x, y in PAIRS
        if x in names and y in names
    }
    probes = {}
    if PROBED_ARM in names and all(evals[s][PROBED_ARM]["probes"] for s in seeds):
        for probe in PROBES:

            def increase(seed, aspect, i, probe=probe):
                rows = np.array(evals[seed][PROBED_ARM]["probes"][probe])
                mine = [r["aspect"] == aspect for r in records[seed]]
                return rows[mine, i] - column(PROBED_ARM, seed, aspect, i)

            probes[probe] = cells(increase, keys=("loss", "edge_loss"), suffix="_increase")

    def rows_for(seed: int, *arm_names: str, label: str) -> np.ndarray:
        # [prompts, C, 2 x (held-out, arms...)]: resampled together, so every set keeps its pairs.
        parts = [np.array(evals[seed][arm_names[0]]["sampling_reference"][label])]
        parts += [np.array(evals[seed][n]["sampling"][label]) for n in arm_names]
        return np.concatenate(parts, axis=-1)

    def distance(groups: list[np.ndarray], which: int) -> float:
        return float(
            np.mean([moment_distance(g[..., 2 + 2 * which : 4 + 2 * which], g[..., :2]) for g in groups])
        )

    sampling = {}
    for name in names:
        sampling[name] = {}
        for label in SAMPLE_SIZES:
            groups = [rows_for(seed, name, label=label) for seed in seeds]
            value, interval = grouped_interval(groups, lambda g: distance(g, 0), rng)
            sampling[name][label] = {"w2": value, "w2_ci95": interval}
            shifts = [evals[seed][name].get("sampling_shifts", {}).get(label) for seed in seeds]
            if shifts[0] is not None:
                sampling[name][label]["snr_shift"] = shifts[0]
    sampling_paired = {}
    for x, y in PAIRS:
        if x in names and y in names:
            sampling_paired[f"{x}-{y}"] = {}
            for label in SAMPLE_SIZES:
                groups = [rows_for(seed, x, y, label=label) for seed in seeds]
                value, interval = grouped_interval(groups, lambda g: distance(g, 0) - distance(g, 1), rng)
                sampling_paired[f"{x}-{y}"][label] = {"w2": value, "w2_ci95": interval}
    return {
        "arms": arms,
        "paired": paired,
        "probes": probes,
        "sampling": sampling,
        "sampling_paired": sampling_paired,
    }


def format_compact(summary: dict, key: str) -> str:
    """One row per aspect: every arm's mean [95 % CI] and the paired differences, for ``key``
    (``loss``, ``edge_loss`` or ``own_loss``)."""
    names = [n for n in (REFERENCE, *ARMS) if n in summary["arms"]]
    pairs = [f"{x}-{y}" for x, y in PAIRS if f"{x}-{y}" in summary["paired"]]
    header = ["aspect", *names, *(f"{p.replace('-', ' − ')} (paired)" for p in pairs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for aspect in ASPECTS:
        cells = [aspect]
        for source, keys in ((summary["arms"], names), (summary["paired"], pairs)):
            for name in keys:
                entry = source[name][aspect]
                lo, hi = entry[f"{key}_ci95"]
                cells.append(f"{entry[key]:.4f} [{lo:.4f}, {hi:.4f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_sampling(summary: dict) -> str:
    names = list(summary["sampling"])
    pairs = list(summary["sampling_paired"])
    header = ["size", *names, *(f"{p.replace('-', ' − ')} (paired)" for p in pairs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, (aspect, _, _) in SAMPLE_SIZES.items():
        cells = [f"{label} ({aspect})"]
        for source, keys in ((summary["sampling"], names), (summary["sampling_paired"], pairs)):
            for name in keys:
                entry = source[name][label]
                lo, hi = entry["w2_ci95"]
                shift = f" s={entry['snr_shift']:.2f}" if "snr_shift" in entry else ""
                cells.append(f"{entry['w2']:.4f} [{lo:.4f}, {hi:.4f}]{shift}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_per_seed(per_seed: dict, key: str = "loss") -> str:
    """The paired differences of each seed (does a result hold across seeds?)."""
    seeds = list(per_seed)
    pairs = [f"{x}-{y}" for x, y in PAIRS if all(f"{x}-{y}" in per_seed[s]["paired"] for s in seeds)]
    header = ["pair", "aspect", *(f"seed {s}" for s in seeds)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for pair in pairs:
        for aspect in ASPECTS:
            cells = [pair.replace("-", " − "), aspect]
            for seed in seeds:
                entry = per_seed[seed]["paired"][pair][aspect]
                lo, hi = entry[f"{key}_ci95"]
                cells.append(f"{entry[key]:+.4f} [{lo:+.4f}, {hi:+.4f}]")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in ARMS if a in summary["arms"]]
    colours = {"a": "#888888", "b": "#1f77b4", "c": "#ff7f0e", "d": "#2ca02c"}
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.4))
    aspects = list(ASPECTS)
    width = 0.8 / len(arms)

    def bars(ax, xs, entries, key, bar_width, **style):
        means = np.array([e[key] for e in entries])
        lows = means - np.array([e[f"{key}_ci95"][0] for e in entries])
        highs = np.array([e[f"{key}_ci95"][1] for e in entries]) - means
        ax.bar(xs, means, bar_width, yerr=[lows, highs], capsize=3, **style)

    for ax, key, label in zip(
        axes, ("loss", "edge_loss"), ("whole frame", "edge region (cut by the stock crop)")
    ):
        for i, arm in enumerate(arms):
            xs = np.arange(len(aspects)) + (i - (len(arms) - 1) / 2) * width
            entries = [summary["arms"][arm][aspect] for aspect in aspects]
            bars(ax, xs, entries, key, width, color=colours[arm], label=f"{arm}: {ARMS[arm]}")
        if REFERENCE in summary["arms"]:
            for j, aspect in enumerate(aspects):
                ref = summary["arms"][REFERENCE][aspect][key]
                ax.hlines(ref, j - 0.45, j + 0.45, colors="black", linestyles="dotted")
        ax.set_xticks(np.arange(len(aspects)), [f"{a}\n{ASPECTS[a][0]}x{ASPECTS[a][1]}" for a in aspects])
        ax.set_ylabel("held-out denoising loss (lower is better)")
        ax.set_title(label)
    axes[0].legend(fontsize=7, loc="lower left")
    # The paired differences against the stock arm: what to read (same clips, timesteps, noise).
    ax = axes[2]
    pairs = [p for p in ("b-a", "c-a", "d-a") if p in summary["paired"]]
    pair_width = 0.8 / max(1, 2 * len(pairs))
    offset = 0
    for pair in pairs:
        for key, hatch in (("loss", None), ("edge_loss", "//")):
            xs = np.arange(len(aspects)) + (offset - (2 * len(pairs) - 1) / 2) * pair_width
            entries = [summary["paired"][pair][aspect] for aspect in aspects]
            bars(
                ax, xs, entries, key, pair_width, color=colours[pair[0]], hatch=hatch,
                edgecolor="white" if hatch else None,
                label=f"{pair.replace('-', ' − ')}, {'whole frame' if key == 'loss' else 'edge region'}",
            )  # fmt: skip
            offset += 1
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(aspects)), [f"{a}\n{ASPECTS[a][0]}x{ASPECTS[a][1]}" for a in aspects])
    ax.set_ylabel("paired difference against a (below 0: better than stock)")
    ax.set_title("against the stock crop, paired, 95 % interval")
    ax.legend(fontsize=7, loc="lower right")
    # Sampling: distance of generated to held-out clips per size.
    ax = axes[3]
    sampled = [a for a in arms if a in summary.get("sampling", {})]
    labels = list(SAMPLE_SIZES)
    sample_width = 0.8 / max(1, len(sampled))
    for i, arm in enumerate(sampled):
        xs = np.arange(len(labels)) + (i - (len(sampled) - 1) / 2) * sample_width
        entries = [summary["sampling"][arm][label] for label in labels]
        bars(ax, xs, entries, "w2", sample_width, color=colours[arm], label=arm)
    ax.set_xticks(
        np.arange(len(labels)), [f"{label}\n{SAMPLE_SIZES[label][0]}" for label in labels], fontsize=7
    )
    ax.set_ylabel("W2² generated vs held-out latents (lower is better)")
    ax.set_title("sampled at each size (held-out prompts)")
    ax.legend(fontsize=7)
    fig.suptitle(title + "  (dotted: untrained)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)  # a run stopped half-way leaves no half-written result


def prepare_seed(seed_dir: Path, preset_name: str, preset: dict, seed: int) -> tuple[list, list, Path]:
    """The seed's clips and model, written once and reused by a later run with the same --out."""
    marker = seed_dir / "prepared.json"
    found = read_json(marker)
    if found and found.get("preset") == preset_name and found.get("settings") == preset:
        return found["train"], found["heldout"], Path(found["model"])
    train = write_split(seed_dir / "data" / "train", preset["train_clips"], seed=seed)
    heldout = write_split(seed_dir / "data" / "heldout", preset["eval_clips"], seed=seed + 1_000_003)
    model = build_model(seed_dir, seed=seed)
    write_json(
        marker,
        {"preset": preset_name, "settings": preset, "train": train, "heldout": heldout, "model": str(model)},
    )
    return train, heldout, model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for data, model, LoRAs and results")
    parser.add_argument(
        "--quick", action="store_true", help="a reduced run (~5 min per arm and seed) for checks"
    )
    parser.add_argument("--preset", choices=list(PRESETS), default=None, help="full, quick or smoke (a test)")
    parser.add_argument("--seed", type=int, default=0, help="one seed (when --seeds is not given)")
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma list of seeds (e.g. 0,1,2): each gets its own clips, model and training; results "
        "pooled over seeds and per seed",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, here and in each trainer (2 on an idle 2-core machine)",
    )
    parser.add_argument("--arms", default="a,b,c", help=f"comma list of arms to run ({', '.join(ARMS)})")
    parser.add_argument(
        "--trainer",
        default=None,
        help="training script (default: $COGVX_EXT_TRAINER, else cogvx-ext's minimal trainer)",
    )
    args = parser.parse_args(argv)
    preset_name = args.preset or ("quick" if args.quick else "full")
    preset = PRESETS[preset_name]
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown arm {unknown[0]!r}; choose from {', '.join(ARMS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else [args.seed]
    except ValueError:
        parser.error(f"--seeds {args.seeds}: give a comma list of integers (e.g. 0,1,2)")
    if not seeds or len(set(seeds)) != len(seeds):
        parser.error(f"--seeds {args.seeds}: give distinct integers")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from cogvx_ext.trainers import minimal_trainer

    trainer = Path(args.trainer or os.environ.get("COGVX_EXT_TRAINER") or minimal_trainer("t2v"))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timing: dict[str, float] = {}

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", flush=True)

    say(f"preset {preset_name}: {preset}; arms {','.join(arms)}; seeds {seeds}; writing to {out}")
    evals: dict[int, dict[str, dict]] = {}
    records: dict[int, list[dict]] = {}
    for seed in seeds:
        seed_dir = out / f"seed{seed}"
        step_started = time.perf_counter()
        train_records, eval_records, model = prepare_seed(seed_dir, preset_name, preset, seed)
        timing[f"seed{seed}_data_and_model_s"] = time.perf_counter() - step_started
        records[seed] = eval_records
        say(
            f"seed {seed}: {len(train_records)} training clips, {len(eval_records)} held-out clips, model {model}"
        )
        evaluator = None
        evals[seed] = {}
        for name in (REFERENCE, *arms):
            # Each (seed, arm) is saved when it finishes; a rerun with the same --out reuses it.
            result_path = seed_dir / "eval" / f"{name}.json"
            command = (
                None
                if name == REFERENCE
                else arm_command(
                    name, trainer, model, seed_dir / "data" / "train", seed_dir / "arms" / name, preset, seed
                )
            )
            found = read_json(result_path)
            key = {"preset": preset_name, "command": command, "evaluation": EVALUATION}
            if found and all(found.get(k) == v for k, v in key.items()):
                evals[seed][name] = found
                say(f"seed {seed}, {name}: reused {result_path}")
                continue
            lora_dir = None
            if name != REFERENCE:
                lora_dir = seed_dir / "arms" / name
                trained = read_json(lora_dir / "trained.json")
                if trained and trained.get("command") == command:
                    timing[f"seed{seed}_train_{name}_s"] = trained["train_s"]
                    say(f"seed {seed}, arm {name}: reused the LoRA in {lora_dir}")
                else:
                    say(f"seed {seed}, arm {name} ({ARMS[name]}): training {preset['steps']} steps")
                    seconds = train_arm(name, command, lora_dir, args.threads)
                    write_json(lora_dir / "trained.json", {"command": command, "train_s": round(seconds, 1)})
                    timing[f"seed{seed}_train_{name}_s"] = seconds
                    say(f"seed {seed}, arm {name}: trained in {seconds:.0f} s")
            step_started = time.perf_counter()
            if evaluator is None:
                evaluator = Evaluator(model, eval_records, seed_dir / "data" / "heldout", preset, seed)
            result = {**key, **evaluator.arm(name, lora_dir)}
            result["train_s"] = round(timing.get(f"seed{seed}_train_{name}_s", 0.0), 1)
            result["evaluate_s"] = round(time.perf_counter() - step_started, 1)
            write_json(result_path, result)
            evals[seed][name] = result
            say(f"seed {seed}, {name}: evaluated in {result['evaluate_s']:.0f} s -> {result_path}")

    summary = summarise(evals, records, seeds)
    per_seed = {str(seed): summarise({seed: evals[seed]}, {seed: records[seed]}, [seed]) for seed in seeds}
    timing["total_s"] = time.perf_counter() - started
    timesteps = next(iter(evals[seeds[0]].values()))["timesteps"]
    results = {
        "command": " ".join(
            ["python", "benchmarks/quality/run.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "preset": preset_name,
        "seeds": seeds,
        "settings": {
            **preset,
            "threads": args.threads,
            "aspects": {k: f"{w}x{h}" for k, (w, h) in ASPECTS.items()},
            "stock_size": f"{STOCK_SIZE[0]}x{STOCK_SIZE[1]}",
            "frames": FRAMES,
            "learning_rate": LEARNING_RATE,
            "lora_rank": RANK,
            "transformer": TRANSFORMER,
            "timesteps": timesteps,
            "trainer": str(trainer),
            "arms": {a: ARMS[a] for a in arms},
            "snr_shift_reference": SNR_REFERENCE,
            "sample_sizes": {label: aspect for label, (aspect, _, _) in SAMPLE_SIZES.items()},
        },
        **summary,
        "per_seed": per_seed,
        "per_clip": {
            str(seed): {
                name: [
                    {"path": r["path"], "aspect": r["aspect"], **dict(zip(LOSS_KEYS, row))}
                    for r, row in zip(records[seed], result["per_clip"])
                ]
                for name, result in evals[seed].items()
            }
            for seed in seeds
        },
        "timing": {k: round(v, 1) for k, v in timing.items()},
    }
    write_json(out / "results.json", results)
    sections = [
        ("loss", "Whole frame, the model's own noise schedule (the same for every arm)"),
        ("edge_loss", "Edge region (what the stock crop cuts away)"),
        (
            "own_loss",
            "Whole frame, each arm's own training noise schedule (arm d: the shift of the clip's size)",
        ),
    ]
    compact = "\n\n".join(f"{label}:\n\n{format_compact(summary, key)}" for key, label in sections)
    compact += (
        "\n\nSampling (W2² between generated and held-out latents per channel; lower is better):\n\n"
        + format_sampling(summary)
    )
    if len(seeds) > 1:
        compact += "\n\nPaired whole-frame loss differences per seed:\n\n" + format_per_seed(per_seed)
    (out / "table.md").write_text(compact + "\n", encoding="utf-8")
    title = (
        f"tiny CogVideoX-5b, {preset['steps']} steps x batch {preset['batch']}, {preset['train_clips']} train / "
        f"{preset['eval_clips']} held-out clips per aspect, seeds {','.join(map(str, seeds))}"
    )
    plot(summary, out / "quality.png", title)
    print(compact)
    say(f"done in {timing['total_s']:.0f} s: {out / 'results.json'}, {out / 'quality.png'}")
    if not all(math.isfinite(e["loss"]) for per in summary["arms"].values() for e in per.values()):
        print("warning: a loss is not finite", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
