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
* With a stage schedule (``cogvx_stages``, e.g. progressive_resize) every stage gets buckets of
  its own area (a portrait clip stays portrait in every stage), and the batches of each optimizer
  step come from its stage (``cogvx_ext.api.StagedBatchSampler``). Targets tagged ``scale``
  (multi_scale) are alternatives: each pass trains one per clip.
* ``cogvx-ext plan`` runs the same code on metadata only and reports it (``cogvx_ext/cli/plan/__init__.py``).

The loader makes one instance per run; all state lives on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import random
from collections import Counter
from typing import Any

from cogvx_ext.api import (
    STAGE_TAG,
    Clip,
    LatentShape,
    MemoryBudget,
    ModelInfo,
    Sample,
    SamplerResume,
    ShapeRow,
    SkipClip,
    Stage,
    StagedBatchSampler,
    Target,
    UsageError,
    advice,
    alternative_groups,
    choose_alternatives,
    estimate,
    format_bytes,
    full_size,
    hookimpl,
    largest_batch,
    latent_shape_key,
    setup_from_args,
    stage_of,
    stage_seed,
)

from .buckets import Bucket, _round_to, assign, generate_bucket_ladder
from .frames import frame_ladder, select_frames
from .sampler import BucketBatchSampler, batch_sizes_for_budget
from .settings import (
    MULTIPLE,
    NO_CROP_TOLERANCE,
    BucketSettings,
    add_arguments,
    configure,
    default_min_side,
    script_arg,
)

DROP_LEAVES_NOTHING = (
    "--bucket_remainder drop leaves no batch: every bucket has fewer clips than its batch size "
    "(use fill, or a smaller batch)"
)

logger = logging.getLogger("cogvx_ext.aspect_bucket")


