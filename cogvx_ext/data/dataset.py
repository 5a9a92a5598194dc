"""The data path used when a data plugin is chosen: list, probe, plan, encode, share.

Nothing here knows the training scripts; ``cogvx_ext.script.seams`` puts a script-shaped face on it.

* The listing is read like the scripts read it (``--instance_data_root`` with line-separated
  caption and video files), but a problem line is reported and skipped, not fatal.
* Every clip is probed (``cogvx_probe``: the header only, or a cache) and turned into samples by
  ``cogvx_clip_targets``.
* Encoding streams: one clip is decoded, straight to its target size, encoded and dropped before
  the next, so peak memory does not grow with the number of clips. Each rank encodes its share
  and the posteriors are then exchanged with their real shapes (the stock T2V script's exchange
  assumes one shape for all clips).
* Posteriors are kept on the CPU as one tensor each (mean and log-variance): the stock script keeps
  every ``DiagonalGaussianDistribution`` (four tensors) on the accelerator.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cogvx_ext.base.errors import SkipClip, UsageError
from cogvx_ext.data.clips import Clip, Sample
from cogvx_ext.model.facts import ModelInfo

logger = logging.getLogger("cogvx_ext")


@dataclass(frozen=True)
class ListingEntry:
    index: int
    path: str
    prompt: str


@dataclass(frozen=True)
class Skipped:
    """A clip left out of training, with the reason; always reported."""

    path: str
    reason: str


def read_listing(
    root: str | Path, caption_column: str, video_column: str
) -> tuple[list[ListingEntry], list[Skipped]]:
    """Read the scripts' local dataset layout; problems become Skipped entries, not exceptions.

    Only a missing folder or listing file is fatal (UsageError): there is nothing to train on.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"--instance_data_root '{root}' is not a folder")
    files = {}
    for flag, name in (("--caption_column", caption_column), ("--video_column", video_column)):
        path = root / name
        if not path.is_file():
            raise UsageError(f"{flag} '{name}' is not a file in {root} (one line per clip is expected)")
        # utf-8-sig: a listing saved by a Windows editor starts with a byte-order mark, which
        # would otherwise become part of the first path or prompt. Lines end in LF or CRLF;
        # surrounding spaces go, as in the scripts (spaces inside a path stay).
        with open(path, encoding="utf-8-sig") as f:
            files[flag] = [line.strip() for line in f if line.strip()]
    prompts, videos = files["--caption_column"], files["--video_column"]
    entries, skipped = [], []
    for i, video in enumerate(videos):
        path = root / video
        if i >= len(prompts):
            skipped.append(
                Skipped(
                    str(path),
                    f"no caption: {caption_column} has {len(prompts)} lines, {video_column} {len(videos)}",
                )
            )
        elif not path.is_file():
            skipped.append(Skipped(str(path), "file does not exist"))
        else:
            entries.append(ListingEntry(len(entries), str(path), prompts[i]))
    for i in range(len(videos), len(prompts)):
        skipped.append(
            Skipped(
                f"{caption_column}:{i + 1}",
                f"caption without a video: {video_column} has {len(videos)} lines",
            )
        )
    return entries, skipped


def read_script_data(args: Any) -> tuple[list[ListingEntry], list[Skipped]]:
    """The clips the script's flags name: ``--dataset_name`` (a ``datasets.load_dataset`` source)
    when given, else the local listing in ``--instance_data_root``."""
    name = getattr(args, "dataset_name", None)
    if name:
        return read_dataset(
            name,
            getattr(args, "dataset_config_name", None),
            getattr(args, "instance_data_root", None),
            getattr(args, "caption_column", None),
            getattr(args, "video_column", None),
            getattr(args, "cache_dir", None),
        )
    if getattr(args, "instance_data_root", None) is None:
        raise UsageError(
            "no training data: give --instance_data_root (a folder with listings) or --dataset_name"
        )
    return read_listing(args.instance_data_root, args.caption_column, args.video_column)


_FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def read_dataset(
    name: str,
    config_name: str | None,
    root: str | Path | None,
    caption_column: str | None,
    video_column: str | None,
    cache_dir: str | None = None,
) -> tuple[list[ListingEntry], list[Skipped]]:
    """The scripts' second data format: ``datasets.load_dataset(name, config_name, cache_dir=...)``
    (a local folder of CSV/JSON files, or a Hub name), its ``train`` split, read as the scripts
    read it. A single CSV/JSON/Parquet file is read too (the scripts' ``load_dataset`` call
    takes folders only).

    A column left unset defaults to the first (video) and second (caption) column; a column that
    is not in the dataset is fatal, naming the columns there are. Each video is the path
    ``Path(--instance_data_root, value)`` (an absolute value stands alone). A row without a
    caption or whose file is missing is reported and skipped, not fatal.
    """
    try:
        from datasets import load_dataset
    except ImportError as exc:  # optional, as in the scripts, which import it only for --dataset_name
        raise UsageError(
            "--dataset_name needs the datasets library: pip install datasets (or cogvx-ext[datasets])"
        ) from exc
    builder = _FILE_BUILDERS.get(Path(name).suffix.lower()) if os.path.isfile(name) else None
    try:
        if builder:
            # One file: load_dataset takes folders and Hub names, a file through its format's builder.
            dataset = load_dataset(builder, config_name, data_files=name, cache_dir=cache_dir)
        else:
            dataset = load_dataset(name, config_name, cache_dir=cache_dir)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
        raise UsageError(
            f"--dataset_name '{name}': datasets cannot load it ({str(exc).splitlines()[0][:200]})"
        ) from exc
    if "train" not in dataset:
        raise UsageError(f"--dataset_name '{name}' has no train split (it has: {', '.join(dataset)})")
    train = dataset["train"]
    columns = train.column_names
    chosen = {}
    for flag, given, position in (
        ("--video_column", video_column, 0),
        ("--caption_column", caption_column, 1),
    ):
        if given is None:
            if len(columns) <= position:
                raise UsageError(f"{flag}: the dataset has only the columns {', '.join(columns)}")
            given = columns[position]
        elif given not in columns:
            raise UsageError(
                f"{flag} '{given}' is not a column of the dataset; its columns are: {', '.join(columns)}"
            )
        chosen[flag] = given
    videos, prompts = train[chosen["--video_column"]], train[chosen["--caption_column"]]
    entries, skipped = [], []
    for row, (video, prompt) in enumerate(zip(videos, prompts), start=2):  # row 1: the header
        if isinstance(video, dict) and "path" in video:
            video = video["path"]
        if not isinstance(video, str) or not video.strip():
            skipped.append(Skipped(f"{name}:{row}", f"no video path in column {chosen['--video_column']}"))
            continue
        relative = Path(video.strip())
        if root is None and not relative.is_absolute():
            raise UsageError(
                f"--dataset_name: the video column holds paths relative to --instance_data_root "
                f"(e.g. '{video}'): give --instance_data_root"
            )
        path = Path(root, relative) if root is not None else relative
        if not isinstance(prompt, str) or not prompt.strip():
            skipped.append(Skipped(str(path), f"no caption in column {chosen['--caption_column']}"))
        elif not path.is_file():
            skipped.append(Skipped(str(path), "file does not exist"))
        else:
            entries.append(ListingEntry(len(entries), str(path), prompt.strip()))
    return entries, skipped


def check_data_source(args: argparse.Namespace) -> None:
    """Stop now, before any model loads, when the arguments and files already show that there is
    nothing to train on: a missing data root or listing file, or a listing none of whose clips
    exists, a dataset without the named columns. (A single bad clip is not fatal: it is named when
    the data is planned.)"""
    if not hasattr(args, "instance_data_root") and not hasattr(args, "dataset_name"):
        return  # not a script with the diffusers data flags
    entries, skipped = read_script_data(args)
    if not entries:
        source = (
            f"--dataset_name '{args.dataset_name}'"
            if getattr(args, "dataset_name", None)
            else (f"--instance_data_root '{args.instance_data_root}'")
        )
        first = f"; first: {skipped[0].path}: {skipped[0].reason}" if skipped else ""
        raise UsageError(f"{source}: no clip to train on ({len(skipped)} unusable entries{first})")


def plan_samples(
    hook: Any, entries: list[ListingEntry], args: argparse.Namespace, model: ModelInfo, progress: bool = True
) -> tuple[list[Sample], list[Skipped]]:
    """Probe every clip and ask the plugins for its targets; the same plan for training and `plan`.

    Every target is checked as it arrives and the run's needs are checked against the targets'
    shapes (cogvx_ext.data.contracts): a violation is a UsageError, before anything is decoded.

    With a stage schedule (``cogvx_stages``) the samples are ordered stage by stage, so they are
    encoded (and their progress shown) one stage after the other.
    """
    from tqdm.auto import tqdm

    from cogvx_ext.data.clips import STAGE_TAG
    from cogvx_ext.data.contracts import check_clip_targets, check_data_requirements
    from cogvx_ext.data.video import probe

    stages = hook.cogvx_stages(args=args)
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    for entry in tqdm(entries, desc="cogvx-ext: reading clip headers", disable=not progress, leave=False):
        try:
            info = hook.cogvx_probe(path=entry.path, args=args)
            if info is None:  # a hook relay made without the core's defaults (cogvx_ext.plugin.defaults)
                info = probe(entry.path)
            clip = Clip(index=entry.index, path=entry.path, prompt=entry.prompt, info=info)
            asked = dict(clip=clip, args=args, model=model, stages=stages)
            targets = hook.cogvx_clip_targets(**asked)
        except SkipClip as exc:
            skipped.append(Skipped(entry.path, str(exc)))
            continue
        if not targets:
            skipped.append(Skipped(entry.path, "no plugin produced a training target for it"))
            continue
        check_clip_targets(hook.cogvx_clip_targets, asked, targets, clip, model)
        samples.extend(Sample(clip, target) for target in targets)
    check_data_requirements(hook, samples, args, model)
    if stages:
        samples.sort(key=lambda s: int(s.target.tag(STAGE_TAG) or 0))  # stable: clip order within a stage
    return samples, skipped


