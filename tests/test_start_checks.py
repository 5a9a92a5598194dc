"""Mistakes that would cost a whole run without a word stop it at start, before any model loads,
with one line: caption and video listings of different lengths (the pairing by line would shift),
an output or cache folder that takes no file, a resume with other plugins or plugin settings."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests_support import HERE, read_events, training_args

from cogvx_ext.base.errors import UsageError
from cogvx_ext.base.io import folder_write_problem
from cogvx_ext.plugin.state import settings_differences
from cogvx_ext.script.data_formats import read_listing
from cogvx_ext.testing import write_dataset

RECORDER = f"{HERE / 'plugins' / 'recorder.py'}:Recorder"
LOG_SHAPES = HERE.parent / "examples" / "log_shapes.py"
CLIPS = [(256, 144, 17), (144, 256, 17), (192, 144, 17)]
SPLIT = ["A cat sits on a mat.", "A dog runs", "across the field.", "A bird flies."]  # 4 lines, 3 clips


def listing(root: Path, prompts: list[str], videos: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for video in videos:
        (root / video).touch()
    (root / "prompts.txt").write_text("".join(f"{p}\n" for p in prompts))
    (root / "videos.txt").write_text("".join(f"{v}\n" for v in videos))
    return root


# ---------------------------------------------------------------------------------------------
# Captions and videos pair by line


def test_a_caption_split_over_two_lines_stops_naming_the_line(tmp_path):
    root = listing(tmp_path, SPLIT, ["a.mp4", "b.mp4", "c.mp4"])
    with pytest.raises(UsageError) as info:
        read_listing(root, "prompts.txt", "videos.txt")
    assert str(info.value) == (
        "prompts.txt has 4 non-empty lines and videos.txt 3: captions pair with videos by line (as in the "
        "training script), so from the first stray line on every clip would train with another clip's "
        'caption; prompts.txt:3 ("across the field.") looks like the rest of line 2. Make both files one '
        "line per clip, or add --allow_unpaired_captions to train the first 3 pairs as they are"
    )


def test_unpaired_lines_without_a_telltale_name_the_first_line_without_a_partner(tmp_path):
    # Captions in no sentence style (lower case, no full stop): no line stands out as a continuation.
    # Line numbers count blank lines, as an editor shows them.
    root = listing(tmp_path / "captions", ["cat", "dog", "", "bird"], ["a.mp4", "b.mp4"])
    with pytest.raises(UsageError) as info:
        read_listing(root, "prompts.txt", "videos.txt")
    assert 'the first caption without a video is prompts.txt:4 ("bird")' in str(info.value)
    assert "prompts.txt has 3 non-empty lines and videos.txt 2" in str(info.value)
    root = listing(tmp_path / "videos", ["a cat.", "a dog."], ["a.mp4", "b.mp4", "c.mp4"])
    with pytest.raises(UsageError) as info:
        read_listing(root, "prompts.txt", "videos.txt")
    assert "the first video without a caption is videos.txt:3 ('c.mp4')" in str(info.value)


def test_allow_unpaired_captions_trains_the_first_pairs_and_names_what_it_drops(tmp_path):
    root = listing(tmp_path, SPLIT, ["a.mp4", "b.mp4", "c.mp4"])
    entries, skipped = read_listing(root, "prompts.txt", "videos.txt", allow_unpaired=True)
    assert [(Path(e.path).name, e.prompt) for e in entries] == [
        ("a.mp4", SPLIT[0]),
        ("b.mp4", SPLIT[1]),
        ("c.mp4", SPLIT[2]),
    ]
    assert [(s.path, s.reason) for s in skipped] == [
        (
            "prompts.txt:4",
            "1 line(s) without a partner dropped (--allow_unpaired_captions; prompts.txt has 4 lines, "
            "videos.txt 3): the first 3 pairs train as listed",
        )
    ]


def cogvx_ext(*args):
    code = "import sys; from cogvx_ext.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300
    )


PLAN = ["--caption_column", "prompts.txt", "--video_column", "videos.txt", "--height", "96", "--width", "160",
        "--max_num_frames", "9", "--train_batch_size", "1"]  # fmt: skip


def test_the_plan_stops_on_unpaired_listings_and_gives_each_clip_its_prompt(tmp_path):
    data = write_dataset(tmp_path / "data", CLIPS, prompts=["one.", "two.", "three."])
    result = cogvx_ext("plan", "--instance_data_root", data, *PLAN, "--json", tmp_path / "plan.json")
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    videos = (data / "videos.txt").read_text().split()
    assert {Path(c["path"]).name: c["prompt"] for c in plan["clips"]} == {
        Path(v).name: p for v, p in zip(videos, ["one.", "two.", "three."])
    }

    (data / "prompts.txt").write_text("".join(f"{p}\n" for p in SPLIT))
    stopped = cogvx_ext("plan", "--instance_data_root", data, *PLAN)
    assert stopped.returncode == 2 and stopped.stdout == ""
    assert stopped.stderr.strip() == f"cogvx-ext: {stopped_line()}"
    allowed = cogvx_ext(
        "plan", "--instance_data_root", data, *PLAN, "--allow_unpaired_captions", "--json", "-"
    )
    assert allowed.returncode == 0, allowed.stderr
    clips = json.loads(allowed.stdout)["clips"]
    assert [c["prompt"] for c in clips if c["status"] == "ok"] == SPLIT[:3]
    assert [c["path"] for c in clips if c["status"] == "skipped"] == ["prompts.txt:4"]


def stopped_line() -> str:
    return (
        "prompts.txt has 4 non-empty lines and videos.txt 3: captions pair with videos by line (as in the "
        "training script), so from the first stray line on every clip would train with another clip's "
        'caption; prompts.txt:3 ("across the field.") looks like the rest of line 2. Make both files one '
        "line per clip, or add --allow_unpaired_captions to train the first 3 pairs as they are"
    )


# ---------------------------------------------------------------------------------------------
# Folders that take no file


@contextlib.contextmanager
def locked(folder: Path):
    """Make ``folder`` refuse new files, for this process too; yields whether that was possible.
    As root permission bits stop nothing, so the folder is made immutable (chattr +i) where the
    file system allows it."""
    folder.mkdir(exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield True
        finally:
            folder.chmod(0o755)
        return
    if (
        shutil.which("chattr") is None
        or subprocess.run(["chattr", "+i", folder], capture_output=True).returncode
    ):
        yield False  # root where chattr +i does not work: no folder here refuses root's files
        return
    try:
        yield True
    finally:
        subprocess.run(["chattr", "-i", folder], check=True)


@pytest.fixture
def locked_folder(tmp_path):
    with locked(tmp_path / "locked") as done:
        if not done:
            pytest.skip("running as root where chattr +i does not work: no folder here refuses root's files")
        yield tmp_path / "locked"


def test_a_folder_is_judged_by_a_real_file_not_by_its_permission_bits(tmp_path, locked_folder):
    assert folder_write_problem(locked_folder).startswith("is not writable: creating a file there fails (")
    assert folder_write_problem(locked_folder / "new" / "out").startswith(
        f"cannot be created: creating a file in {locked_folder} fails ("
    )
    (tmp_path / "notes.txt").write_text("x")
    assert folder_write_problem(tmp_path / "notes.txt") == "is a file, not a folder"
    assert (
        folder_write_problem(tmp_path / "notes.txt" / "out")
        == f"cannot be created: {tmp_path / 'notes.txt'} is a file"
    )
    assert folder_write_problem(tmp_path / "new" / "out") is None
    assert not (tmp_path / "new").exists() and sorted(os.listdir(tmp_path)) == ["locked", "notes.txt"]
    if os.geteuid() == 0:  # bits that forbid writing do not stop root, so they do not stop the run
        (tmp_path / "bits").mkdir(mode=0o555)
        assert folder_write_problem(tmp_path / "bits") is None


# ---------------------------------------------------------------------------------------------
# Resume


def test_settings_differences_name_what_changes_the_training():
    bucket = {
        "plugin": "p.bucket:Bucket",
        "name": "aspect_bucket",
        "settings": {"bucket_area": 100, "seed": 0},
    }
    rope = {"plugin": "p.rope:Rope", "name": "rope_rescale", "settings": {"rope_mode": "pipeline"}}
    logger = {"plugin": "log_shapes", "name": "./log_shapes.py", "settings": None}
    assert settings_differences([bucket, rope], [bucket, rope, logger]) == []  # logging only: no difference
    assert settings_differences([bucket, rope, logger], [rope]) == ["aspect_bucket left out"]
    assert settings_differences([rope], [{**rope, "settings": {"rope_mode": "ntk"}}, bucket]) == [
        'rope_rescale rope_mode "pipeline" -> "ntk"',
        "aspect_bucket added",
    ]
    assert settings_differences([bucket], [{**bucket, "settings": {"bucket_area": 100}}]) == [
        "aspect_bucket seed 0 -> (unset)"
    ]


# ---------------------------------------------------------------------------------------------
# End to end, with the trainers


script_args = functools.partial(training_args, steps=1)


def stops_before_models_load(result, record: Path) -> str:
    """The run's one line, after checking it stopped with status 2 before loading a model."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    events = read_events(record)["events-rank0.jsonl"]
    assert {e["event"] for e in events} >= {"configure", "requires"}
    assert not [e for e in events if e["event"] in ("accelerator_ready", "transformer_loaded")]
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_unpaired_listings_stop_training_before_models_load(tiny_models, t2v_trainer, train, tmp_path):
    data = write_dataset(tmp_path / "data", CLIPS, prompts=["one.", "two.", "three."])
    (data / "prompts.txt").write_text("".join(f"{p}\n" for p in SPLIT))
    model, record = tiny_models["5b"], tmp_path / "events"
    plugins = ["--plugins", f"{RECORDER},aspect_bucket,rope_rescale", "--recorder_out", record]
    result = train(t2v_trainer, script_args(model, data, tmp_path / "out", *plugins))
    assert stops_before_models_load(result, record) == f"cogvx-ext: {stopped_line()}"

    # Without a data plugin (the recorder is one: it wraps the data hooks) the script's own dataset
    # reads the listing, and refuses it whatever we allow.
    stock = ["--plugins", "rope_rescale", "--allow_unpaired_captions"]
    result = train(t2v_trainer, script_args(model, data, tmp_path / "out", *stock))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "cogvx-ext: --allow_unpaired_captions needs a data plugin (aspect_bucket): the script's own dataset, "
        "used without one, stops on caption and video files of different lengths"
    )
    assert not (tmp_path / "out").exists()  # stopped before the script made its output folder

    allowed = train(
        t2v_trainer, script_args(model, data, tmp_path / "out", *plugins, "--allow_unpaired_captions")
    )
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert (
        "cogvx-ext: skipped prompts.txt:4: 1 line(s) without a partner dropped (--allow_unpaired_captions; "
        "prompts.txt has 4 lines, videos.txt 3): the first 3 pairs train as listed"
    ) in allowed.stderr
    prompts = {e["path"]: e["prompt"] for e in read_events(record)["events-rank0.jsonl"]
               if e["event"] == "clip_targets"}  # fmt: skip
    videos = [Path(v).name for v in (data / "videos.txt").read_text().split()]
    assert prompts == dict(zip(videos, SPLIT))


