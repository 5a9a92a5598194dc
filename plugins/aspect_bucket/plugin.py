"""aspect_bucket: every clip trains at its own aspect ratio, in batches that never mix shapes.

* Spatial buckets are generated around one area (``--bucket_area``, default ``--height x
  --width``) or listed (``--buckets``); a clip goes to the nearest aspect, is demoted to a smaller
  rung rather than enlarged past ``--bucket_upscale_limit``, and is skipped with its reason past
  ``--bucket_max_crop`` (``buckets.py``).
* Frames are sampled at ``--fps`` into a small ladder of counts the model takes (``frames.py``).
* Batches hold one latent shape, shuffle per epoch identically on every rank, count exactly,
  resume at the exact batch, and may size themselves from ``--bucket_token_budget``
  (``sampler.py``). With per-bucket batch sizes the script's loss (a mean over the batch) gives a
  sample in a batch of 2 twice the weight of one in a batch of 4: each *batch* weighs the same.
* ``cogvx-ext plan`` runs the same code on metadata only and reports it (``cogvx_ext/plan.py``).

The loader makes one instance per run; all state lives on it.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
from dataclasses import dataclass
from typing import Any

from cogvx_ext import hookimpl
from cogvx_ext.clips import Clip, Sample, Target
from cogvx_ext.errors import SkipClip, UsageError
from cogvx_ext.model import VAE_SPATIAL, ModelInfo

from .buckets import Bucket, assign, generate_bucket_ladder, parse_buckets
from .frames import check_frames_spec, frame_ladder, select_frames
from .sampler import REMAINDER_POLICIES, BucketBatchSampler, batch_sizes_for_budget

logger = logging.getLogger("cogvx_ext.aspect_bucket")

MULTIPLE = 16  # VAE 8 x patch 2


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
    max_batch: int | None
    remainder: str
    strict: bool
    seed: int


class AspectBucket:
    """The plugin. Flags in the ``aspect_bucket`` group; see the module docstring."""

    def __init__(self) -> None:
        self.settings: BucketSettings | None = None
        self.frame_counts: list[int] | None = None
        self.sampler: BucketBatchSampler | None = None
        self.model: ModelInfo | None = None
        self._shapes: dict[tuple[int, int, int], tuple[int, int, int]] = {}  # latent -> (frames, h, w)
        self._gradient_accumulation_steps = 1
        self._last_step = 0
        self._pending_state: dict[str, Any] | None = None

    # -- set-up --------------------------------------------------------------------------------

    @hookimpl
    def cogvx_add_arguments(self, parser: argparse.ArgumentParser) -> None:
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
            help="clips that would lose more of their picture than this are skipped and reported "
            "(default: 0.25)",
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
            choices=("center", "random"),
            default="center",
            help="where the crop sits: centred, or at a random place fixed per clip by the seed",
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

    @hookimpl
    def cogvx_configure(self, args: argparse.Namespace) -> None:
        self.settings = self._configure(args)

    def _configure(self, args: argparse.Namespace) -> BucketSettings:
        height = script_arg(args, "height", 480)
        width = script_arg(args, "width", 720)
        if args.bucket_min_side is None:
            # 256, unless the most elongated bucket of the target area is thinner than that.
            area = args.bucket_area if args.bucket_area is not None else height * width
            thinnest = int(math.sqrt(max(area, 1) / max(args.bucket_max_aspect, 1.0)) // MULTIPLE) * MULTIPLE
            args.bucket_min_side = max(MULTIPLE, min(256, thinnest))
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
        check_frames_spec(args.bucket_frames)
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
            crop_position=args.bucket_crop,
            frames_spec=args.bucket_frames,
            token_budget=args.bucket_token_budget,
            max_batch=args.bucket_max_batch,
            remainder=args.bucket_remainder,
            strict=bool(args.bucket_strict),
            seed=int(args.bucket_seed),
        )

    def _setup(self, args: argparse.Namespace, model: ModelInfo) -> BucketSettings:
        """Configure (if the core has not) and check what depends on the model; once per model."""
        if self.settings is None:
            self.settings = self._configure(args)
        if self.model != model:
            self.frame_counts = frame_ladder(
                model, script_arg(args, "max_num_frames", 49), self.settings.frames_spec
            )
            if model.version == "1.5":
                # 1.5's rotary table has positions for this many pixels per side (150 patches).
                limit_h, limit_w = model.sample_height * VAE_SPATIAL, model.sample_width * VAE_SPATIAL
                too_big = [b for b in self.settings.buckets if b[0] > limit_h or b[1] > limit_w]
                if too_big:
                    h, w = too_big[0]
                    raise UsageError(
                        f"bucket {w}x{h} is larger than CogVideoX 1.5's rotary positions reach "
                        f"({limit_w}x{limit_h}): lower --bucket_max_side or the --buckets"
                    )
            self.model = model
        return self.settings

    @hookimpl
    def cogvx_requires(self, args: argparse.Namespace, model: ModelInfo) -> list[tuple[str, str]]:
        self._setup(args, model)
        needs = []
        if model.rotary:
            # The script's RoPE follows --height/--width; a transposed bucket of equal tokens runs silently wrong.
            needs.append(("batch_rope", "add rope_rescale to --plugins"))
        if model.learned_posemb:
            needs.append(("learned_posemb", "add posemb_adapt to --plugins"))
        return needs

    # -- data ----------------------------------------------------------------------------------

    @hookimpl
    def cogvx_clip_targets(self, clip: Clip, args: argparse.Namespace, model: ModelInfo) -> list[Target]:
        settings = self._setup(args, model)
        info = clip.info
        problems = []
        assignment = None
        try:
            # Seeded by the path, not the list position, so a clip keeps its crop when the list changes.
            rng = (
                random.Random(f"{settings.seed}:{clip.path}") if settings.crop_position == "random" else None
            )
            assignment = assign(
                info.width,
                info.height,
                settings.buckets,
                settings.upscale_limit,
                settings.max_crop,
                settings.crop_position,
                rng,
            )
        except SkipClip as exc:
            problems.append(str(exc))
        try:
            indices = select_frames(
                info.num_frames,
                info.fps,
                script_arg(args, "fps", 8),
                self.frame_counts,
                script_arg(args, "skip_frames_start", 0),
                script_arg(args, "skip_frames_end", 0),
            )
        except SkipClip as exc:
            problems.append(str(exc))
        if problems:
            raise SkipClip("; ".join(problems))
        height, width = assignment.bucket
        return [
            Target(
                height=height,
                width=width,
                frame_indices=indices,
                crop=assignment.crop,
                tags=(("bucket", f"{width}x{height}"),),
            )
        ]

    def latent_key(self, sample: Sample, model: ModelInfo) -> tuple[int, int, int]:
        target = sample.target
        return model.latent_shape(target.num_frames, target.height, target.width)

    @hookimpl
    def cogvx_batch_sampler(
        self,
        samples: list[Sample],
        batch_size: int,
        num_replicas: int,
        args: argparse.Namespace,
        model: ModelInfo,
    ) -> BucketBatchSampler:
        settings = self._setup(args, model)
        if not samples:
            raise UsageError(
                "aspect_bucket: no clip can be used; every clip was skipped (see the reasons above)"
            )
        keys = [self.latent_key(s, model) for s in samples]
        self._shapes = {}
        counts: dict[tuple[int, int, int], int] = {}
        for key, sample in zip(keys, samples):
            self._shapes[key] = (sample.target.num_frames, sample.target.height, sample.target.width)
            counts[key] = counts.get(key, 0) + 1
        if settings.token_budget:
            sizes = batch_sizes_for_budget(
                list(counts), settings.token_budget, model, settings.max_batch, text_tokens=model.text_tokens
            )
            # A budget is a ceiling: no batch holds more copies than its bucket has clips.
            sizes = {key: min(size, counts[key]) for key, size in sizes.items()}
        else:
            sizes = {key: max(1, int(batch_size)) for key in counts}
        try:
            sampler = BucketBatchSampler(keys, sizes, settings.seed, num_replicas, settings.remainder)
        except ValueError as exc:
            raise UsageError(f"--bucket_remainder: {exc}") from exc
        if len(sampler) == 0:
            raise UsageError(
                "--bucket_remainder drop leaves no batch: every bucket has fewer clips than its batch size "
                "(use fill, or a smaller batch)"
            )
        self.sampler = sampler
        self._gradient_accumulation_steps = max(1, int(script_arg(args, "gradient_accumulation_steps", 1)))
        if self._pending_state is not None:
            sampler.load_state_dict(self._pending_state)
            self._pending_state = None
        logger.info(
            "aspect_bucket: %d samples in %d shapes, %d batches per epoch over %d process(es)",
            len(samples),
            len(counts),
            len(sampler),
            num_replicas,
        )
        return sampler

    # -- progress and state --------------------------------------------------------------------

    @hookimpl
    def cogvx_step_end(self, step: int) -> None:
        self._last_step = int(step)

    def batches_consumed(self, global_step: int) -> int:
        """Batches each process has taken when the script reaches ``global_step`` optimizer steps.

        Mirrors the script's own arithmetic: ``ceil(len(dataloader) / accumulation)`` steps per
        epoch, the last step of an epoch taking what is left (accelerate syncs at the end of the
        data), and ``first_epoch = global_step // steps_per_epoch`` on resume.
        """
        per_process = self.sampler.batches_per_process
        steps_per_epoch = math.ceil(per_process / self._gradient_accumulation_steps)
        epoch, steps = divmod(global_step, steps_per_epoch)
        return epoch * per_process + min(steps * self._gradient_accumulation_steps, per_process)

    @hookimpl
    def cogvx_state_dict(self, step: int | None) -> dict[str, Any] | None:
        if self.sampler is None:
            return None
        # The core reads the step from the script's checkpoint-<step> folder. Otherwise: the script
        # saves right after `global_step += 1` and before that iteration's accelerator.log, so the
        # step being saved is one past the last step_end seen.
        global_step = step if step is not None else self._last_step + 1
        return {
            "global_step": global_step,
            "sampler": self.sampler.state_dict(self.batches_consumed(global_step)),
        }

    @hookimpl
    def cogvx_load_state_dict(self, state: dict[str, Any]) -> None:
        self._last_step = int(state.get("global_step", 0))
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
        else:
            self._pending_state = state["sampler"]

    @hookimpl
    def cogvx_lora_metadata(self) -> dict[str, Any]:
        """The shapes the LoRA was trained at, for validation and inference at the same sizes."""
        if self.sampler is None:
            return {}
        shapes = []
        for bucket in self.sampler.buckets:
            frames, height, width = self._shapes[bucket.key]
            shapes.append({"width": width, "height": height, "frames": frames, "samples": bucket.clips})
        return {"trained_shapes": shapes}
