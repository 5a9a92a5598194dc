"""aspect_bucket's flags and the settings a run takes from them."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from cogvx_ext.api import DEFAULT_MARGIN, UsageError, parse_bytes

from .buckets import Bucket, generate_bucket_ladder, parse_buckets
from .frames import check_frames_spec
from .sampler import REMAINDER_POLICIES

MULTIPLE = 16  # VAE 8 x patch 2


CROP_POSITIONS = ("center", "random", "none")


# With no crop (--video_reshape_mode none) the whole picture is resized to a bucket whose aspect
# differs by at most this: a stretch no one sees, where buckets in multiples of 16 are rarely exact.
NO_CROP_TOLERANCE = 0.01


def script_arg(args: argparse.Namespace, name: str, default: Any) -> Any:
    """A flag of the training script, with the script's default where a caller's namespace lacks it."""
    value = getattr(args, name, None)
    return default if value is None else value


@dataclass(frozen=True)
class BucketSettings:
    """The checked flags, and the buckets they give."""

    buckets: tuple[Bucket, ...]  # every rung, largest area first
    explicit: bool
    area: int
    max_crop: float
    upscale_limit: float
    crop_position: str
    frames_spec: str
    token_budget: int | None
    memory_budget: int | None
    memory_margin: float
    max_batch: int | None
    remainder: str
    strict: bool
    seed: int
    # What generating buckets for another area (a stage's) needs.
    height: int = 480
    width: int = 720
    min_side: int = 256
    min_side_given: bool = False
    max_side: int = 2048
    max_aspect: float = 2.4
    spacing: float = 0.03


def default_min_side(area: int, max_aspect: float) -> int:
    """256, unless the most elongated bucket of ``area`` is thinner than that."""
    thinnest = int(math.sqrt(max(area, 1) / max(max_aspect, 1.0)) // MULTIPLE) * MULTIPLE
    return max(MULTIPLE, min(256, thinnest))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``aspect_bucket`` flag group."""
    group = parser.add_argument_group(
        "aspect_bucket", "train every clip at its own aspect ratio, in batches of one shape"
    )
    group.add_argument(
        "--bucket_area",
        type=int,
        default=None,
        help="pixels per frame the generated buckets aim at (default: --height x --width)",
    )
    group.add_argument(
        "--buckets",
        type=str,
        default=None,
        help="explicit buckets instead of generated ones, WIDTHxHEIGHT: 1024x576,576x1024,768x768",
    )
    group.add_argument(
        "--bucket_min_side",
        type=int,
        default=None,
        help="shortest side of a generated bucket; smaller rungs stop here (default: 256, or less when "
        "the target area is too small for that at --bucket_max_aspect)",
    )
    group.add_argument(
        "--bucket_max_side",
        type=int,
        default=2048,
        help="longest side of a generated bucket (default: 2048)",
    )
    group.add_argument(
        "--bucket_max_aspect",
        type=float,
        default=2.4,
        help="generated buckets cover aspects 1:A to A:1 (default: 2.4)",
    )
    group.add_argument(
        "--bucket_spacing",
        type=float,
        default=0.03,
        help="the most a clip inside the aspect range loses to cropping; sets how densely "
        "buckets are generated (default: 0.03)",
    )
    group.add_argument(
        "--bucket_max_crop",
        type=float,
        default=0.25,
        help="clips that would lose more of their picture than this are skipped and reported (default: 0.25)",
    )
    group.add_argument(
        "--bucket_upscale_limit",
        type=float,
        default=1.25,
        help="a clip that would be enlarged more than this goes to a smaller bucket, or is "
        "skipped if none fits (default: 1.25)",
    )
    group.add_argument(
        "--bucket_crop",
        choices=CROP_POSITIONS,
        default=None,
        help="where the crop sits: centred, at a random place fixed per clip by the seed, or none: "
        f"the whole picture, into a bucket within {NO_CROP_TOLERANCE * 100:g}%% of its aspect, else the clip "
        "is skipped (default: the script's --video_reshape_mode, center)",
    )
    group.add_argument(
        "--bucket_frames",
        type=str,
        default="auto",
        help="frame counts: auto (longest allowed by --max_num_frames and about 2/3 and 1/3 of "
        "it), max (the longest only), or a list such as 49,33,17",
    )
    group.add_argument(
        "--bucket_token_budget",
        type=int,
        default=None,
        help="tokens per batch (video + text tokens x batch size): each shape gets the largest "
        "batch within it, so small shapes get larger batches (default: --train_batch_size "
        "for every shape)",
    )
    group.add_argument(
        "--bucket_memory_budget",
        type=str,
        default=None,
        help="accelerator memory per process, e.g. 24GiB or 80GB: each shape gets the largest batch "
        "whose estimated peak (cogvx_ext.api.estimate) stays within it less --bucket_memory_margin; a shape "
        "that does not fit at batch 1 stops the run before any model loads, saying what would fit",
    )
    group.add_argument(
        "--bucket_memory_margin",
        type=float,
        default=DEFAULT_MARGIN,
        help="fraction of --bucket_memory_budget kept free for what the estimate leaves out: the "
        f"allocator's reserve, the CUDA context, kernels' workspaces (default: {DEFAULT_MARGIN})",
    )
    group.add_argument(
        "--bucket_max_batch",
        type=int,
        default=None,
        help="largest batch the token budget may give (default: no limit but the bucket's clip count)",
    )
    group.add_argument(
        "--bucket_remainder",
        choices=REMAINDER_POLICIES,
        default="fill",
        help="a bucket's last, short batch: fill it with other clips of the bucket (default; "
        "no clip is lost), drop it, or keep it partial (one process only)",
    )
    group.add_argument(
        "--bucket_strict", action="store_true", help="stop before training if any clip would be skipped"
    )
    group.add_argument(
        "--bucket_seed",
        type=int,
        default=None,
        help="seed of the batch order and random crops (default: --seed, or 0)",
    )