@pytest.mark.slow
def test_folders_that_take_no_file_stop_training_before_models_load(
    tiny_models, t2v_trainer, train, tmp_path
):
    data = write_dataset(tmp_path / "data", CLIPS[:1])
    model, record = tiny_models["5b"], tmp_path / "events"
    plugins = ["--plugins", f"{RECORDER},aspect_bucket,rope_rescale", "--recorder_out", record]

    def one_line(out, *extra):
        return stops_before_models_load(
            train(t2v_trainer, script_args(model, data, out, *plugins, *extra)), record
        )

    (tmp_path / "notes.txt").write_text("not a folder")
    line = one_line(tmp_path / "notes.txt")
    assert line == (
        f"cogvx-ext: --output_dir {tmp_path / 'notes.txt'} is a file, not a folder; the checkpoints and the LoRA "
        "are saved there: give a folder you can write to"
    )
    folder = tmp_path / "locked"
    with locked(folder) as done:
        if not done:
            pytest.skip("running as root where chattr +i does not work: no folder here refuses root's files")
        line = one_line(folder)
        assert line.startswith(
            f"cogvx-ext: --output_dir {folder} is not writable: creating a file there fails ("
        )
        assert line.endswith("; the checkpoints and the LoRA are saved there: give a folder you can write to")
        line = one_line(tmp_path / "out", "--plugins", "latent_cache", "--latent_cache_dir", folder)
        assert line.startswith(
            f"cogvx-ext: --latent_cache_dir {folder} is not writable: creating a file there"
        )
        assert line.endswith("give a folder you can write to, or add --latent_cache_readonly to only read it")


