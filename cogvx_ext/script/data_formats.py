"""The training scripts' two data formats, read as the scripts read them: ``--instance_data_root``
with line-separated caption and video files, or ``--dataset_name`` (``datasets.load_dataset``).
A problem line is reported and skipped, not fatal; only a source with nothing to train on stops
the run, before any model loads."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from cogvx_ext.base.errors import UsageError
from cogvx_ext.data.clips import ListingEntry, Skipped


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