def configure(args: argparse.Namespace) -> BucketSettings:
    """The settings of a run from its flags; a mistake is a UsageError naming the flag."""
    height = script_arg(args, "height", 480)
    width = script_arg(args, "width", 720)
    min_side_given = args.bucket_min_side is not None
    if not min_side_given:
        area = args.bucket_area if args.bucket_area is not None else height * width
        args.bucket_min_side = default_min_side(area, args.bucket_max_aspect)
    for flag, value, low in (
        ("--bucket_min_side", args.bucket_min_side, MULTIPLE),
        ("--bucket_max_side", args.bucket_max_side, MULTIPLE),
    ):
        if value < low:
            raise UsageError(f"{flag} must be at least {low}, not {value}")
    if args.bucket_max_side < args.bucket_min_side:
        raise UsageError(
            f"--bucket_max_side {args.bucket_max_side} is below --bucket_min_side {args.bucket_min_side}"
        )
    if not args.bucket_max_aspect >= 1:
        raise UsageError(
            f"--bucket_max_aspect must be at least 1 (1 means square only), not {args.bucket_max_aspect}"
        )
    for flag, value in (
        ("--bucket_spacing", args.bucket_spacing),
        ("--bucket_max_crop", args.bucket_max_crop),
    ):
        if not 0 <= value < 1:
            raise UsageError(f"{flag} is a fraction of the picture, from 0 to below 1, not {value}")
    if not args.bucket_upscale_limit > 0:
        raise UsageError(f"--bucket_upscale_limit must be positive, not {args.bucket_upscale_limit}")
    for flag, value in (
        ("--bucket_token_budget", args.bucket_token_budget),
        ("--bucket_max_batch", args.bucket_max_batch),
    ):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, not {value}")
    memory_budget = None
    if args.bucket_memory_budget is not None:
        if args.bucket_token_budget is not None:
            raise UsageError("--bucket_memory_budget and --bucket_token_budget both size batches: give one")
        memory_budget = parse_bytes(args.bucket_memory_budget)
    if not 0 <= args.bucket_memory_margin < 1:
        raise UsageError(
            f"--bucket_memory_margin is a fraction of the budget, from 0 to below 1, not {args.bucket_memory_margin}"
        )
    check_frames_spec(args.bucket_frames)
    # The script's --video_reshape_mode (center/random/none) is where the crop sits, unless
    # --bucket_crop says otherwise.
    crop_position = args.bucket_crop or script_arg(args, "video_reshape_mode", "center")
    if crop_position not in CROP_POSITIONS:
        raise UsageError(
            f"--video_reshape_mode must be one of {', '.join(CROP_POSITIONS)}, not '{crop_position}'"
        )
    if args.bucket_seed is None:
        args.bucket_seed = script_arg(args, "seed", 0)

    area = args.bucket_area if args.bucket_area is not None else height * width
    if area < MULTIPLE * MULTIPLE:
        raise UsageError(f"--bucket_area must be at least {MULTIPLE * MULTIPLE} pixels, not {area}")
    if args.buckets:
        buckets = parse_buckets(args.buckets, MULTIPLE)
        explicit = True
    else:
        # The run's own --height x --width is a bucket whenever it is of the target area.
        anchors = (
            [(height, width)]
            if height * width == area and not (height % MULTIPLE or width % MULTIPLE)
            else []
        )
        rungs = generate_bucket_ladder(
            area,
            args.bucket_min_side,
            args.bucket_max_side,
            args.bucket_max_aspect,
            args.bucket_spacing,
            MULTIPLE,
            anchors,
        )
        buckets = [bucket for rung in rungs for bucket in rung]
        explicit = False
        if not buckets:
            raise UsageError(
                f"no bucket of {area} pixels fits sides {args.bucket_min_side}..{args.bucket_max_side}: "
                "change --bucket_area or the side limits"
            )
    return BucketSettings(
        buckets=tuple(buckets),
        explicit=explicit,
        area=area,
        max_crop=args.bucket_max_crop,
        upscale_limit=args.bucket_upscale_limit,
        crop_position=crop_position,
        frames_spec=args.bucket_frames,
        token_budget=args.bucket_token_budget,
        memory_budget=memory_budget,
        memory_margin=args.bucket_memory_margin,
        max_batch=args.bucket_max_batch,
        remainder=args.bucket_remainder,
        strict=bool(args.bucket_strict),
        seed=int(args.bucket_seed),
        height=height,
        width=width,
        min_side=args.bucket_min_side,
        min_side_given=min_side_given,
        max_side=args.bucket_max_side,
        max_aspect=args.bucket_max_aspect,
        spacing=args.bucket_spacing,
    )