@pytest.mark.slow
def test_resume_with_other_plugins_or_settings_stops_naming_the_differences(
    tiny_models, t2v_trainer, train, tmp_path
):
    data = write_dataset(tmp_path / "data", CLIPS)
    model, out = tiny_models["5b"], tmp_path / "out"

    def launch(plugins, *extra, steps, record=None):
        record = record or tmp_path / f"events{steps}"
        flags = ["--plugins", f"{RECORDER},{plugins}", "--recorder_out", record, *extra]
        return train(t2v_trainer, script_args(model, data, out, *flags, steps=steps)), record

    first, _ = launch("aspect_bucket,rope_rescale", "--checkpointing_steps", 1, steps=1)
    assert first.returncode == 0, first.stderr[-3000:]
    saved = json.loads((out / "checkpoint-1" / "cogvx_ext_state.json").read_text())["plugin_settings"]
    assert [(p["name"], p["settings"] is not None) for p in saved] == [
        ("recorder:Recorder", False),
        ("aspect_bucket", True),
        ("rope_rescale", True),
    ]

    resume = ["--resume_from_checkpoint", "latest"]
    changed, record = launch(
        "rope_rescale", *resume, "--rope_mode", "ntk", steps=2, record=tmp_path / "changed"
    )
    assert stops_before_models_load(changed, record) == (
        f"cogvx-ext: --resume_from_checkpoint: {out / 'checkpoint-1'} was trained with other plugins or plugin "
        'settings: aspect_bucket left out; rope_rescale rope_mode "pipeline" -> "ntk". Resume with the '
        "checkpoint's --plugins and flags, or add --allow_changed_plugins_on_resume to continue anyway"
    )
    named, record = launch("aspect_bucket,rope_rescale", "--resume_from_checkpoint", out / "checkpoint-1",
                           "--bucket_max_crop", "0.3", steps=2, record=tmp_path / "named")  # fmt: skip
    assert stops_before_models_load(named, record).endswith(
        "plugin settings: aspect_bucket bucket_max_crop 0.25 -> 0.3. Resume with the checkpoint's --plugins "
        "and flags, or add --allow_changed_plugins_on_resume to continue anyway"
    )

    # A plugin that changes neither data nor model (it declares no training settings) may be added.
    logged, record = launch(
        f"aspect_bucket,rope_rescale,{LOG_SHAPES}", *resume, "--checkpointing_steps", 1, steps=2
    )
    assert logged.returncode == 0, logged.stderr[-3000:]
    assert "cogvx-ext: warning" not in logged.stderr
    assert [e for e in read_events(record)["events-rank0.jsonl"] if e["event"] == "load_state_dict"]

    # Told to, the run goes on after one warning line.
    forced, record = launch("aspect_bucket,rope_rescale", *resume, "--bucket_max_crop", "0.3",
                            "--allow_changed_plugins_on_resume", steps=3)  # fmt: skip
    assert forced.returncode == 0, forced.stderr[-3000:]
    warnings = [line for line in forced.stderr.splitlines() if line.startswith("cogvx-ext: warning")]
    assert warnings == [
        f"cogvx-ext: warning: --allow_changed_plugins_on_resume: resuming anyway; {out / 'checkpoint-2'} was "
        "trained with other plugins or plugin settings: aspect_bucket bucket_max_crop 0.25 -> 0.3"
    ]
    steps = [e["step"] for e in read_events(record)["events-rank0.jsonl"] if e["event"] == "step_end"]
    assert steps == [3]  # resumed at step 2, not started over