class AspectBucket:
    """The plugin. Flags in the ``aspect_bucket`` group; see the module docstring."""

    def __init__(self) -> None:
        self.settings: BucketSettings | None = None
        self.frame_counts: list[int] | None = None
        self.sampler: BucketBatchSampler | None = None
        self.model: ModelInfo | None = None
        self._shapes: dict[tuple[int, int, int], tuple[int, int, int]] = {}  # latent -> (frames, h, w)
        self._gradient_accumulation_steps = 1
        self.resume = SamplerResume()  # the sampler's position across checkpoints
        self._stage_buckets: dict[Stage, tuple[Bucket, ...]] = {}
        self._stage_frames: dict[int | None, list[int]] = {}
        self.memory_setup = None  # cogvx_ext.api.TrainingSetup, with --bucket_memory_budget
        self._samples: list[Sample] = []  # those the sampler was made for

    # -- set-up --------------------------------------------------------------------------------

    @hookimpl
    def cogvx_add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_arguments(parser)

    @hookimpl
    def cogvx_configure(self, args: argparse.Namespace) -> None:
        """Checks and completes its flags."""
        self.settings = configure(args)

    def _setup(self, args: argparse.Namespace, model: ModelInfo) -> BucketSettings:
        """Configure (if the core has not) and check what depends on the model; once per model."""
        if self.settings is None:
            self.settings = configure(args)
        if self.model != model:
            self.frame_counts = frame_ladder(
                model, script_arg(args, "max_num_frames", 49), self.settings.frames_spec
            )
            self._check_rotary_reach(self.settings.buckets, model)
            self.model = model
            self._stage_buckets, self._stage_frames = {}, {}
        return self.settings

    @staticmethod
    def _check_rotary_reach(buckets, model: ModelInfo, where: str = "") -> None:
        if model.version != "1.5":
            return
        # 1.5's rotary table has positions for this many pixels per side (150 patches).
        limit_h, limit_w = model.sample_pixels
        too_big = [b for b in buckets if b[0] > limit_h or b[1] > limit_w]
        if too_big:
            h, w = too_big[0]
            raise UsageError(
                f"{where}bucket {w}x{h} is larger than CogVideoX 1.5's rotary positions reach "
                f"({limit_w}x{limit_h}): lower --bucket_max_side or the --buckets"
            )

    def buckets_for_stage(self, index: int, stage: Stage, model: ModelInfo) -> tuple[Bucket, ...]:
        """The buckets of one stage: generated around the stage's area (its exact size, or the run's
        --height x --width aspect at that area, always among them), or the --buckets list scaled
        from --bucket_area to the stage's area."""
        if stage in self._stage_buckets:
            return self._stage_buckets[stage]
        settings = self.settings
        if settings.explicit:
            factor = math.sqrt(stage.area / settings.area)
            buckets = list(dict.fromkeys((_round_to(h * factor, MULTIPLE), _round_to(w * factor, MULTIPLE))
                                         for h, w in settings.buckets))  # fmt: skip
        else:
            min_side = (
                settings.min_side
                if settings.min_side_given
                else default_min_side(stage.area, settings.max_aspect)
            )
            anchor = stage.size_for(settings.height, settings.width, MULTIPLE)
            rungs = generate_bucket_ladder(
                stage.area,
                min_side,
                settings.max_side,
                settings.max_aspect,
                settings.spacing,
                MULTIPLE,
                [anchor],
            )
            buckets = [bucket for rung in rungs for bucket in rung]
            if not buckets:
                raise UsageError(
                    f"stage {index} ({stage.label}): no bucket of {stage.area} pixels fits sides "
                    f"{min_side}..{settings.max_side}: change the stage or the side limits"
                )
        self._check_rotary_reach(buckets, model, f"stage {index} ({stage.label}): ")
        self._stage_buckets[stage] = tuple(buckets)
        return self._stage_buckets[stage]

    def frames_for_stage(self, args: argparse.Namespace, model: ModelInfo, frames: int | None) -> list[int]:
        """The frame ladder of a stage whose longest count is ``frames`` (the run's without one)."""
        if frames is None:
            return self.frame_counts
        if frames not in self._stage_frames:
            ladder = [n for n in frame_ladder(model, frames, self.settings.frames_spec) if n <= frames]
            if not ladder:
                raise UsageError(
                    f"--bucket_frames {self.settings.frames_spec} has no count of at most {frames} frames "
                    "(a stage's frames)"
                )
            self._stage_frames[frames] = ladder
        return self._stage_frames[frames]

    @hookimpl
    def cogvx_clips_skipped(self, skipped: list[Any], when: str, args: argparse.Namespace) -> None:
        """With ``--bucket_strict``: a clip left out stops the run."""
        if not getattr(args, "bucket_strict", False):
            return
        if when == "decode":
            raise UsageError(f"--bucket_strict: {len(skipped)} clip(s) failed to decode (named above)")
        first = skipped[0]
        raise UsageError(
            f"--bucket_strict: {len(skipped)} clip(s) cannot be used; first: {first.path}: {first.reason}"
        )

    @hookimpl
    def cogvx_provides(self) -> list[str]:
        """``shape_batches``: batches of one shape from samples of several."""
        # Batches of one latent shape however many shapes the targets have (multi_scale needs it).
        return ["shape_batches"]

    @hookimpl
    def cogvx_requires(self, args: argparse.Namespace, model: ModelInfo) -> list[tuple[str, str]]:
        """``batch_rope`` on RoPE models, ``learned_posemb`` on 5b-I2V (its buckets change the
        latent shape)."""
        self._setup(args, model)
        needs = []
        if model.rotary:
            # The script's RoPE follows --height/--width; a transposed bucket of equal tokens runs silently wrong.
            needs.append(("batch_rope", "add rope_rescale to --plugins"))
        if model.learned_posemb:
            needs.append(("learned_posemb", "add posemb_adapt to --plugins"))
        return needs

    @hookimpl
    def cogvx_memory_check(self, setup, args: argparse.Namespace, model: ModelInfo, stages, samples) -> None:
        """With --bucket_memory_budget: before the clips are read, the smallest shape the run can
        make must fit at batch 1 (else nothing can); once they are planned, every planned shape
        must, and the largest one that does not is named with what would make it fit."""
        if self.settings is None or self.settings.memory_budget is None:
            return
        if setup is None:
            setup_from_args(args)  # raises, naming why the model's configs cannot be read
        model = model or setup.model
        settings = self._setup(args, model)
        self.memory_setup = setup
        allowed = settings.memory_budget * (1 - settings.memory_margin)
        if samples is None:
            candidates = self._possible_shapes(args, model, stages)
            smallest = min(candidates, key=lambda c: (c[0], c[2]))
            if estimate(setup, smallest[1], 1).peak > allowed:
                self._too_large(args, setup, [smallest], "no shape fits: even the smallest, ")
            return
        planned = {}
        for sample in samples:
            t = sample.target
            key = latent_shape_key(sample, model)
            stage = t.tag(STAGE_TAG)
            where = f"stage {stage} " if stages and stage is not None else ""
            planned.setdefault(key, (model.tokens(key), key, f"{where}{t.width}x{t.height}x{t.num_frames}"))
        # Memory grows with a sample's tokens: sorted by them, the shapes that do not fit come
        # first; a binary search finds where they end with a few estimates.
        candidates = sorted(planned.values(), key=lambda c: (-c[0], c[2]))
        low, high = 0, len(candidates)
        while low < high:
            middle = (low + high) // 2
            if estimate(setup, candidates[middle][1], 1).peak <= allowed:
                high = middle
            else:
                low = middle + 1
        if low:
            self._too_large(args, setup, candidates[:low], "", of=len(candidates))
        logger.info(
            "aspect_bucket: memory budget %s (%s usable): every planned shape fits at batch 1 (%s)",
            format_bytes(settings.memory_budget),
            format_bytes(int(allowed)),
            setup.describe(),
        )

    def _possible_shapes(self, args, model, stages) -> list[tuple[int, tuple[int, int, int], str]]:
        """``(tokens, latent, label)`` of every shape the run can make (buckets x frame counts)."""
        settings = self.settings
        groups = (
            [(f"stage {i} ({stage.label}) ", self.buckets_for_stage(i, stage, model), self.frames_for_stage(args, model, stage.frames))
             for i, stage in enumerate(stages)]
            if stages
            else [("", settings.buckets, self.frame_counts)]
        )  # fmt: skip
        found = []
        for where, buckets, frames in groups:
            for height, width in buckets:
                for count in frames:
                    latent = model.latent_shape(count, height, width)
                    found.append((model.tokens(latent), latent, f"{where}{width}x{height}x{count}"))
        return found

    def _too_large(self, args, setup, over, lead: str, of: int | None = None) -> None:
        settings = self.settings
        budget, margin = settings.memory_budget, settings.memory_margin
        _, latent, label = over[0]
        peak = estimate(setup, latent, 1).peak
        count = f"{len(over)} of the plan's {of} shapes too large; " if of else ""
        size = (script_arg(args, "width", 720), script_arg(args, "height", 480))
        raise UsageError(
            f"--bucket_memory_budget {args.bucket_memory_budget}: {lead}bucket {label} needs about "
            f"{format_bytes(peak)} at batch 1, over the {format_bytes(int(budget * (1 - margin)))} the budget "
            f"allows with a {margin:.0%} margin ({count}{setup.describe()}); it would fit with "
            f"{advice(setup, latent, budget, margin, size)}"
        )

    # -- data ----------------------------------------------------------------------------------

    @hookimpl
    def cogvx_clip_targets(
        self, clip: Clip, args: argparse.Namespace, model: ModelInfo, stages: list[Stage] | None
    ) -> list[Target]:
        """Each clip at the bucket of its aspect, a bucket being a size of each stage's area."""
        settings = self._setup(args, model)
        if not stages:
            return [self._target(clip, args, settings.buckets, self.frame_counts, ())]
        targets = []
        for i, stage in enumerate(stages):
            buckets = self.buckets_for_stage(i, stage, model)
            frames = self.frames_for_stage(args, model, stage.frames)
            try:
                targets.append(self._target(clip, args, buckets, frames, ((STAGE_TAG, str(i)),)))
            except SkipClip as exc:
                # A clip trains in every stage or in none: the schedule stays the same for all clips.
                raise SkipClip(f"stage {i} ({stage.label}): {exc}") from None
        return targets

    def _target(self, clip: Clip, args: argparse.Namespace, buckets, frame_counts, tags) -> Target:
        settings = self.settings
        info = clip.info
        problems = []
        assignment = None
        try:
            # Seeded by the path, not the list position, so a clip keeps its crop when the list changes.
            rng = (
                random.Random(f"{settings.seed}:{clip.path}") if settings.crop_position == "random" else None
            )
            whole = settings.crop_position == "none"
            assignment = assign(
                info.width,
                info.height,
                buckets,
                settings.upscale_limit,
                NO_CROP_TOLERANCE if whole else settings.max_crop,
                "center" if whole else settings.crop_position,
                rng,
            )
            if whole:
                assignment = dataclasses.replace(assignment, crop=(0, 0, info.height, info.width))
        except SkipClip as exc:
            if settings.crop_position == "none":
                exc = SkipClip(
                    f"no crop (--video_reshape_mode none): {exc} (a smaller --bucket_spacing gives more aspects)"
                )
            problems.append(str(exc))
        try:
            indices = select_frames(
                info.num_frames,
                info.fps,
                script_arg(args, "fps", 8),
                frame_counts,
                script_arg(args, "skip_frames_start", 0),
                script_arg(args, "skip_frames_end", 0),
                times=info.times(),
            )
        except SkipClip as exc:
            problems.append(str(exc))
        if problems:
            raise SkipClip("; ".join(problems))
        height, width = assignment.bucket
        return Target(
            height=height,
            width=width,
            frame_indices=indices,
            crop=assignment.crop,
            tags=(("bucket", f"{width}x{height}"), *tags),
        )

    @hookimpl
    def cogvx_batch_sampler(
        self,
        samples: list[Sample],
        batch_size: int,
        num_replicas: int,
        args: argparse.Namespace,
        model: ModelInfo,
        stages: list[Stage] | None,
    ) -> BucketBatchSampler | StagedBatchSampler:
        """Batches of one bucket, stages and scales included, resumable at the exact batch."""
        settings = self._setup(args, model)
        if not samples:
            raise UsageError(
                "aspect_bucket: no clip can be used; every clip was skipped (see the reasons above)"
            )
        self._samples = samples
        # For reports (cogvx-ext plan, the memory log): what the batch sizes were chosen against.
        budget = (
            MemoryBudget(settings.memory_budget, settings.memory_margin)
            if settings.memory_budget is not None
            else None
        )
        keys = [latent_shape_key(s, model) for s in samples]
        self._shapes = {}
        counts: dict[tuple[int, int, int], int] = {}
        for key, sample in zip(keys, samples):
            self._shapes[key] = (sample.target.num_frames, sample.target.height, sample.target.width)
            counts[key] = counts.get(key, 0) + 1
        self._gradient_accumulation_steps = max(1, int(script_arg(args, "gradient_accumulation_steps", 1)))
        groups = alternative_groups(samples)
        if stages or len(groups) < len(samples):
            sampler = self._staged_sampler(
                samples, keys, groups, batch_size, num_replicas, stages, model, budget
            )
        else:
            sizes = self._batch_sizes(counts, settings.token_budget, batch_size, model)
            try:
                sampler = BucketBatchSampler(
                    keys, sizes, settings.seed, num_replicas, settings.remainder, memory_budget=budget
                )
            except ValueError as exc:
                raise UsageError(f"--bucket_remainder: {exc}") from exc
            if len(sampler) == 0:
                raise UsageError(DROP_LEAVES_NOTHING)
        self.sampler = sampler
        self.resume.attach(sampler, self._gradient_accumulation_steps)
        logger.info(
            "aspect_bucket: %d samples in %d shapes, %d batches per epoch over %d process(es)",
            len(samples),
            len(counts),
            len(sampler),
            num_replicas,
        )
        return sampler

    def _batch_sizes(
        self, counts: dict[tuple[int, int, int], int], token_budget: int | None, batch_size: int, model
    ) -> dict[tuple[int, int, int], int]:
        if self.settings.memory_budget is not None and self.memory_setup is not None:
            return self._memory_batch_sizes(counts)
        if token_budget:
            sizes = batch_sizes_for_budget(
                list(counts), token_budget, model, self.settings.max_batch, text_tokens=model.text_tokens
            )
            # A budget is a ceiling: no batch holds more copies than its bucket has clips.
            return {key: min(size, counts[key]) for key, size in sizes.items()}
        return {key: max(1, int(batch_size)) for key in counts}

    def _memory_batch_sizes(self, counts: dict[tuple[int, int, int], int]) -> dict[tuple[int, int, int], int]:
        """Per shape, the largest batch within the memory budget (at most its clips, --bucket_max_batch)."""
        settings, setup = self.settings, self.memory_setup
        sizes = {}
        for key in sorted(counts, key=lambda k: -self.model.tokens(k)):
            size = largest_batch(setup, key, settings.memory_budget, settings.memory_margin)
            size = max(1, min(size, counts[key], settings.max_batch or size))
            sizes[key] = size
            frames, height, width = self._shapes.get(key, (None, None, None))
            logger.info(
                "aspect_bucket: %sx%sx%s batch %d, estimated peak %s",
                width,
                height,
                frames,
                size,
                format_bytes(estimate(setup, key, size).peak),
            )
        return sizes

    def _staged_sampler(
        self,
        samples: list[Sample],
        keys: list[tuple[int, int, int]],
        groups: list[list[int]],
        batch_size: int,
        num_replicas: int,
        stages: list[Stage] | None,
        model: ModelInfo,
        budget: MemoryBudget | None,
    ) -> StagedBatchSampler:
        """Per stage (one without a schedule), bucket batches of one alternative per clip and pass."""
        settings = self.settings
        if settings.remainder == "partial" and num_replicas > 1:
            raise UsageError(
                "--bucket_remainder: remainder 'partial' needs a single process: with several, a short batch "
                "on one rank weighs its samples more in the averaged gradient; use 'fill' or 'drop'"
            )
        starts = [stage.start_step for stage in stages] if stages else [0]
        by_stage: list[list[list[int]]] = [[] for _ in starts]
        for group in groups:
            by_stage[stage_of(samples[group[0]])].append(group)
        sizes: list[dict] = []
        rows: list[ShapeRow] = []
        for i, stage_groups in enumerate(by_stage):
            if not stage_groups:
                raise UsageError(f"stage {i} has no sample: every clip was skipped in it")
            counts: dict[tuple[int, int, int], int] = {}
            expected: dict[tuple[int, int, int], float] = {}
            for group in stage_groups:
                for member in group:
                    counts[keys[member]] = counts.get(keys[member], 0) + 1
                    expected[keys[member]] = expected.get(keys[member], 0.0) + 1 / len(group)
            stage = stages[i] if stages else None
            tokens = stage.token_budget if stage and stage.token_budget else settings.token_budget
            size = stage.batch_size if stage and stage.batch_size else batch_size
            sizes.append(self._batch_sizes(counts, tokens, size, model))
            for key in sorted(counts):
                batches = self._batch_count(expected[key], sizes[i][key])
                rows.append(ShapeRow(LatentShape(*key), counts[key], sizes[i][key], batches, stage=i))
            full = [keys[full_size(samples, group)] for group in stage_groups]
            if not sum(self._batch_count(full.count(k), sizes[i][k]) for k in set(full)):
                raise UsageError(f"stage {i}: {DROP_LEAVES_NOTHING}")
        # An epoch: one pass over the final stage at full size, a multiple of the processes.
        base = sum(self._batch_count(n, sizes[-1][key]) for key, n in Counter(full).items())
        length = base - base % num_replicas if settings.remainder == "drop" else base + (-base) % num_replicas
        if length == 0:
            raise UsageError(DROP_LEAVES_NOTHING)
        seed, remainder = settings.seed, settings.remainder
        fixed: dict[int, tuple[list[int], BucketBatchSampler]] = {}

        def passes(stage: int, k: int) -> list[list[int]]:
            stage_groups = by_stage[stage]
            if stage in fixed:
                chosen, inner = fixed[stage]
            else:
                chosen = choose_alternatives(stage_groups, seed, stage, k)
                inner = BucketBatchSampler(
                    [keys[c] for c in chosen], sizes[stage], stage_seed(seed, stage), 1, remainder
                )
                if all(len(group) == 1 for group in stage_groups):
                    fixed[stage] = (chosen, inner)  # the same samples every pass: build once
            return [[chosen[x] for x in batch] for batch in inner.batches_for_epoch(k)]

        described = [
            [[[repr(keys[m]) for m in group] for group in stage_groups], sorted(map(repr, sizes[i].items()))]
            for i, stage_groups in enumerate(by_stage)
        ]
        return StagedBatchSampler(
            starts,
            passes,
            length,
            num_replicas,
            self._gradient_accumulation_steps,
            fingerprint=repr([described, by_stage, seed, remainder]),
            rows=rows,
            memory_budget=budget,
        )

    def _batch_count(self, clips: float, size: int) -> int:
        clips = round(clips, 6)
        return math.floor(clips / size) if self.settings.remainder == "drop" else math.ceil(clips / size)

    # -- progress and state --------------------------------------------------------------------

    @hookimpl
    def cogvx_step_end(self, step: int) -> None:
        """Counts the consumed batches, for an exact resume."""
        self.resume.last_step = int(step)

    @hookimpl
    def cogvx_state_dict(self, step: int | None) -> dict[str, Any] | None:
        """The sampler's epoch and position."""
        return self.resume.state(step)

    @hookimpl
    def cogvx_load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues at the exact batch."""
        self.resume.restore(state)

    @hookimpl
    def cogvx_training_settings(self, args: argparse.Namespace) -> dict[str, Any]:
        """Every setting that decides the buckets, the clips kept, the crops, frames and batches:
        resuming with another would continue on other data (--bucket_strict only stops, so is not one)."""
        s = self.settings if self.settings is not None else configure(args)
        return {
            "bucket_area": s.area,
            "buckets": getattr(args, "buckets", None),
            "bucket_min_side": s.min_side,
            "bucket_max_side": s.max_side,
            "bucket_max_aspect": s.max_aspect,
            "bucket_spacing": s.spacing,
            "bucket_max_crop": s.max_crop,
            "bucket_upscale_limit": s.upscale_limit,
            "bucket_crop": s.crop_position,
            "bucket_frames": s.frames_spec,
            "bucket_token_budget": s.token_budget,
            "bucket_memory_budget": s.memory_budget,
            "bucket_memory_margin": s.memory_margin,
            "bucket_max_batch": s.max_batch,
            "bucket_remainder": s.remainder,
            "bucket_seed": s.seed,
        }

    @hookimpl
    def cogvx_lora_metadata(self) -> dict[str, Any]:
        """The shapes the LoRA was trained at, for validation and inference at the same sizes."""
        if self.sampler is None:
            return {}
        shapes: dict[tuple[int, int, int], dict[str, int]] = {}
        for row in self.sampler.describe(self._samples, self.model).rows:  # a shape may recur in stages
            key = tuple(row.latent)
            frames, height, width = self._shapes[key]
            entry = shapes.setdefault(key, {"width": width, "height": height, "frames": frames, "samples": 0})
            entry["samples"] += row.clips
        return {"trained_shapes": list(shapes.values())}
