"""The scripts' second data format: --dataset_name (datasets.load_dataset) with its columns."""

from __future__ import annotations

import argparse
import csv

import pytest
from footage import write_video

from cogvx_ext.base.errors import UsageError
from cogvx_ext.script.data_formats import read_listing, read_script_data

CLIPS = [("a.mp4", "a cat"), ("with space é.mp4", "a dog, running"), ("c.mp4", 'a "quoted" bird')]


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for name, _ in CLIPS:
        write_video(root / name, 64, 48, num_frames=6)
    (root / "videos.txt").write_text("".join(f"{n}\n" for n, _ in CLIPS), encoding="utf-8")
    (root / "prompts.txt").write_text("".join(f"{p}\n" for _, p in CLIPS), encoding="utf-8")
    meta = tmp_path / "meta"
    meta.mkdir()
    with open(meta / "train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["clip", "caption", "other"])
        writer.writerows([(n, p, 1) for n, p in CLIPS])
    return root, meta, tmp_path / "hf-cache"


def flags(**values) -> argparse.Namespace:
    base = dict(
        instance_data_root=None,
        dataset_name=None,
        dataset_config_name=None,
        caption_column="text",
        video_column="video",
        cache_dir=None,
    )
    return argparse.Namespace(**{**base, **values})


def test_csv_folder_gives_the_clips_the_listing_gives(data):
    root, meta, cache = data
    listing, _ = read_listing(root, "prompts.txt", "videos.txt")
    for name in (meta, meta / "train.csv"):  # the folder, as the scripts load it; or the file itself
        entries, skipped = read_script_data(
            flags(dataset_name=str(name), instance_data_root=str(root), caption_column="caption",
                  video_column="clip", cache_dir=str(cache))
        )  # fmt: skip
        assert skipped == [] and entries == listing


def test_columns_default_to_the_first_two_and_must_exist(data):
    root, meta, cache = data
    entries, _ = read_script_data(
        flags(dataset_name=str(meta), instance_data_root=str(root), caption_column=None, video_column=None,
              cache_dir=str(cache))
    )  # fmt: skip
    assert [e.prompt for e in entries] == [p for _, p in CLIPS]
    with pytest.raises(
        UsageError,
        match="--video_column 'video' is not a column of the dataset; its columns are: clip, caption, other",
    ):
        read_script_data(flags(dataset_name=str(meta), instance_data_root=str(root), cache_dir=str(cache)))


def test_rows_without_file_or_caption_are_skipped_and_a_root_is_needed(data):
    root, meta, cache = data
    with open(meta / "train.csv", "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("gone.mp4", "lost", 2), ("a.mp4", "", 3)])
    entries, skipped = read_script_data(
        flags(dataset_name=str(meta), instance_data_root=str(root), caption_column="caption", video_column="clip",
              cache_dir=str(cache))
    )  # fmt: skip
    assert len(entries) == 3
    assert [(s.path, s.reason) for s in skipped] == [
        (str(root / "gone.mp4"), "file does not exist"),
        (str(root / "a.mp4"), "no caption in column caption"),
    ]
    with pytest.raises(UsageError, match="paths relative to --instance_data_root"):
        read_script_data(
            flags(dataset_name=str(meta), caption_column="caption", video_column="clip", cache_dir=str(cache))
        )
    with pytest.raises(UsageError, match="no training data"):
        read_script_data(flags())
