"""Does training at each clip's own aspect help? A measured experiment on a small CogVideoX-5b.

One command::

    python benchmarks/quality/run.py --out DIR [--quick] [--threads 1] [--seed 0] [--trainer SCRIPT]

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
4. **Evaluation** at each held-out clip's own size, RoPE from the pipeline
   (``CogVideoXPipeline._prepare_rotary_positional_embeddings``), LoRA loaded into the pipeline
   with ``load_lora_weights``: the training loss (v-prediction turned into a clean-sample
   estimate, weighted 1 / (1 - alpha_bar), as the script) over a fixed grid of timesteps and
   noise seeds, the same for every arm; also over the edge region only (latent cells outside the
   window a stock 3:2 centre crop keeps). Per aspect: the mean over clips, a bootstrap 95 %
   interval (clips resampled), and the paired difference between arms with its interval.
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
}
REFERENCE = "untrained"
# What the model uses, probed on arm b (see clip_losses): how much the loss rises without each input.
PROBED_ARM = "b"
PROBES = ("other_prompt", "no_rope", "stock_rope")

PRESETS = {
    # clips per aspect (train, held out), optimizer steps, timesteps in the grid, noise seeds
    "full": dict(train_clips=16, eval_clips=16, steps=600, timesteps=10, noise_seeds=2, batch=4),
    "quick": dict(train_clips=8, eval_clips=8, steps=120, timesteps=5, noise_seeds=1, batch=4),
    # For the test that keeps the code path alive: seconds, measures nothing.
    "smoke": dict(train_clips=1, eval_clips=1, steps=1, timesteps=2, noise_seeds=1, batch=1),
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
    plugins = (
        "aspect_bucket,rope_rescale" if arm == "b" else f"aspect_bucket,{HERE / 'stock_rope.py'}:StockRope"
    )
    return [
        sys.executable,
        "-m",
        "cogvx_ext",
        str(trainer),
        *script_args,
        "--buckets",
        buckets,
        "--plugins",
        plugins,
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
    pipe, item: dict, timesteps: list[int], noise_seeds: int, seed: int, probe: str | None = None
) -> tuple[float, float]:
    """(whole-frame loss, edge-region loss) of one clip: the script's loss, averaged over the grid.

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
    scheduler = pipe.scheduler
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


