"""The plan of a run's data: every clip probed (``cogvx_probe``: the header only, or a cache) and
turned into samples by ``cogvx_clip_targets``, each target checked as it arrives; the same plan for
training, ``cogvx-ext plan`` and ``cogvx-ext cache``. Nothing here knows the training scripts."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from cogvx_ext.base.errors import SkipClip
from cogvx_ext.data.clips import Clip, ListingEntry, Sample, Skipped
from cogvx_ext.data.context import RunContext
from cogvx_ext.model.facts import ModelInfo

if TYPE_CHECKING:
    from cogvx_ext.data.ranks import RankSync


def plan_samples(
    hook: Any,
    entries: list[ListingEntry],
    run: RunContext,
    progress: bool = True,
    sync: RankSync | None = None,
) -> tuple[list[Sample], list[Skipped]]:
    """Probe every clip and ask the plugins for its targets; the same plan for training and `plan`.

    Every target is checked as it arrives and the run's needs are checked against the targets'
    shapes (cogvx_ext.data.contracts): a violation is a UsageError, before anything is decoded.

    With a stage schedule (``run.stages``) the samples are ordered stage by stage, so they are
    encoded (and their progress shown) one stage after the other. With ``sync`` (several ranks),
    planning stops as soon as another rank has failed.
    """
    from tqdm.auto import tqdm

    from cogvx_ext.data.clips import STAGE_TAG
    from cogvx_ext.data.contracts import check_clip_targets, check_data_requirements
    from cogvx_ext.data.video import probe

    args, model, stages = run.args, run.model, run.stages
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    for entry in tqdm(entries, desc="cogvx-ext: reading clip headers", disable=not progress, leave=False):
        if sync is not None:
            sync.poll()
        try:
            info = hook.cogvx_probe(path=entry.path, args=args, run=run)
            if info is None:  # a hook relay made without the core's defaults (cogvx_ext.plugin.defaults)
                info = probe(entry.path)
            clip = Clip(index=entry.index, path=entry.path, prompt=entry.prompt, info=info)
            asked = dict(clip=clip, args=args, model=model, stages=stages, run=run)
            targets = hook.cogvx_clip_targets(**asked)
        except SkipClip as exc:
            skipped.append(Skipped(entry.path, str(exc), entry.prompt))
            continue
        if not targets:
            skipped.append(Skipped(entry.path, "no plugin produced a training target for it", entry.prompt))
            continue
        check_clip_targets(hook.cogvx_clip_targets, asked, targets, clip, model)
        samples.extend(Sample(clip, target) for target in targets)
    check_data_requirements(hook, samples, run)
    if stages:
        samples.sort(key=lambda s: int(s.target.tag(STAGE_TAG) or 0))  # stable: clip order within a stage
    return samples, skipped


def report_skipped(skipped: list[Skipped]) -> None:
    """Name every skipped clip in the training log."""
    from tqdm.auto import tqdm

    for item in skipped:
        tqdm.write(f"cogvx-ext: skipped {item.path}: {item.reason}", file=sys.stderr)


def latent_shape_key(sample: Sample, model: ModelInfo) -> tuple[int, int, int]:
    """The latent (frames, height, width) a sample trains at: batches must share it."""
    return model.latent_shape(sample.target.num_frames, sample.target.height, sample.target.width)
