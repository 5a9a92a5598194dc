"""Without a data plugin (`--plugins rope_rescale` alone) the training script reads the clips
itself, as it does without cogvx-ext: the plan says so and promises no skip and no upright frame
that training would not give. rope_rescale on a model without RoPE says that it does nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from footage import write_kind

from cogvx_ext.cli.main import main as cogvx_ext_main
from cogvx_ext.testing import write_clip

STOCK = (
    "data: no data plugin among the chosen (rope_rescale): the training script reads the clips itself: it "
    "skips nothing (a clip it cannot read stops it), ignores rotation and sample aspect (frames as stored), "
    "and every clip is resized to cover 160x96 and centre-cropped; add aspect_bucket to --plugins for "
    "per-clip sizes, skips and upright frames"
)
NO_ROPE = (
    "cogvx-ext: warning: rope_rescale does nothing in training for the 2b model (no RoPE: its sin-cos "
    "positions follow every batch's size by themselves); only its validation sizes apply "
    "(--validation_resolutions)"
)


def dataset(root: Path) -> Path:
    """A plain clip, a phone clip stored landscape and shown portrait, and a truncated clip."""
    root.mkdir(parents=True)
    write_clip(root / "plain.mp4", 160, 96, 17)
    write_kind(root, "rotate90")
    (root / "truncated.mp4").write_bytes((root / "plain.mp4").read_bytes()[:3000])
    (root / "videos.txt").write_text("plain.mp4\nrotate90.mp4\ntruncated.mp4\n")
    (root / "prompts.txt").write_text("a plain clip\na phone clip\na broken clip\n")
    return root


def plan(root, tmp_path, capsys, *flags):
    out = tmp_path / "plan.json"
    status = cogvx_ext_main(
        [
            "plan",
            "--instance_data_root",
            str(root),
            "--caption_column",
            "prompts.txt",
            "--video_column",
            "videos.txt",
            "--height",
            "96",
            "--width",
            "160",
            "--max_num_frames",
            "9",
            "--json",
            str(out),
            *flags,
        ]  # fmt: skip
    )
    captured = capsys.readouterr()
    report = json.loads(out.read_text())
    return (
        status,
        captured.out.splitlines(),
        captured.err,
        report,
        {Path(c["path"]).name: c for c in report["clips"]},
    )


def test_the_plan_says_the_script_reads_the_data_without_a_data_plugin(tmp_path, capsys):
    root = dataset(tmp_path / "data")
    status, lines, _, report, clips = plan(root, tmp_path, capsys, "--plugins", "rope_rescale")
    assert lines[0] == STOCK
    assert report["data_path"] == "script" and report["data_path_note"] == STOCK[len("data: ") :]
    # The script skips nothing: the broken clip is not promised as skipped, and the run would stop on it.
    assert clips["truncated.mp4"]["status"] == "unusable"
    assert report["summary"]["skipped"] == 0 and report["summary"]["unusable"] == 1
    assert lines[1].endswith("3 clips, 2 used, 1 unusable; 1 shapes; 1 process(es)")
    assert (
        "unusable (1; the script's own data path skips nothing: it stops on a clip it cannot read):" in lines
    )
    assert (
        "display geometry (1 clips shown otherwise than stored; the script reads them as stored: they train "
        "sideways or stretched):" in lines
    )
    assert status == 1

    status, lines, _, report, clips = plan(root, tmp_path, capsys, "--plugins", "aspect_bucket,rope_rescale")
    assert lines[0].startswith("cogvx-ext plan (aspect_bucket, rope_rescale): 3 clips, 2 used, 1 skipped")
    assert report["data_path"] == "plugins" and report["data_path_note"] is None
    assert clips["truncated.mp4"]["status"] == "skipped"
    assert "display geometry (1 clips shown otherwise than stored; bucketed as shown):" in lines
    assert status == 0


def test_the_plan_says_the_i2v_script_stretches(tmp_path, capsys):
    root = dataset(tmp_path / "data")
    (root / "truncated.mp4").unlink()
    (root / "videos.txt").write_text("plain.mp4\nrotate90.mp4\n")
    (root / "prompts.txt").write_text("a plain clip\na phone clip\n")
    status, lines, _, report, _ = plan(
        root, tmp_path, capsys, "--plugins", "rope_rescale", "--model", "5b-I2V"
    )
    assert "every clip is stretched to 160x96 (its aspect is not kept)" in lines[0]
    assert status == 0


def test_rope_rescale_says_it_does_nothing_for_a_model_without_rope(tmp_path, capsys):
    root = dataset(tmp_path / "data")
    *_, err, _, _ = plan(root, tmp_path, capsys, "--plugins", "aspect_bucket,rope_rescale", "--model", "2b")
    assert err.splitlines().count(NO_ROPE) == 1
    *_, err, _, _ = plan(root, tmp_path, capsys, "--plugins", "aspect_bucket,rope_rescale", "--model", "5b")
    assert "warning" not in err


@pytest.mark.slow
def test_training_without_a_data_plugin_does_what_the_plan_says(tiny_models, t2v_trainer, train, tmp_path):
    """The plan's promise checked against the script: it stops on the clip the plan calls unusable,
    and rope_rescale says once, before any model loads, that it does nothing for 2b."""
    root = dataset(tmp_path / "data")
    args = [
        "--pretrained_model_name_or_path", tiny_models["2b"], "--instance_data_root", root,
        "--caption_column", "prompts.txt", "--video_column", "videos.txt", "--height", 96, "--width", 160,
        "--max_num_frames", 9, "--train_batch_size", 1, "--max_train_steps", 1, "--output_dir", tmp_path / "out",
        "--rank", 4, "--lora_alpha", 4, "--plugins", "rope_rescale",
    ]  # fmt: skip
    result = train(t2v_trainer, args)
    assert result.returncode != 0
    assert "truncated.mp4" in result.stderr, result.stderr[-3000:]
    assert result.stderr.splitlines().count(NO_ROPE) == 1
    assert not (tmp_path / "out" / "pytorch_lora_weights.safetensors").exists()
