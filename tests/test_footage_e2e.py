"""End to end on real footage: a mixed folder of every fixture kind plans and trains upright, at
display aspect and true times, through the T2V trainer in both data formats and the I2V trainer
(ours, or the diffusers scripts with COGVX_EXT_TRAINER / COGVX_EXT_I2V_TRAINER); nothing the
plan accepts is dropped later."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from footage import KINDS, expected_red, vfr_times, write_kind
from tests_support import HERE

pytestmark = pytest.mark.slow

READER = f"{HERE / 'plugins' / 'marker_reader.py'}:MarkerReader"
BIN = Path(sys.executable).parent
# Buckets of exactly the fixtures' display aspects (5:3 landscape and portrait, 2:1): no crop, so
# every marker must show where the player shows it.
BUCKETS = "160x96,96x160,192x96"
# Frame i of each fixture is shown at this time (seconds from its first shown frame).
TIMES = {"vfr.mp4": vfr_times(40), "gif.gif": [i * 0.08 for i in range(20)]}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed footage")
    paths = [write_kind(root / "clips ü", kind) for kind in KINDS]
    names = [str(p.relative_to(root)) for p in paths]
    (root / "videos.txt").write_text("\ufeff" + "".join(f"{n}\r\n" for n in names), encoding="utf-8")
    (root / "prompts.txt").write_text("".join(f"a {p.stem} clip\r\n" for p in paths), encoding="utf-8")
    meta = root / "meta"
    meta.mkdir()
    with open(meta / "train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "text"])
        writer.writerows((n, f"a {Path(n).stem} clip") for n in names)
    return root


def data_flags(root, fmt):
    if fmt == "csv":
        return [
            "--instance_data_root",
            root,
            "--dataset_name",
            root / "meta",
            "--cache_dir",
            root / "hf-cache",
        ]
    return ["--instance_data_root", root, "--caption_column", "prompts.txt", "--video_column", "videos.txt"]


def common_flags():
    return ["--height", 96, "--width", 160, "--max_num_frames", 9, "--fps", 8, "--buckets", BUCKETS,
            "--train_batch_size", 1]  # fmt: skip


def plan(root, fmt, *extra) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "cogvx-ext"), "plan", *map(str, data_flags(root, fmt) + common_flags()), "--model", "5b",
         *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_plan_text_names_display_geometry_and_the_pyav_files(mixed):
    text = plan(mixed, "listing").stdout
    root = mixed / "clips ü"
    assert f"{root / 'rotate90.mp4'}: stored 160x96, rotation 90, sample aspect 1:1 -> display 96x160" in text
    assert (
        f"{root / 'anamorphic.mp4'}: stored 144x96, rotation 0, sample aspect 4:3 -> display 192x96" in text
    )
    pyav = text.split("read with PyAV (4 clips")[1].splitlines()[1:5]
    assert sorted(line.strip() for line in pyav) == sorted(
        str(root / name) for name in ("edit_list.mp4", "gif.gif", "mpegts.ts", "vp9_realtime.webm")
    )


@pytest.mark.parametrize("fmt, kind", [("listing", "t2v"), ("csv", "t2v"), ("listing", "i2v")])
def test_mixed_footage_trains_upright_at_display_aspect_and_true_times(
    tiny_models, t2v_trainer, i2v_trainer, train, mixed, tmp_path, fmt, kind
):
    planned = json.loads(plan(mixed, fmt, "--json", "-").stdout)
    ok = {Path(c["path"]).name: c for c in planned["clips"] if c["status"] == "ok"}
    assert len(ok) == len(KINDS), [c for c in planned["clips"] if c["status"] != "ok"]
    rotated = ok["rotate90.mp4"]["source"]
    assert (rotated["stored"], rotated["display"], rotated["rotation"]) == ("160x96", "96x160", 90)
    assert ok["anamorphic.mp4"]["source"]["sample_aspect"] == "4:3"

    record = tmp_path / "markers.jsonl"
    model, plugins = (
        ("5b", "aspect_bucket,rope_rescale")
        if kind == "t2v"
        else ("5b-I2V", "aspect_bucket,rope_rescale,posemb_adapt")
    )
    args = [
        "--pretrained_model_name_or_path", tiny_models[model], *data_flags(mixed, fmt), *common_flags(),
        "--max_train_steps", 3, "--output_dir", tmp_path / "out", "--seed", 0, "--rank", 4, "--lora_alpha", 4,
        "--plugins", f"{READER},{plugins}", "--marker_reader_out", record,
    ]  # fmt: skip
    result = train(t2v_trainer if kind == "t2v" else i2v_trainer, args)
    assert result.returncode == 0, result.stderr[-6000:]
    assert "skipped" not in result.stderr, result.stderr[-3000:]
    decoded = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
    by_path = {d["path"]: d for d in decoded}
    # Every clip the plan accepted was decoded, at the size and frames the plan gave it.
    assert set(by_path) == set(ok)
    for name, sample in by_path.items():
        assert sample["size"] == f"{ok[name]['width']}x{ok[name]['height']}" == sample["display"], name
        assert len(sample["indices"]) == ok[name]["frames"]
        width, height = map(int, sample["display"].split("x"))
        for red, green in zip(sample["red"], sample["green"]):
            assert red == pytest.approx(expected_red(width, height), abs=0.03), name
            assert green == pytest.approx([0.95, 0.45], abs=0.03), name
        # The clock shows the frame picked (an edit list hides the first 30), 1/fps apart in source time.
        first_shown = 30 if name == "edit_list.mp4" else 0
        assert sample["clocks"] == [first_shown + i for i in sample["indices"]], name
        source_fps = 25 if name == "mpegts.ts" else 30 if name == "vp9_realtime.webm" else 24
        times = TIMES.get(name) or [i / source_fps for i in range(first_shown + 72)]
        shown = [times[c] - times[sample["clocks"][0]] for c in sample["clocks"]]
        assert shown == pytest.approx(sample["times"], abs=2e-3), name
        for k, t in enumerate(shown):
            half_frame = 0.5 * max(b - a for a, b in zip(times, times[1:]))
            assert abs(t - k / 8) <= half_frame + 1e-6, (name, k, t)