def evaluate(
    model: Path, lora_dirs: dict[str, Path], eval_root: Path, records: list[dict], preset: dict, seed: int
):
    """Per arm (and the untrained reference), per held-out clip: (loss, edge loss)."""
    import torch
    from diffusers import CogVideoXPipeline

    pipe = CogVideoXPipeline.from_pretrained(model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    items = prepare_eval_inputs(pipe, records, eval_root, seed)
    timesteps = timestep_grid(preset["timesteps"], pipe.scheduler.config.num_train_timesteps)
    per_clip: dict[str, list[tuple[float, float]]] = {}
    per_clip[REFERENCE] = [clip_losses(pipe, item, timesteps, preset["noise_seeds"], seed) for item in items]
    for arm, lora_dir in lora_dirs.items():
        # The script saves the LoRA in diffusers' format; the pipeline loads it as users do.
        pipe.load_lora_weights(str(lora_dir), adapter_name=f"arm_{arm}")
        pipe.set_adapters([f"arm_{arm}"], [1.0])  # lora_alpha = rank
        per_clip[arm] = [clip_losses(pipe, item, timesteps, preset["noise_seeds"], seed) for item in items]
        if arm == PROBED_ARM:
            for probe in PROBES:
                per_clip[f"{arm}|{probe}"] = [
                    clip_losses(pipe, item, timesteps, preset["noise_seeds"], seed, probe=probe)
                    for item in items
                ]
        pipe.delete_adapters([f"arm_{arm}"])
    return per_clip, timesteps


def per_aspect(values: np.ndarray, aspects: list[str], rng: np.random.Generator, suffix: str = "") -> dict:
    """Per aspect: the mean and bootstrap 95 % interval of the whole-frame and edge columns of
    ``values`` ([clips, 2]) over that aspect's clips; keys ``loss{suffix}``, ``edge_loss{suffix}``."""
    out = {}
    for aspect in ASPECTS:
        rows = values[[a == aspect for a in aspects]]
        out[aspect] = {
            f"loss{suffix}": float(rows[:, 0].mean()),
            f"loss{suffix}_ci95": bootstrap_interval(rows[:, 0], rng),
            f"edge_loss{suffix}": float(rows[:, 1].mean()),
            f"edge_loss{suffix}_ci95": bootstrap_interval(rows[:, 1], rng),
        }
    return out


def summarise(per_clip: dict, records: list[dict], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    aspects = [r["aspect"] for r in records]
    results: dict = {}
    for name, losses in per_clip.items():
        if "|" not in name:
            results[name] = per_aspect(np.array(losses), aspects, rng)
            for aspect, row in results[name].items():
                row["clips"] = aspects.count(aspect)
    # Paired differences (same clips, timesteps and noise): negative means the first arm is better.
    paired: dict = {}
    for first, second in (("b", "a"), ("c", "a"), ("b", "c")):
        if first in per_clip and second in per_clip:
            diff = np.array(per_clip[first]) - np.array(per_clip[second])
            paired[f"{first}-{second}"] = per_aspect(diff, aspects, rng)
    # Probes: the loss of the probed arm with one input changed, minus its loss (paired).
    probes: dict = {}
    for name, losses in per_clip.items():
        if "|" in name:
            arm, probe = name.split("|")
            diff = np.array(losses) - np.array(per_clip[arm])
            probes[probe] = per_aspect(diff, aspects, rng, suffix="_increase")
    return {"arms": results, "paired": paired, "probes": probes}


def format_compact(summary: dict, key: str) -> str:
    """One row per aspect: every arm's mean [95 % CI] and the paired differences, for ``key``
    (``loss`` or ``edge_loss``)."""
    names = [n for n in (REFERENCE, *ARMS) if n in summary["arms"]]
    pairs = [p for p in ("b-a", "c-a", "b-c") if p in summary["paired"]]
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


def format_table(summary: dict) -> str:
    def cell(entry: dict, key: str) -> str:
        lo, hi = entry[f"{key}_ci95"]
        return f"{entry[key]:.4f} [{lo:.4f}, {hi:.4f}]"

    lines = [
        "| arm | aspect | loss [95 % CI] | edge-region loss [95 % CI] |",
        "|---|---|---|---|",
    ]
    for name, per_aspect in summary["arms"].items():
        label = f"{name}: {ARMS[name]}" if name in ARMS else name
        for aspect, entry in per_aspect.items():
            lines.append(f"| {label} | {aspect} | {cell(entry, 'loss')} | {cell(entry, 'edge_loss')} |")
    if summary["paired"]:
        lines += [
            "",
            "| paired difference | aspect | loss [95 % CI] | edge-region loss [95 % CI] |",
            "|---|---|---|---|",
        ]
        for key, per_aspect in summary["paired"].items():
            for aspect, entry in per_aspect.items():
                lines.append(f"| {key} | {aspect} | {cell(entry, 'loss')} | {cell(entry, 'edge_loss')} |")
    if summary.get("probes"):
        lines += [
            "",
            f"| arm {PROBED_ARM} evaluated with | aspect | loss increase [95 % CI] | edge-region loss increase [95 % CI] |",
            "|---|---|---|---|",
        ]
        for probe, per_aspect in summary["probes"].items():
            for aspect, entry in per_aspect.items():
                lines.append(
                    f"| {probe} | {aspect} | {cell(entry, 'loss_increase')} | {cell(entry, 'edge_loss_increase')} |"
                )
    return "\n".join(lines)


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in ARMS if a in summary["arms"]]
    colours = {"a": "#888888", "b": "#1f77b4", "c": "#ff7f0e"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    aspects = list(ASPECTS)
    width = 0.8 / len(arms)
    for ax, key, label in zip(
        axes, ("loss", "edge_loss"), ("whole frame", "edge region (cut by the stock crop)")
    ):
        for i, arm in enumerate(arms):
            entries = [summary["arms"][arm][aspect] for aspect in aspects]
            means = np.array([e[key] for e in entries])
            lows = means - np.array([e[f"{key}_ci95"][0] for e in entries])
            highs = np.array([e[f"{key}_ci95"][1] for e in entries]) - means
            xs = np.arange(len(aspects)) + (i - (len(arms) - 1) / 2) * width
            ax.bar(
                xs,
                means,
                width,
                yerr=[lows, highs],
                capsize=3,
                color=colours[arm],
                label=f"{arm}: {ARMS[arm]}",
            )
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
    pairs = [p for p in ("b-a", "c-a") if p in summary["paired"]]
    pair_width = 0.8 / max(1, 2 * len(pairs))
    offset = 0
    for pair in pairs:
        for key, hatch in (("loss", None), ("edge_loss", "//")):
            entries = [summary["paired"][pair][aspect] for aspect in aspects]
            means = np.array([e[key] for e in entries])
            lows = means - np.array([e[f"{key}_ci95"][0] for e in entries])
            highs = np.array([e[f"{key}_ci95"][1] for e in entries]) - means
            xs = np.arange(len(aspects)) + (offset - (2 * len(pairs) - 1) / 2) * pair_width
            ax.bar(
                xs,
                means,
                pair_width,
                yerr=[lows, highs],
                capsize=3,
                color=colours[pair[0]],
                hatch=hatch,
                edgecolor="white" if hatch else None,
                label=f"{pair.replace('-', ' − ')}, {'whole frame' if key == 'loss' else 'edge region'}",
            )
            offset += 1
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(aspects)), [f"{a}\n{ASPECTS[a][0]}x{ASPECTS[a][1]}" for a in aspects])
    ax.set_ylabel("paired difference against a (below 0: better than stock)")
    ax.set_title("against the stock crop, paired, 95 % interval")
    ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title + "  (dotted: untrained)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for data, model, LoRAs and results")
    parser.add_argument("--quick", action="store_true", help="a reduced run (~5 min) for checks")
    parser.add_argument("--preset", choices=list(PRESETS), default=None, help="full, quick or smoke (a test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, here and in each trainer (2 on an idle 2-core machine)",
    )
    parser.add_argument("--arms", default="a,b,c", help="comma list of arms to run")
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

    say(f"preset {preset_name}: {preset}; writing to {out}")
    train_records = write_split(out / "data" / "train", preset["train_clips"], seed=args.seed)
    eval_records = write_split(out / "data" / "heldout", preset["eval_clips"], seed=args.seed + 1_000_003)
    model = build_model(out, seed=args.seed)
    timing["data_and_model_s"] = time.perf_counter() - started
    say(f"{len(train_records)} training clips, {len(eval_records)} held-out clips, model {model}")

    lora_dirs = {}
    for arm in arms:
        arm_dir = out / "arms" / arm
        command = arm_command(arm, trainer, model, out / "data" / "train", arm_dir, preset, args.seed)
        say(f"arm {arm} ({ARMS[arm]}): training {preset['steps']} steps")
        timing[f"train_{arm}_s"] = train_arm(arm, command, arm_dir, args.threads)
        lora_dirs[arm] = arm_dir
        say(f"arm {arm}: trained in {timing[f'train_{arm}_s']:.0f} s")

    eval_started = time.perf_counter()
    per_clip, timesteps = evaluate(
        model, lora_dirs, out / "data" / "heldout", eval_records, preset, args.seed
    )
    timing["evaluate_s"] = time.perf_counter() - eval_started
    summary = summarise(per_clip, eval_records, args.seed)
    timing["total_s"] = time.perf_counter() - started
    results = {
        "command": " ".join(
            ["python", "benchmarks/quality/run.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "preset": preset_name,
        "settings": {
            **preset,
            "seed": args.seed,
            "threads": args.threads,
            "aspects": {k: f"{w}x{h}" for k, (w, h) in ASPECTS.items()},
            "stock_size": f"{STOCK_SIZE[0]}x{STOCK_SIZE[1]}",
            "frames": FRAMES,
            "learning_rate": LEARNING_RATE,
            "lora_rank": RANK,
            "transformer": TRANSFORMER,
            "timesteps": timesteps,
            "trainer": str(trainer),
            "arms": ARMS,
        },
        **summary,
        "per_clip": {
            name: [
                {"path": r["path"], "aspect": r["aspect"], "loss": loss, "edge_loss": edge}
                for r, (loss, edge) in zip(eval_records, losses)
            ]
            for name, losses in per_clip.items()
        },
        "timing": {k: round(v, 1) for k, v in timing.items()},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    table = format_table(summary)
    compact = "\n\n".join(
        f"{label}:\n\n{format_compact(summary, key)}"
        for key, label in (
            ("loss", "Whole frame"),
            ("edge_loss", "Edge region (what the stock crop cuts away)"),
        )
    )
    (out / "table.md").write_text(compact + "\n\n" + table + "\n", encoding="utf-8")
    title = (
        f"tiny CogVideoX-5b, {preset['steps']} steps x batch {preset['batch']}, {preset['train_clips']} train / "
        f"{preset['eval_clips']} held-out clips per aspect, seed {args.seed}"
    )
    plot(summary, out / "quality.png", title)
    print(table)
    say(f"done in {timing['total_s']:.0f} s: {out / 'results.json'}, {out / 'quality.png'}")
    if not all(math.isfinite(e["loss"]) for per in summary["arms"].values() for e in per.values()):
        print("warning: a loss is not finite", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
