"""The training scripts' two data formats, read as the scripts read them: ``--instance_data_root``
with line-separated caption and video files, or ``--dataset_name`` (``datasets.load_dataset``).
A problem with one clip is reported and skipped, not fatal; a source with nothing to train on,
or caption and video files of different lengths (the pairing by line would be wrong), stops the
run before any model loads."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from cogvx_ext.base.errors import UsageError
from cogvx_ext.data.clips import ListingEntry, Skipped

ALLOW_UNPAIRED_FLAG = "--allow_unpaired_captions"


def add_data_format_arguments(parser: argparse.ArgumentParser) -> None:
    """cogvx-ext's flag about the scripts' listings, on the script's parser and the offline tools'."""
    if ALLOW_UNPAIRED_FLAG in parser._option_string_actions:
        return
    parser.add_argument(
        ALLOW_UNPAIRED_FLAG,
        action="store_true",
        help="cogvx-ext: when --caption_column and --video_column have different line counts, train "
        "the pairs of the first lines as they are and drop the rest (default: stop, as the script "
        "does: a caption split over two lines would give every later clip another clip's caption)",
    )


def check_unpaired_flag(args: argparse.Namespace, data_plugin: bool) -> None:
    """``--allow_unpaired_captions`` takes effect through cogvx-ext's data path only: without a data
    plugin the script's own dataset reads the listing, and it stops on unpaired files."""
    if getattr(args, "allow_unpaired_captions", False) and not data_plugin:
        raise UsageError(
            f"{ALLOW_UNPAIRED_FLAG} needs a data plugin (aspect_bucket): the script's own dataset, used "
            "without one, stops on caption and video files of different lengths"
        )


def read_listing(
    root: str | Path, caption_column: str, video_column: str, allow_unpaired: bool = False
) -> tuple[list[ListingEntry], list[Skipped]]:
    """Read the scripts' local dataset layout, captions and videos paired by line as the scripts
    pair them; problems of one clip become Skipped entries, not exceptions.

    Fatal (UsageError): a missing folder or listing file (nothing to train on), and files with
    different numbers of lines, as in the scripts: every caption after a stray line would belong
    to another clip. With ``allow_unpaired`` the first lines train as paired and the lines beyond
    the shorter file are dropped, named in one Skipped entry.
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
        # surrounding spaces go, and blank lines, as in the scripts (spaces inside a path stay).
        with open(path, encoding="utf-8-sig") as f:
            files[flag] = [(number, line.strip()) for number, line in enumerate(f, 1) if line.strip()]
    prompts, videos = files["--caption_column"], files["--video_column"]
    skipped = []
    if len(prompts) != len(videos):
        if not allow_unpaired:
            raise UsageError(unpaired_message(root, caption_column, prompts, video_column, videos))
        paired = min(len(prompts), len(videos))
        name, extra = (caption_column, prompts) if len(prompts) > paired else (video_column, videos)
        first, last = extra[paired][0], extra[-1][0]
        lines = f"{name}:{first}" if first == last else f"{name}:{first}-{last}"
        skipped.append(
            Skipped(
                lines,
                f"{len(extra) - paired} line(s) without a partner dropped ({ALLOW_UNPAIRED_FLAG}; "
                f"{caption_column} has {len(prompts)} lines, {video_column} {len(videos)}): "
                f"the first {paired} pairs train as listed",
            )
        )
    entries = []
    for (_, prompt), (_, video) in zip(prompts, videos):
        path = root / video
        if not path.is_file():
            skipped.append(Skipped(str(path), "file does not exist", prompt))
        else:
            entries.append(ListingEntry(len(entries), str(path), prompt))
    return entries, skipped


_SENTENCE_END = (".", "!", "?", '"', "'", ")", "]", "…", "”", "。")


def unpaired_message(
    root: Path, caption_column: str, prompts: list[tuple[int, str]], video_column: str, videos: list
) -> str:
    """One line for listings of different lengths: both counts and where the pairing first goes
    wrong, as far as the files show it (a caption that looks like the rest of the one before)."""
    paired = min(len(prompts), len(videos))
    counts = (
        f"{caption_column} has {len(prompts)} non-empty lines and {video_column} {len(videos)}: "
        "captions pair with videos by line (as in the training script), so from the first stray line "
        "on every clip would train with another clip's caption"
    )
    stray = _continued_caption(prompts) if len(prompts) > len(videos) else None
    if stray is not None:
        (before, _), (number, text) = stray
        where = f'{caption_column}:{number} ("{_short(text)}") looks like the rest of line {before}'
    elif len(prompts) > len(videos):
        number, text = prompts[paired]
        where = f'the first caption without a video is {caption_column}:{number} ("{_short(text)}")'
    else:
        missing = next(((n, v) for n, v in videos[:paired] if not (root / v).is_file()), None)
        number, text = missing or videos[paired]
        where = (
            f"{video_column}:{number} ('{_short(text)}') is not a file (a caption line?)"
            if missing
            else f"the first video without a caption is {video_column}:{number} ('{_short(text)}')"
        )
    return (
        f"{counts}; {where}. Make both files one line per clip, or add {ALLOW_UNPAIRED_FLAG} to train "
        f"the first {paired} pairs as they are"
    )


def _continued_caption(prompts: list[tuple[int, str]]):
    """The first caption line that looks like the continuation of the line before it, judged by
    how the file's other captions begin and end; ``None`` when nothing stands out."""
    if len(prompts) < 3:
        return None
    texts = [t for _, t in prompts]
    capitalised = sum(t[0].isupper() for t in texts) / len(texts)
    finished = sum(t.endswith(_SENTENCE_END) for t in texts) / len(texts)
    for previous, current in zip(prompts, prompts[1:]):
        starts_low = current[1][0].islower() or current[1][0] in ",;:-"
        if (capitalised >= 0.75 and starts_low) or (
            finished >= 0.75 and not previous[1].endswith(_SENTENCE_END)
        ):
            return previous, current
    return None


def _short(text: str, length: int = 40) -> str:
    return text if len(text) <= length else text[: length - 3] + "..."


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
    return read_listing(
        args.instance_data_root,
        args.caption_column,
        args.video_column,
        bool(getattr(args, "allow_unpaired_captions", False)),
    )


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
            skipped.append(Skipped(str(path), "file does not exist", prompt.strip()))
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
