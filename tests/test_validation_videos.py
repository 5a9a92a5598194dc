"""What a run shows its user: validation videos on disk at every size and in the trackers under one
key per size, and the plugins' logged values on the progress bar.

Real training runs of tiny models (the minimal trainers, or the diffusers scripts through
COGVX_EXT_TRAINER / COGVX_EXT_I2V_TRAINER); the videos are opened with PyAV.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from test_e2e import RECORDER, mixed_dataset, ok, script_args

from cogvx_ext.data.video_writer import write_video
from cogvx_ext.script.validation_videos import prompt_slug

# rope_rescale validates at the largest trained size of each orientation; the recorder makes
# validation quick (5 frames, 2 denoising steps).
VALIDATE = ["--validation_prompt", "a red cat", "--num_validation_videos", 1, "--validation_epochs", 1,
            "--recorder_fast_validation"]  # fmt: skip
PLUGINS = ["--plugins", f"{RECORDER},aspect_bucket,rope_rescale"]


def read_mp4(path: Path) -> tuple[int, int, int, dict]:
    """(width, height, decoded frames, container metadata) of an mp4, read with PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return stream.width, stream.height, frames, dict(container.metadata)


def videos_in(folder: Path) -> dict[str, tuple[int, int, int, dict]]:
    return {p.name: read_mp4(p) for p in sorted(folder.glob("*.mp4"))}


def check_named_by_size(videos: dict[str, tuple[int, int, int, dict]], slug: str) -> set[tuple[int, int]]:
    sizes, counts = set(), set()
    for name, (width, height, frames, metadata) in videos.items():
        assert name == f"{slug}-{width}x{height}-0.mp4"
        assert metadata["title"] == "a red cat"
        sizes.add((width, height))
        counts.add(frames)
    # Asked for 5 frames, the tiny VAE decodes 2 latent frames to 8 (as CogVideoX's does).
    assert len(counts) <= 1 and all(count > 1 for count in counts)
    return sizes


@pytest.mark.slow
def test_every_validation_video_is_written_and_logged_per_size(tiny_models, t2v_trainer, train, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    data, out = mixed_dataset(tmp_path / "data"), tmp_path / "out"
    args = script_args(
        tiny_models["5b"], data, out, *PLUGINS, *VALIDATE, "--report_to", "tensorboard", steps=3
    )
    result = ok(train(t2v_trainer, args))

    during, after = out / "validation" / "step-3", out / "validation" / "final"
    videos, final_videos = videos_in(during), videos_in(after)
    sizes = check_named_by_size(videos, "a_red_cat")
    # One video per size: landscape, portrait and square clips were trained.
    assert len(videos) == 3 and len(sizes) == 3
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes) and any(w == h for w, h in sizes)
    assert check_named_by_size(final_videos, "a_red_cat") == sizes
    for name, (width, height, frames, _) in videos.items():
        assert (
            f"cogvx-ext: validation at step 3: 1 video of 'a red cat' at {width}x{height}, 5 frames"
            in result.stderr
        )
        assert f"cogvx-ext: wrote {name} ({width}x{height}, {frames} frames)" in result.stderr.replace(
            f"{during}/", ""
        )
    assert "cogvx-ext: validation after training:" in result.stderr

    # tensorboard: one animated GIF per video, under a key per phase, size and prompt.
    # (accelerate writes the run's settings to a second event file, in a folder below)
    events = min(
        {p.parent for p in (out / "logs").rglob("events.out.tfevents.*")}, key=lambda p: len(p.parts)
    )
    accumulator = event_accumulator.EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    assert [s.step for s in accumulator.Scalars("loss")] == [1, 2, 3]
    tags = set(accumulator.Tags()["images"])
    assert tags == {f"{phase}/{w}x{h}/a_red_cat/0" for phase in ("validation", "test") for w, h in sizes}
    for tag in tags:
        (image,) = accumulator.Images(tag)
        assert image.step == 3
        assert image.encoded_image_string.startswith(b"GIF8")
        assert f"/{image.width}x{image.height}/" in tag


@pytest.mark.slow
def test_validation_videos_reach_wandb_under_one_key_per_size(tiny_models, t2v_trainer, train, tmp_path):
    pytest.importorskip("wandb")
    data, out = mixed_dataset(tmp_path / "data"), tmp_path / "out"
    args = script_args(tiny_models["5b"], data, out, *PLUGINS, *VALIDATE, "--report_to", "wandb", steps=1)
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    ok(train(t2v_trainer, args, env=env))
    sizes = check_named_by_size(videos_in(out / "validation" / "step-1"), "a_red_cat")
    # wandb keeps each logged video under media/videos/<key>_<step>_<hash>.mp4.
    media = tmp_path / "wandb"
    logged = {
        str(p.relative_to(next(media.glob("offline-run-*/files/media/videos")))).rsplit("_", 2)[0]
        for p in media.glob("offline-run-*/files/media/videos/**/*.mp4")
    }
    assert logged == {f"{phase}/{w}x{h}/a_red_cat" for phase in ("validation", "test") for w, h in sizes}


@pytest.mark.slow
def test_plugins_logged_values_reach_the_progress_bar(tiny_models, t2v_trainer, train, tmp_path):
    # The scripts' default --report_to has no tracker: the progress bar is all the user sees.
    data, out = mixed_dataset(tmp_path / "data"), tmp_path / "out"
    stages = ["--progressive_stages", "160x96:0,208x112:2"]
    plugins = ["--plugins", "aspect_bucket,rope_rescale,progressive_resize"]
    result = ok(train(t2v_trainer, script_args(tiny_models["5b"], data, out, *plugins, *stages, steps=3)))
    bars = [line for line in re.split(r"[\r\n]", result.stderr) if line.startswith("Steps:")]
    shown = [dict(re.findall(r"(\w+)=([^,\]]+)", line)) for line in bars]
    assert {"loss", "lr", "stage", "tokens_per_sample"} <= set(shown[-1])
    assert {s["stage"] for s in shown if "stage" in s} == {"0", "1"}


def test_prompt_slugs_are_file_names_and_never_shared():
    taken: dict[str, str] = {}
    assert prompt_slug("A cat, walking / on 'snow'", taken) == "A_cat_walking_on_snow"
    assert prompt_slug("A cat, walking / on 'snow'", taken) == "A_cat_walking_on_snow"
    other = prompt_slug("A cat walking on snow!", taken)  # cleans up to the same words
    assert other.startswith("A_cat_walking_on_snow_") and other != "A_cat_walking_on_snow"
    assert len(prompt_slug("x" * 300, taken)) == 48
    assert prompt_slug("!!!", taken) == "prompt"


@pytest.mark.parametrize(
    "video",
    [
        np.linspace(0, 1, 5 * 32 * 48 * 3, dtype=np.float32).reshape(5, 32, 48, 3),  # output_type="np"
        "pil",
        "pt",
    ],
)
def test_write_video_takes_what_the_pipelines_return(video, tmp_path):
    import torch
    from PIL import Image

    frames = (np.random.default_rng(0).random((5, 32, 48, 3)) * 255).astype(np.uint8)
    if isinstance(video, str) and video == "pil":
        video = [Image.fromarray(f) for f in frames]
    elif isinstance(video, str):
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    path = tmp_path / "v.mp4"
    assert write_video(path, video, fps=8, title="t") == (48, 32, 5)
    assert read_mp4(path)[:3] == (48, 32, 5)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temporary file left