def report_skipped(skipped: list[Skipped]) -> None:
    """Name every skipped clip in the training log."""
    from tqdm.auto import tqdm

    for item in skipped:
        tqdm.write(f"cogvx-ext: skipped {item.path}: {item.reason}", file=sys.stderr)


class LatentPosterior:
    """A VAE posterior kept as one tensor ``[1, 2C, F, H, W]`` (mean, log-variance).

    Offers what the scripts' collate functions call (``sample()``) and what diffusers'
    ``DiagonalGaussianDistribution`` offers besides (``mode()``, ``mean``, ``logvar``,
    ``parameters``), at a quarter of its memory: std and var are computed when sampling.
    """

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters

    @classmethod
    def from_distribution(cls, dist: Any, device: str | torch.device = "cpu") -> LatentPosterior:
        return cls(dist.parameters.detach().to(device))

    @property
    def mean(self) -> torch.Tensor:
        return self.parameters.chunk(2, dim=1)[0]

    @property
    def logvar(self) -> torch.Tensor:
        # The same clamp as diffusers' DiagonalGaussianDistribution.
        return torch.clamp(self.parameters.chunk(2, dim=1)[1], -30.0, 20.0)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        mean = self.mean
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * self.logvar) * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.parameters.shape)


def encode_samples(
    hook: Any,
    samples: list[Sample],
    vae: Any,
    kind: str,
    args: argparse.Namespace,
    rank: int,
    world: int,
    progress: bool,
) -> tuple[list[Any], list[Skipped]]:
    """Encode this rank's share of the samples (one at a time), then share all of them.

    Returns one entry per sample: a LatentPosterior, a tuple of them (I2V: video, image), or None
    for a sample whose clip failed to decode (a file can pass the header probe and still be cut
    short). Every rank gets the same Nones; the failures list (with reasons) is this rank's own.
    """
    from tqdm.auto import tqdm

    results: list[Any] = [None] * len(samples)
    failed: list[Skipped] = []
    mine = range(rank, len(samples), world)
    with torch.no_grad():
        for i in tqdm(mine, desc="cogvx-ext: decoding and encoding clips", disable=not progress):
            try:
                encoded = hook.cogvx_encode_sample(sample=samples[i], vae=vae, kind=kind, args=args)
            except SkipClip as exc:
                failed.append(Skipped(samples[i].clip.path, str(exc)))
                continue
            if encoded is None:
                raise RuntimeError(f"no plugin encoded {samples[i].clip.path}")
            results[i] = _to_cpu_posteriors(encoded)
    if world > 1:
        _share(results, world, device=vae_device(vae), dtype=vae.dtype)
    return results, failed


def _to_cpu_posteriors(encoded: Any) -> Any:
    if isinstance(encoded, tuple):
        return tuple(_to_cpu_posteriors(part) for part in encoded)
    if isinstance(encoded, LatentPosterior):
        return LatentPosterior(encoded.parameters.detach().cpu())
    return LatentPosterior.from_distribution(encoded)


def vae_device(vae: Any) -> torch.device:
    return next(vae.parameters()).device


def _share(results: list[Any], world: int, device: torch.device, dtype: torch.dtype) -> None:
    """Broadcast every sample's posteriors from the rank that encoded it, shapes first."""
    import torch.distributed as dist

    # gloo works on CPU tensors, nccl only on CUDA ones: send through the VAE's device.
    for i in range(len(results)):
        owner = i % world
        mine = results[i] is not None  # on the owner, None means the clip failed: count 0 tells everyone
        parts = results[i] if isinstance(results[i], tuple) else (results[i],) if mine else None
        count = torch.tensor([len(parts) if mine else 0], dtype=torch.int64, device=device)
        dist.broadcast(count, src=owner)
        received = []
        for p in range(int(count.item())):
            shape = torch.zeros(8, dtype=torch.int64, device=device)
            if mine:
                dims = parts[p].parameters.shape
                shape[0] = len(dims)
                shape[1 : 1 + len(dims)] = torch.tensor(dims, dtype=torch.int64)
            dist.broadcast(shape, src=owner)
            dims = tuple(int(d) for d in shape[1 : 1 + int(shape[0])])
            if mine:
                data = parts[p].parameters.to(device=device, dtype=dtype).contiguous()
            else:
                data = torch.empty(dims, dtype=dtype, device=device)
            dist.broadcast(data, src=owner)
            received.append(LatentPosterior(data.cpu()) if not mine else parts[p])
        if not mine and received:
            results[i] = tuple(received) if len(received) > 1 else received[0]


def latent_shape_key(sample: Sample, model: ModelInfo) -> tuple[int, int, int]:
    """The latent (frames, height, width) a sample trains at: batches must share it."""
    return model.latent_shape(sample.target.num_frames, sample.target.height, sample.target.width)
