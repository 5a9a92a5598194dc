"""progressive_resize: small first, then large, in one run and one command.

``--progressive_stages "512x288:0,768x432:400,1024x576:1200"`` trains at 512x288 (WIDTHxHEIGHT, as
every size in cogvx-ext) for optimizer steps 0-399, at 768x432 for steps 400-1199, then at
1024x576. A stage is ``SIZE:STEP`` and optionally ``:key=value`` settings:

* ``SIZE``: ``WIDTHxHEIGHT`` (multiples of 16), or an area in pixels (``147456``). With
  aspect_bucket each stage gets buckets of its area (a portrait clip stays portrait); without it
  each stage has one shape (an area keeps the aspect of ``--height x --width``).
* ``frames=N`` the stage's longest frame count (instead of ``--max_num_frames``), ``batch=N`` its
  batch size, ``tokens=N`` its token budget per batch (instead of ``--bucket_token_budget``),
  ``warmup=N`` the learning rate re-warmed linearly over the stage's first N steps (from the
  second stage on; ``--progressive_warmup_steps`` sets it for all of them).

The plugin answers ``cogvx_stages``; the data hooks (the core's default targets, aspect_bucket's)
make one target per stage, the core encodes every stage's latents before training (the scripts
encode once, before their loop; see the README for the measurement behind that), and the sampler
(aspect_bucket's, or this plugin's own when no other plugin answers) changes shape exactly at the
boundary step, counting optimizer steps (``cogvx_ext.api.StagedBatchSampler``). Each loop iteration logs ``stage``
and ``tokens_per_sample`` to the script's trackers.

The entry point names the class; the loader makes one instance per run.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import time
from typing import Any

import torch

from cogvx_ext.api import (
    STAGE_TAG,
    LatentShape,
    ModelInfo,
    RunContext,
    Sample,
    SamplerResume,
    ShapeRow,
    Stage,
    StagedBatchSampler,
    UsageError,
    hookimpl,
    latent_shape_key,
    stage_at,
    stage_of,
    stage_seed,
)

logger = logging.getLogger("cogvx_ext.progressive_resize")

MULTIPLE = 16  # VAE 8 x patch 2
FLAG = "--progressive_stages"
EXAMPLE = "e.g. 512x288:0,768x432:400,1024x576:1200"
KEYS = {"frames": "frames", "batch": "batch_size", "tokens": "token_budget", "warmup": "warmup_steps"}


def _nearest(value: int) -> int:
    return max(MULTIPLE, math.floor(value / MULTIPLE + 0.5) * MULTIPLE)


def _stage(item: str, default_warmup: int, first: bool) -> Stage:
    size, sep, rest = item.partition(":")
    start, _, options = rest.partition(":")
    size, start = size.strip().lower(), start.strip()
    if not sep or not size or not start.isdigit():
        raise UsageError(
            f"{FLAG}: '{item}' is not SIZE:STEP ({EXAMPLE}; SIZE is WIDTHxHEIGHT or an area in pixels, "
            "then optional :frames=N:batch=N:tokens=N:warmup=N)"
        )
    height = width = None
    if "x" in size:
        w, _, h = size.partition("x")
        if not (h.strip().isdigit() and w.strip().isdigit()):
            raise UsageError(f"{FLAG}: '{item}': the size is not WIDTHxHEIGHT ({EXAMPLE})")
        width, height = int(w), int(h)
        if height <= 0 or width <= 0 or height % MULTIPLE or width % MULTIPLE:
            raise UsageError(
                f"{FLAG}: '{item}': sides must be positive multiples of {MULTIPLE} (VAE 8 x patch 2); "
                f"nearest: {_nearest(width)}x{_nearest(height)}"
            )
        area = height * width
    elif size.isdigit():
        area = int(size)
        if area < MULTIPLE * MULTIPLE:
            raise UsageError(f"{FLAG}: '{item}': an area must be at least {MULTIPLE * MULTIPLE} pixels")
    else:
        raise UsageError(f"{FLAG}: '{item}': the size is not WIDTHxHEIGHT or an area in pixels ({EXAMPLE})")
    settings: dict[str, int] = {}
    for option in (o.strip() for o in options.split(":") if options):
        key, eq, value = option.partition("=")
        key = key.strip()
        if key not in KEYS or not eq:
            raise UsageError(
                f"{FLAG}: '{item}': unknown setting '{option}' (use {', '.join(k + '=N' for k in KEYS)})"
            )
        if KEYS[key] in settings:
            raise UsageError(f"{FLAG}: '{item}': {key} is given twice")
        if not value.strip().isdigit():
            raise UsageError(f"{FLAG}: '{item}': {key} must be a whole number, not '{value}'")
        number = int(value)
        if key in ("batch", "tokens") and number < 1:
            raise UsageError(f"{FLAG}: '{item}': {key} must be at least 1")
        if key == "frames" and (number < 1 or (number - 1) % 4):
            raise UsageError(f"{FLAG}: '{item}': frames must be 4k+1 (e.g. 17, 33, 49), not {number}")
        if key == "warmup" and first and number:
            raise UsageError(
                f"{FLAG}: '{item}': the first stage warms up with the script's --lr_warmup_steps; "
                "warmup= applies from the second stage on"
            )
        settings[KEYS[key]] = number
    if not first:
        settings.setdefault("warmup_steps", default_warmup)
    return Stage(start_step=int(start), area=area, height=height, width=width, **settings)


def parse_stages(text: str, default_warmup: int = 0) -> list[Stage]:
    """``"512x288:0,768x432:400:warmup=50"`` -> the stages; one-line ``UsageError`` for any mistake."""
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    if not items:
        raise UsageError(f"{FLAG}: no stage given ({EXAMPLE})")
    stages = [_stage(item, default_warmup, first=i == 0) for i, item in enumerate(items)]
    if stages[0].start_step != 0:
        raise UsageError(
            f"{FLAG}: the first stage must start at step 0, not {stages[0].start_step} ('{items[0]}')"
        )
    for i in range(1, len(stages)):
        if stages[i].start_step <= stages[i - 1].start_step:
            raise UsageError(
                f"{FLAG}: stage {i} ('{items[i]}') starts at step {stages[i].start_step}, not after stage "
                f"{i - 1} (step {stages[i - 1].start_step}): start steps must increase"
            )
    return stages


def check_orientation(stages: list[Stage], text: str, width: int | None, height: int | None) -> None:
    """Stop a size written height first, as this flag once took it.

    ``288x512`` on a 1024x576 run is a portrait stage in a landscape run: almost surely the old
    height-first form. Sizes are WIDTHxHEIGHT now; an area keeps any stage's orientation.
    """
    if not width or not height or width == height:
        return
    items = [item.strip() for item in text.split(",") if item.strip()]
    for item, stage in zip(items, stages):
        if stage.width and stage.height and stage.width != stage.height:
            if (stage.width > stage.height) != (width > height):
                raise UsageError(
                    f"{FLAG}: '{item}' is {stage.width} wide and {stage.height} high, but the run is "
                    f"{width}x{height}: sizes are WIDTHxHEIGHT (write {stage.height}x{stage.width}, or an area "
                    f"such as {stage.area})"
                )


def rewarm_factor(stages: list[Stage], step: int) -> float:
    """The learning-rate factor for optimizer step ``step``: ``(n + 1) / warmup`` on the n-th step
    of a stage that re-warms, 1 otherwise."""
    index = stage_at(stages, step)
    stage = stages[index]
    into = step - stage.start_step
    if index and stage.warmup_steps and into < stage.warmup_steps:
        return (into + 1) / stage.warmup_steps
    return 1.0


class ProgressiveResize:
    """The plugin; one instance per run holds the schedule and the sampler's position."""

    def __init__(self) -> None:
        self.stages: list[Stage] | None = None
        self.sampler: StagedBatchSampler | None = None
        self.accelerator: Any = None
        self._accumulation = 1
        self.resume = SamplerResume()  # the position of this plugin's own sampler, when it made one
        self._tokens: int | None = None  # video tokens per sample of the last training forward
        self._announced: int | None = None
        self._rewarm_installed = False
        self._planned: dict[int, int] = {}  # samples per stage
        self._encoding: dict[str, Any] = {}

    # -- set-up --------------------------------------------------------------------------------

    @hookimpl
    def cogvx_add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(
            "progressive_resize", "train small first, then large, in one run (stages by optimizer step)"
        )
        group.add_argument(
            FLAG,
            default=None,
            help="SIZE:STEP stages, comma-separated (e.g. 512x288:0,768x432:400,1024x576:1200): SIZE is "
            "WIDTHxHEIGHT or an area in pixels, STEP the optimizer step the stage starts at (the first 0); "
            "optional per stage :frames=N:batch=N:tokens=N:warmup=N",
        )
        group.add_argument(
            "--progressive_warmup_steps",
            type=int,
            default=0,
            help="re-warm the learning rate over this many steps at the start of every stage after the "
            "first (a stage's warmup=N overrides it; default 0: no re-warm-up)",
        )

    @hookimpl
    def cogvx_configure(self, args: argparse.Namespace) -> None:
        self._read(args)

    def _read(self, args: argparse.Namespace) -> list[Stage] | None:
        text = getattr(args, "progressive_stages", None)
        if text is None:
            self.stages = None
            return None
        warmup = int(getattr(args, "progressive_warmup_steps", 0) or 0)
        if warmup < 0:
            raise UsageError(f"--progressive_warmup_steps must be at least 0, not {warmup}")
        self.stages = parse_stages(text, warmup)
        check_orientation(self.stages, text, getattr(args, "width", None), getattr(args, "height", None))
        limit = getattr(args, "max_train_steps", None)
        late = [s for s in self.stages if limit is not None and s.start_step >= limit]
        if late:
            # Left out of the schedule, so no clip is decoded or encoded for it.
            logger.warning(
                "progressive_resize: %s at or after --max_train_steps %d: never run, so neither decoded nor encoded",
                ", ".join(f"stage {self.stages.index(s)} ({s.label}) from step {s.start_step}" for s in late),
                limit,
            )
            self.stages = [s for s in self.stages if s not in late]
        return self.stages

    @hookimpl
    def cogvx_requires(self, args: argparse.Namespace, model: ModelInfo) -> list[tuple[str, str]]:
        """``batch_rope`` on RoPE models, ``learned_posemb`` on 5b-I2V (the stages change the
        latent shape)."""
        if not self.stages:
            return []
        for i, stage in enumerate(self.stages):
            if stage.frames is not None and not model.valid_frame_count(stage.frames):
                raise UsageError(
                    f"{FLAG}: stage {i} ({stage.label}): CogVideoX {model.version} cannot take "
                    f"{stage.frames} frames"
                )
        needs = []
        if model.rotary:  # the script's RoPE follows --height/--width, not the stage's size
            needs.append(("batch_rope", "add rope_rescale to --plugins"))
        if model.learned_posemb:
            needs.append(("learned_posemb", "add posemb_adapt to --plugins"))
        return needs

    @hookimpl
    def cogvx_stages(self, args: argparse.Namespace) -> list[Stage] | None:
        """The schedule of ``--progressive_stages`` (``512x288:0,1024x576:1200``)."""
        stages = self.stages if self.stages is not None else self._read(args)
        return list(stages) if stages else None

    # -- data ----------------------------------------------------------------------------------

    @hookimpl(wrapper=True, tryfirst=True)  # outermost: counts what other wrappers (multi_scale) add
    def cogvx_clip_targets(self, stages):
        """Counts each stage's samples (outermost, so it counts what other wrappers add)."""
        targets = yield
        if stages and targets:
            for target in targets:
                index = int(target.tag(STAGE_TAG) or 0)
                self._planned[index] = self._planned.get(index, 0) + 1
        return targets

    @hookimpl(wrapper=True)
    def cogvx_encode_sample(self, sample: Sample):
        """Reports each stage's encoding."""
        # Samples come stage by stage (the core orders them so): one line per stage.
        if self.stages:
            index = stage_of(sample)
            if self._encoding.get("stage") != index:
                self._stage_encoded()
                self._encoding.update(stage=index, started=time.perf_counter(), bytes=0, samples=0)
                stage = self.stages[index]
                self._say(
                    f"stage {index} ({stage.label}, from step {stage.start_step}): "
                    f"decoding and encoding {self._planned.get(index, '?')} samples"
                )
        encoded = yield
        if self.stages and encoded is not None:
            parts = encoded if isinstance(encoded, tuple) else (encoded,)
            self._encoding["bytes"] += sum(p.parameters.numel() * p.parameters.element_size() for p in parts)
            self._encoding["samples"] += 1
        return encoded

    def _stage_encoded(self) -> None:
        if "stage" in self._encoding:
            e = self._encoding
            self._say(
                f"stage {e['stage']}: this process encoded {e['samples']} samples in "
                f"{time.perf_counter() - e['started']:.1f} s, latents {e['bytes'] / 2**20:.1f} MiB"
            )
            self._encoding = {}

    @hookimpl(wrapper=True)
    def cogvx_batch_sampler(
        self,
        samples: list[Sample],
        batch_size: int,
        num_replicas: int,
        args: argparse.Namespace,
        model: ModelInfo,
        stages: list[Stage] | None,
    ):
        """Around the other samplers: when none follows the stages (no aspect_bucket), its own."""
        self._stage_encoded()
        sampler = yield
        if sampler is not None or not stages:
            return sampler
        return self._own_sampler(samples, batch_size, num_replicas, args, model, stages)

    def _own_sampler(self, samples, batch_size, num_replicas, args, model, stages) -> StagedBatchSampler:
        """One shape per stage, batches of the stage's batch size, the last one filled from the stage."""
        members: list[list[int]] = [[] for _ in stages]
        for i, sample in enumerate(samples):
            members[stage_of(sample)].append(i)
        sizes, rows = [], []
        for i, indices in enumerate(members):
            if not indices:
                raise UsageError(f"progressive_resize: stage {i} ({stages[i].label}) has no sample")
            shapes = sorted({latent_shape_key(samples[j], model) for j in indices})
            if len(shapes) > 1:
                raise UsageError(
                    f"progressive_resize: stage {i} ({stages[i].label}) has {len(shapes)} latent shapes "
                    "(clips of different lengths or sizes): add aspect_bucket to --plugins to batch them by shape"
                )
            size = self._batch_size(stages[i], batch_size, model, shapes[0])
            sizes.append(size)
            batches = math.ceil(len(indices) / size)
            rows.append(ShapeRow(LatentShape(*shapes[0]), len(indices), size, batches, stage=i))
        base = math.ceil(len(members[-1]) / sizes[-1])
        length = base + (-base) % num_replicas  # one pass over the final stage, a multiple of the processes
        seed = int(getattr(args, "seed", None) or 0)

        def passes(stage: int, k: int) -> list[list[int]]:
            order = list(members[stage])
            random.Random(f"{stage_seed(seed, stage)}:{k}").shuffle(order)
            size = sizes[stage]
            batches = [order[i : i + size] for i in range(0, len(order), size)]
            short = batches[-1]
            for j in range(size - len(short)):  # fill the last batch with other clips of the stage
                short.append(order[j % len(order)])
            random.Random(f"{stage_seed(seed, stage)}:{k}:batches").shuffle(batches)
            return batches

        self._accumulation = max(1, int(getattr(args, "gradient_accumulation_steps", 1) or 1))
        self.sampler = StagedBatchSampler(
            [s.start_step for s in stages],
            passes,
            length,
            num_replicas,
            self._accumulation,
            fingerprint=repr([members, sizes, seed]),
            rows=rows,
        )
        self.resume.attach(self.sampler, self._accumulation)
        return self.sampler

    @staticmethod
    def _batch_size(stage: Stage, batch_size: int, model: ModelInfo, shape: tuple[int, int, int]) -> int:
        if stage.batch_size:
            return stage.batch_size
        if stage.token_budget:
            return max(1, stage.token_budget // (model.tokens(shape) + model.text_tokens))
        return max(1, int(batch_size))

    # -- training ------------------------------------------------------------------------------

    @hookimpl
    def cogvx_accelerator_ready(self, accelerator: Any) -> None:
        """Keeps the accelerator, to re-warm the learning rate at each stage."""
        self.accelerator = accelerator

    @hookimpl
    def cogvx_transformer_forward(self, latent_shape: tuple[int, int, int], model: ModelInfo) -> None:
        """Notes the tokens of each training batch."""
        if torch.is_grad_enabled():
            self._tokens = model.tokens(latent_shape)

    @hookimpl
    def cogvx_step_end(self, step: int, logs: dict[str, Any], accelerator: Any, run: RunContext) -> None:
        """Logs ``stage`` and ``tokens_per_sample``, announces stage changes, re-warms the learning rate."""
        self.resume.last_step = int(step)
        if not self.stages:
            return
        # The batch just trained went into the update that made `step` (sync) or into the next one.
        synced = getattr(accelerator, "sync_gradients", True)
        logs["stage"] = stage_at(self.stages, max(0, step - 1) if synced else step)
        if self._tokens is not None:
            logs["tokens_per_sample"] = self._tokens
        coming = stage_at(self.stages, step)
        if coming != self._announced:
            self._announced = coming
            stage = self.stages[coming]
            self._say(f"stage {coming} ({stage.label}) from optimizer step {stage.start_step}")
        if not self._rewarm_installed:
            self._rewarm_installed = True
            if any(s.warmup_steps for s in self.stages):
                self._install_rewarm(accelerator, run.lr_schedulers)

    def _install_rewarm(self, accelerator: Any, lr_schedulers: list[Any]) -> None:
        """Multiply the script's learning-rate schedule by each stage's re-warm-up factor.

        The diffusers scripts' schedulers (``get_scheduler``) are ``LambdaLR``s stepped
        ``num_processes`` times per optimizer step by accelerate; their functions are wrapped, so
        the factor follows the optimizer step, survives checkpoints (the learning rate saved with
        the optimizer already carries it) and never compounds.
        """
        stages = self.stages
        per_step = 1 if getattr(accelerator, "split_batches", False) else max(1, accelerator.num_processes)
        for prepared in lr_schedulers:
            scheduler = getattr(prepared, "scheduler", prepared)
            functions = getattr(scheduler, "lr_lambdas", None)
            if functions is None:
                logger.warning(
                    "progressive_resize: the learning-rate scheduler (%s) is not a LambdaLR: no re-warm-up",
                    type(scheduler).__name__,
                )
                continue

            def rewarmed(function):
                def lr_lambda(count: int) -> float:
                    return function(count) * rewarm_factor(stages, count // per_step)

                return lr_lambda

            scheduler.lr_lambdas = [rewarmed(f) for f in functions]
            # The rate of the coming update was set before this hook: set it again.
            rates = [
                base * f(scheduler.last_epoch) for base, f in zip(scheduler.base_lrs, scheduler.lr_lambdas)
            ]
            for group, rate in zip(scheduler.optimizer.param_groups, rates):
                group["lr"] = rate
            scheduler._last_lr = rates

    def _say(self, message: str) -> None:
        if self.accelerator is not None and not self.accelerator.is_local_main_process:
            return
        from tqdm.auto import tqdm

        tqdm.write(f"cogvx-ext: progressive_resize: {message}", file=sys.stderr)

    # -- state ---------------------------------------------------------------------------------

    @hookimpl
    def cogvx_state_dict(self, step: int | None) -> dict[str, Any] | None:
        """The stage sampler's epoch and position."""
        return self.resume.state(step)  # None when another plugin's sampler keeps the position

    @hookimpl
    def cogvx_load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues at the exact batch."""
        self.resume.restore(state)

    @hookimpl
    def cogvx_training_settings(self, args: argparse.Namespace) -> dict[str, Any] | None:
        # The schedule as given: stages past --max_train_steps are left out of this run's, and a
        # resume that trains longer reaches them as planned.
        text = getattr(args, "progressive_stages", None)
        if text is None:
            return None  # no schedule: the plugin changes nothing
        return {
            "progressive_stages": "".join(text.split()),
            "progressive_warmup_steps": int(getattr(args, "progressive_warmup_steps", 0) or 0),
        }

    @hookimpl
    def cogvx_lora_metadata(self) -> dict[str, Any]:
        """The schedule."""
        if not self.stages:
            return {}
        return {
            "progressive_stages": [
                {"start_step": s.start_step, "size": s.label, "area": s.area, "frames": s.frames}
                for s in self.stages
            ]
        }
