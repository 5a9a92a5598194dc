"""A new user's first run: mistakes that the arguments and files already show stop the script
before any model loads, with one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cogvx_ext.testing import write_bad_clips, write_dataset

PLAN = ["--caption_column", "prompts.txt", "--video_column", "videos.txt", "--height", "144", "--width", "256",
        "--max_num_frames", "17", "--train_batch_size", "2"]  # fmt: skip


def cogvx_ext(*args, block_matplotlib=False):
    blocker = "sys.modules['matplotlib'] = None; " if block_matplotlib else ""
    code = f"import sys; {blocker}from cogvx_ext.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_plan_chart_draws_the_buckets(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    data = write_dataset(tmp_path / "data", [(256, 144, 25), (144, 256, 25), (160, 160, 25), (336, 144, 25)])
    bad = write_bad_clips(data / "bad")
    with open(data / "videos.txt", "a") as videos, open(data / "prompts.txt", "a") as prompts:
        for name in ("truncated", "tall_1x8"):
            videos.write(f"{bad[name].relative_to(data)}\n")
            prompts.write(f"bad {name}\n")
    chart = tmp_path / "out" / "plan.png"
    result = cogvx_ext("plan", "--instance_data_root", data, *PLAN, "--chart", chart)
    assert result.returncode == 0, result.stderr
    assert f"chart drawn in {chart}" in result.stdout
    picture = imread(chart)
    assert picture.shape[:2] == (750, 1200)
    assert picture[..., :3].std() > 0.05  # something is drawn


@pytest.mark.slow
def test_plan_chart_shows_memory_against_the_budget(tmp_path, tiny_models):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    data = write_dataset(tmp_path / "data", [(256, 144, 25), (144, 256, 25)])
    chart = tmp_path / "memory.png"
    result = cogvx_ext("plan", "--instance_data_root", data, *PLAN, "--pretrained_model_name_or_path",
                       tiny_models["5b"], "--memory", "--bucket_memory_budget", "1GiB", "--chart", chart)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "peak memory" in result.stdout and f"chart drawn in {chart}" in result.stdout
    assert imread(chart).shape[:2] == (750, 1200)


def test_plan_chart_without_matplotlib_says_how_to_get_it(tmp_path):
    data = write_dataset(tmp_path / "data", [(256, 144, 25)])
    result = cogvx_ext("plan", "--instance_data_root", data, *PLAN, "--chart", tmp_path / "plan.png",
                       block_matplotlib=True)  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "cogvx-ext: --chart needs matplotlib: pip install 'cogvx-ext[chart]' (matplotlib)"
    )
    assert result.stdout == ""  # before any planning


def test_plan_errors_come_first_without_the_usage_block():
    result = cogvx_ext("plan", "--instance_data_root", ".", "--height", "96px")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "cogvx-ext: argument --height: invalid int value: '96px' (cogvx-ext plan --help lists the flags)"
    )
    assert result.stdout == ""
    nothing = cogvx_ext("plan", "--height", "96")
    assert nothing.returncode == 2
    assert nothing.stderr.strip() == (
        "cogvx-ext: no training data: give --instance_data_root (a folder with listings) or --dataset_name"
    )
    assert "usage" in cogvx_ext("plan", "--help").stdout


def test_run_help_explains_the_runner():
    result = cogvx_ext("run", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: cogvx-ext run SCRIPT [script arguments] --plugins LIST")


def base_args(model, data, out):
    return [
        "--pretrained_model_name_or_path", model, "--instance_data_root", data,
        "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--height", 96, "--width", 160, "--max_num_frames", 9, "--train_batch_size", 1,
        "--max_train_steps", 2, "--output_dir", out, "--plugins", "aspect_bucket,rope_rescale",
    ]  # fmt: skip


@pytest.mark.parametrize("mistake", ["no_root", "no_listing", "no_clip"])
def test_data_mistakes_stop_before_any_model_loads(t2v_trainer, train, tmp_path, mistake):
    # The model folder does not exist: a run that got as far as loading it would die there with a
    # traceback instead of naming the data mistake.
    model = tmp_path / "model-that-would-take-minutes-to-load"
    data = tmp_path / "data"
    if mistake != "no_root":
        write_dataset(data, [(160, 96, 9)])
    if mistake == "no_listing":
        (data / "videos.txt").unlink()
    if mistake == "no_clip":
        (data / "videos.txt").write_text("clips/gone.mp4\n")
    result = train(t2v_trainer, base_args(model, data, tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-3000:]
    expected = {
        "no_root": f"cogvx-ext: --instance_data_root '{data}' is not a folder",
        "no_listing": f"cogvx-ext: --video_column 'videos.txt' is not a file in {data}",
        "no_clip": f"cogvx-ext: --instance_data_root '{data}': no clip to train on (1 unusable entries; "
        f"first: {data / 'clips/gone.mp4'}: file does not exist)",
    }[mistake]
    assert result.stderr.strip().splitlines()[-1].startswith(expected), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
