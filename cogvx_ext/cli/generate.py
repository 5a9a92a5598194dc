"""``cogvx-ext generate``: one video from a base model and a trained LoRA, the way training saw it.

The LoRA's record (``cogvx_ext.json``, written by the training run) gives the pipeline the run's
RoPE mode and 5b-I2V table adaptation (``prepare_pipeline``) and the LoRA's scale
(``--lora_alpha / --rank``, as the scripts' final validation loads it), so any bucket size works
as it did in training. The video is written with PyAV, which the package installs. Every mistake
the flags and files already show is one line before the model loads.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from cogvx_ext.base.errors import OneLineParser, UsageError

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="cogvx-ext generate",
        description="Generate a video with a base CogVideoX model and a LoRA trained with cogvx-ext, "
        "positions set up as in training.",
    )
    p.add_argument(
        "--model", required=True, metavar="PATH_OR_ID", help="the base model: a folder or a Hub id"
    )
    p.add_argument(
        "--lora", required=True, metavar="DIR", help="the training run's --output_dir (or a checkpoint-N)"
    )
    p.add_argument("--prompt", required=True, metavar="TEXT")
    p.add_argument(
        "--size", required=True, metavar="WxH", help="WIDTHxHEIGHT, multiples of 16 (e.g. 1024x576)"
    )
    p.add_argument("--frames", required=True, type=int, metavar="N", help="4k+1 frames (e.g. 49)")
    p.add_argument(
        "--image",
        metavar="FILE",
        help="the first frame, for image-to-video models (centre-cropped to --size's aspect)",
    )
    p.add_argument("--out", required=True, metavar="FILE.mp4", help="the mp4 to write")
    p.add_argument("--steps", type=int, default=50, metavar="N", help="denoising steps (default: 50)")
    p.add_argument(
        "--guidance", type=float, default=6.0, metavar="X", help="classifier-free guidance scale (default: 6)"
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="(default: 0)")
    p.add_argument(
        "--fps", type=float, help="frame rate of the file (default: 8 for CogVideoX 1.0, 16 for 1.5)"
    )
    p.add_argument(
        "--lora_scale", type=float, help="the LoRA's weight (default: as trained, --lora_alpha / --rank)"
    )
    p.add_argument(
        "--dtype", choices=sorted(DTYPES), help="weights' type (default: bf16 on a GPU, fp32 on the CPU)"
    )
    p.add_argument(
        "--cpu_offload",
        action="store_true",
        help="keep each model on the CPU until it runs (less GPU memory)",
    )
    p.add_argument("--vae_tiling", action="store_true", help="decode in tiles (less memory at large sizes)")
    return p


def run_generate(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    width, height = parse_size(args.size)
    check_frames(args.frames)
    if args.steps < 1:
        raise UsageError(f"--steps {args.steps}: at least 1")
    out = check_out(args.out)
    record = check_lora(args.lora)
    model_config = read_model_config(args.model)
    from cogvx_ext.model.facts import ModelInfo

    model = ModelInfo.from_config(model_config["transformer"])
    i2v = "ImageToVideo" in model_config["pipeline"] or model.is_i2v
    check_image(args, i2v, args.model)
    check_positions(model, record, width, height, args.lora)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, DTYPES[args.dtype or ("bf16" if device == "cuda" else "fp32")])
    pipe = load_pipeline(args, i2v, dtype, record)
    if args.cpu_offload and device == "cuda":
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    if args.vae_tiling:
        pipe.vae.enable_tiling()
    fps = args.fps or (16 if model.version == "1.5" else 8)
    extra: dict[str, Any] = {}
    if i2v:
        extra["image"] = first_frame(args.image, width, height)
    # The LoRA's SNR shift at this size (snr_shift); the scheduler applies it at every step.
    shift_for = getattr(pipe.scheduler, "_cogvx_shift_for", None)
    shift = (
        f", SNR shift {shift_for(model.latent_shape(args.frames, height, width)):.3g}" if shift_for else ""
    )
    say(
        f"generating {width}x{height}, {args.frames} frames, {args.steps} steps on {device} ({model.name}){shift}"
    )
    started = time.monotonic()
    video = pipe(
        prompt=args.prompt,
        height=height,
        width=width,
        num_frames=args.frames,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=torch.Generator(device="cpu").manual_seed(args.seed),
        output_type="np",
        **extra,
    ).frames[0]
    from cogvx_ext.data.video_writer import write_video

    w, h, n = write_video(out, video, fps=fps, title=args.prompt)
    say(f"wrote {out} ({w}x{h}, {n} frames at {fps:g} fps) in {time.monotonic() - started:.1f} s")
    return 0


def say(message: str) -> None:
    sys.stderr.write(f"cogvx-ext: {message}\n")
    sys.stderr.flush()


def parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"--size {text!r}: give WIDTHxHEIGHT, e.g. 1024x576")
    width, height = map(int, parts)
    if width % 16 or height % 16:
        nearest = f"{_nearest_multiple(width, 16)}x{_nearest_multiple(height, 16)}"
        raise UsageError(
            f"--size {width}x{height}: sides must be multiples of 16; the nearest size is {nearest}"
        )
    return width, height


def _nearest_multiple(value: int, step: int) -> int:
    return max(step, (value + step // 2) // step * step)


def check_frames(frames: int) -> None:
    if frames < 1 or (frames - 1) % 4:
        below = max(1, (frames - 1) // 4 * 4 + 1)
        above = below + 4 if frames > below else below
        nearest = f"are {below} and {above}" if above != below else f"is {below}"
        raise UsageError(
            f"--frames {frames}: CogVideoX makes 4k+1 frames (1, 5, ..., 49, ...); the nearest {nearest}"
        )


def check_out(path: str) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".mp4":
        raise UsageError(f"--out {path}: the file is written as mp4; give a name ending in .mp4")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot make its folder ({exc.strerror})") from None
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"--out {path}: its folder {out.parent} is not writable; choose another place")
    return out


def check_lora(lora: str) -> dict[str, Any] | None:
    from cogvx_ext.plugin.lora_record import read_metadata

    folder = Path(lora)
    if not folder.is_dir():
        raise UsageError(f"--lora {lora}: no such folder (give the training run's --output_dir)")
    if not any(folder.glob("*.safetensors")):
        raise UsageError(
            f"--lora {lora}: no LoRA weights (*.safetensors) in it; give the training run's --output_dir "
            "or one of its checkpoint-N folders"
        )
    return read_metadata(folder)


def read_model_config(model: str) -> dict[str, Any]:
    """``{"pipeline": class name, "transformer": config}`` from a local folder or the Hub (or its cache)."""
    names = ("model_index.json", "transformer/config.json")
    if os.path.isdir(model):
        paths = [os.path.join(model, name) for name in names]
        missing = [name for name, path in zip(names, paths) if not os.path.isfile(path)]
        if missing:
            raise UsageError(f"--model {model}: not a diffusers CogVideoX folder (no {missing[0]})")
    elif model.startswith((".", "/", "~")) or model.count("/") > 1:  # a path; a Hub id is ORG/NAME
        raise UsageError(f"--model {model}: no such folder")
    else:
        from huggingface_hub import hf_hub_download

        try:
            paths = [hf_hub_download(model, name) for name in names]
        except Exception as exc:  # offline, unknown id, no access: say which
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(
                f"--model {model}: not a local folder, and the Hub (or its cache) did not give its config: {reason}"
            ) from None
    with open(paths[0], encoding="utf-8") as f:
        pipeline = json.load(f).get("_class_name", "")
    with open(paths[1], encoding="utf-8") as f:
        transformer = json.load(f)
    if not pipeline.startswith("CogVideoX"):
        raise UsageError(f"--model {model}: a {pipeline or 'non-diffusers'} model, not CogVideoX")
    return {"pipeline": pipeline, "transformer": transformer}


def check_image(args, i2v: bool, model: str) -> None:
    if i2v and not args.image:
        raise UsageError(
            f"--model {model} is an image-to-video model: give the first frame with --image FILE"
        )
    if not i2v and args.image:
        raise UsageError(f"--image is for image-to-video models; {model} makes videos from text alone")
    if args.image and not os.path.isfile(args.image):
        raise UsageError(f"--image {args.image}: no such file")


def check_positions(model, record: dict[str, Any] | None, width: int, height: int, lora: str) -> None:
    """5b-I2V's learned position table has one size; another needs the run's table adaptation."""
    from cogvx_ext.model.facts import VAE_SPATIAL

    trained = (model.sample_width * VAE_SPATIAL, model.sample_height * VAE_SPATIAL)
    plugins = (record or {}).get("plugins", [])
    if model.learned_posemb and (width, height) != trained and "posemb_adapt" not in plugins:
        raise UsageError(
            f"--size {width}x{height}: {model.name} has a learned position table for "
            f"{trained[0]}x{trained[1]} only, and the LoRA in {lora} was not trained with posemb_adapt "
            f"(its plugins: {', '.join(plugins) or 'none recorded'}); generate at {trained[0]}x{trained[1]}"
        )


def load_pipeline(args, i2v: bool, dtype, record: dict[str, Any] | None):
    import diffusers

    from cogvx_ext.plugin.lora_pipeline import prepare_pipeline

    pipe_class = diffusers.CogVideoXImageToVideoPipeline if i2v else diffusers.CogVideoXPipeline
    say(f"loading {args.model}")
    pipe = pipe_class.from_pretrained(args.model, **{_dtype_keyword(): dtype})
    scale = args.lora_scale if args.lora_scale is not None else (record or {}).get("lora_scale")
    prepare_pipeline(pipe, args.lora, lora_scale=scale)
    if record is None:
        say(f"LoRA {args.lora}: no cogvx_ext.json beside it, so the pipeline keeps its stock positions")
    else:
        settings = record.get("settings", {})
        shown = ", ".join(f"{k} {settings[k]}" for k in ("rope_mode", "posemb_mode") if k in settings)
        say(
            f"LoRA {args.lora}: plugins {', '.join(record.get('plugins', [])) or 'none'}"
            + (f"; {shown}" if shown else "")
            + (f"; scale {scale:g}" if scale is not None else "")
        )
    return pipe


def _dtype_keyword() -> str:
    # diffusers renamed from_pretrained's torch_dtype to dtype (and warns on the old name) in the
    # releases that resolve the two; the older ones know torch_dtype only.
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def first_frame(path: str, width: int, height: int):
    """The image, centre-cropped to the aspect of ``width x height`` (the pipeline would stretch it)."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    w, h = image.size
    if w * height > h * width:  # wider than the target
        crop_w = round(h * width / height)
        box = ((w - crop_w) // 2, 0, (w - crop_w) // 2 + crop_w, h)
    else:
        crop_h = round(w * height / width)
        box = (0, (h - crop_h) // 2, w, (h - crop_h) // 2 + crop_h)
    if box != (0, 0, w, h):
        image = image.crop(box)
        say(
            f"--image {path} ({w}x{h}) centre-cropped to {image.size[0]}x{image.size[1]}, the aspect of {width}x{height}"
        )
    return image
