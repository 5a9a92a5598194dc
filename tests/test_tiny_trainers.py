"""The trainers the integration tests run: our tiny ones, or the diffusers scripts when
COGVX_EXT_TRAINER / COGVX_EXT_I2V_TRAINER name them. The same tests hold for both."""

from __future__ import annotations

import importlib.util
import itertools

import decord
import pytest
import torch
from diffusers import CogVideoXPipeline
from safetensors.torch import load_file

from cogvx_ext.testing import write_dataset

_loaded = itertools.count()


def load_script(path):
    """Import a training script as a module (not as __main__, so main() does not run)."""
    spec = importlib.util.spec_from_file_location(f"cogvx_test_trainer_{next(_loaded)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scripts(t2v_trainer, i2v_trainer):
    return {"t2v": load_script(t2v_trainer), "i2v": load_script(i2v_trainer)}


@pytest.fixture
def native_decord_bridge():
    # The scripts switch decord's process-wide bridge to torch; give other tests theirs back.
    yield
    decord.bridge.set_bridge("native")


def one_clip_dataset(root, width, height, num_frames, **options):
    write_dataset(root, [(width, height, num_frames)], prompts=["a square"])
    return dict(
        instance_data_root=str(root), caption_column="prompts.txt", video_column="videos.txt", **options
    )


def decoded(path, indices):
    frames = decord.VideoReader(str(path)).get_batch(indices)
    frames = torch.as_tensor(frames.asnumpy()) if hasattr(frames, "asnumpy") else frames
    return frames.permute(0, 3, 1, 2).float() / 127.5 - 1  # [F, C, H, W] in [-1, 1]


# ---------------------------------------------------------------------------------------------
# VideoDataset: what the data seams replace must behave like the real one


@pytest.mark.usefixtures("native_decord_bridge")
@pytest.mark.parametrize("kind", ["t2v", "i2v"])
@pytest.mark.parametrize(
    "num_frames,skip_start,skip_end,max_frames,expected",
    [
        (17, 2, 3, 9, range(2, 11)),  # skip, then the first max frames of the rest
        (40, 0, 0, 9, range(0, 33, 4)),  # too many: a stride of 40 // 9 = 4, then cut to 9
        (8, 0, 0, 49, range(0, 5)),  # 4k+1 frames for the VAE: 8 -> 5
        (9, 5, 5, 9, [5]),  # nothing left between the skips: the start frame alone
    ],
)
def test_dataset_selects_frames_like_the_real_script(
    scripts, tmp_path, kind, num_frames, skip_start, skip_end, max_frames, expected
):
    options = one_clip_dataset(
        tmp_path, 160, 96, num_frames, skip_frames_start=skip_start, skip_frames_end=skip_end
    )
    dataset = scripts[kind].VideoDataset(height=96, width=160, max_num_frames=max_frames, **options)
    [video] = dataset.instance_videos
    want = decoded(tmp_path / (tmp_path / "videos.txt").read_text().strip(), list(expected))
    if kind == "t2v" and len(want) == 1:
        want = want[0]  # the real T2V squeezes a lone frame's axis away (and then fails to encode it)
    assert video.dtype == torch.float32 and video.shape == want.shape
    torch.testing.assert_close(video, want, atol=2e-3, rtol=0)  # same size: no resampling


@pytest.mark.usefixtures("native_decord_bridge")
@pytest.mark.parametrize(
    "width,height,rows,cols",
    [(320, 96, slice(0, 96), slice(80, 240)), (160, 288, slice(96, 192), slice(0, 160))],
)
def test_t2v_dataset_covers_then_crops_the_centre(scripts, tmp_path, width, height, rows, cols):
    # One side already matches 96 x 160, so the cover resize is the identity and only the crop acts.
    options = one_clip_dataset(tmp_path, width, height, 5)
    [video] = scripts["t2v"].VideoDataset(height=96, width=160, max_num_frames=5, **options).instance_videos
    source = decoded(tmp_path / (tmp_path / "videos.txt").read_text().strip(), list(range(5)))
    torch.testing.assert_close(video, source[:, :, rows, cols], atol=2e-3, rtol=0)


@pytest.mark.usefixtures("native_decord_bridge")
def test_i2v_dataset_stretches_to_the_target_size(scripts, tmp_path):
    options = one_clip_dataset(tmp_path, 320, 96, 5)
    [video] = scripts["i2v"].VideoDataset(height=96, width=160, max_num_frames=5, **options).instance_videos
    assert video.shape == (5, 3, 96, 160)
    source = decoded(tmp_path / (tmp_path / "videos.txt").read_text().strip(), [0])
    squeezed = torch.nn.functional.interpolate(source, size=(96, 160), mode="area")
    cropped = source[:, :, :, 80:240]
    # The whole picture, squeezed sideways: close to any 2:1 downscale, far from a centre crop.
    assert (video[:1] - squeezed).abs().mean() < 0.05
    assert (video[:1] - cropped).abs().mean() > 4 * (video[:1] - squeezed).abs().mean()


@pytest.mark.usefixtures("native_decord_bridge")
def test_id_token_goes_where_each_script_puts_it(scripts, tmp_path):
    options = one_clip_dataset(tmp_path, 160, 96, 5, id_token="SKS ")
    t2v = scripts["t2v"].VideoDataset(height=96, width=160, max_num_frames=5, **options)
    i2v = scripts["i2v"].VideoDataset(height=96, width=160, max_num_frames=5, **options)
    # T2V prefixes in __getitem__; I2V once in __init__, because main() swaps prompts for embeddings.
    assert t2v.instance_prompts == ["a square"] and t2v[0]["instance_prompt"] == "SKS a square"
    assert i2v.instance_prompts == ["SKS a square"] and i2v[0]["instance_prompt"] == "SKS a square"
    assert t2v.num_instance_videos == i2v.num_instance_videos == len(t2v) == 1
    assert [p.name for p in t2v.instance_video_paths] == [p.name for p in i2v.instance_video_paths]


@pytest.mark.parametrize("height,width", [(480, 720), (576, 1024), (768, 1360), (720, 480)])
def test_script_rope_matches_the_1_0_pipeline(scripts, tiny_models, height, width):
    pipe = CogVideoXPipeline.from_pretrained(tiny_models["5b"])
    expected = pipe._prepare_rotary_positional_embeddings(height, width, 3, torch.device("cpu"))
    for script in scripts.values():
        actual = script.prepare_rotary_positional_embeddings(
            height=height,
            width=width,
            num_frames=3,
            vae_scale_factor_spatial=8,
            patch_size=2,
            attention_head_dim=pipe.transformer.config.attention_head_dim,
            device=torch.device("cpu"),
        )
        for got, want in zip(actual, expected):
            torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------------------------------
# Whole runs, in fresh processes


def common_args(model, data, out, height, width, frames=9, steps=2):
    return [
        "--pretrained_model_name_or_path", model,
        "--instance_data_root", data,
        "--caption_column", "prompts.txt",
        "--video_column", "videos.txt",
        "--height", height,
        "--width", width,
        "--max_num_frames", frames,
        "--train_batch_size", 1,
        "--max_train_steps", steps,
        "--rank", 8,
        "--lora_alpha", 8,
        "--output_dir", out,
        "--seed", 0,
    ]  # fmt: skip


def assert_trained_lora(out, rank=8, width=32):
    weights = load_file(out / "pytorch_lora_weights.safetensors")
    down = [v for k, v in weights.items() if k.startswith("transformer.") and "lora_A" in k]
    up = [v for k, v in weights.items() if k.startswith("transformer.") and "lora_B" in k]
    assert len(down) == len(up) == 4  # to_q, to_k, to_v, to_out.0 of the one block
    assert all(a.shape == (rank, width) for a in down)
    assert any(b.abs().max() > 0 for b in up)  # lora_B starts at zero: the optimizer stepped


def output_of(result):
    return result.stdout[-4000:] + result.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["2b", "5b"])
def test_t2v_trains_two_steps(tiny_models, t2v_trainer, train, tmp_path, kind):
    data = write_dataset(tmp_path / "data", [(160, 96, 9), (320, 160, 12), (96, 160, 17)])
    out = tmp_path / "out"
    result = train(t2v_trainer, common_args(tiny_models[kind], data, out, 96, 160))
    assert result.returncode == 0, output_of(result)
    assert_trained_lora(out)


@pytest.mark.slow
def test_i2v_trains_5b_i2v_at_its_only_size(tiny_models, i2v_trainer, train, tmp_path):
    # The learned positional table admits 480 x 720 only; decord stretches the clips to it.
    data = write_dataset(tmp_path / "data", [(240, 160, 9), (200, 200, 9)])
    out = tmp_path / "out"
    result = train(i2v_trainer, common_args(tiny_models["5b-I2V"], data, out, 480, 720))
    assert result.returncode == 0, output_of(result)
    assert_trained_lora(out)


@pytest.mark.slow
def test_t2v_trains_on_two_cpu_ranks(tiny_models, t2v_trainer, train, tmp_path):
    data = write_dataset(tmp_path / "data", [(160, 96, 9)] * 4)
    out = tmp_path / "out"
    result = train(t2v_trainer, common_args(tiny_models["5b"], data, out, 96, 160), nproc=2)
    assert result.returncode == 0, output_of(result)
    assert_trained_lora(out)


@pytest.mark.slow
def test_i2v_hard_coded_nccl_still_runs_on_two_cpu_ranks(tiny_models, i2v_trainer, train, tmp_path):
    # InitProcessGroupKwargs(backend="nccl", timeout=600 s) equals accelerate's defaults, so its
    # to_kwargs() is empty and accelerate picks gloo by itself on CPU (accelerate 1.15).
    data = write_dataset(tmp_path / "data", [(240, 160, 9)] * 2)
    out = tmp_path / "out"
    result = train(i2v_trainer, common_args(tiny_models["5b-I2V"], data, out, 480, 720), nproc=2)
    assert result.returncode == 0, output_of(result)
    assert_trained_lora(out)


@pytest.mark.slow
def test_t2v_stock_broadcast_breaks_on_two_ranks_with_mixed_frame_counts(
    tiny_models, t2v_trainer, train, tmp_path
):
    # The known bug cogvx-ext must survive: rank 1 receives clip 0 (3 latent frames) into a buffer
    # shaped like its own first clip (2 latent frames) and gloo aborts. (Had the buffer been larger,
    # the latents would have arrived silently reshaped.)
    data = write_dataset(tmp_path / "data", [(160, 96, 9), (160, 96, 5)] * 2)
    result = train(t2v_trainer, common_args(tiny_models["5b"], data, tmp_path / "out", 96, 160), nproc=2)
    assert result.returncode != 0
    assert not (tmp_path / "out" / "pytorch_lora_weights.safetensors").exists()


@pytest.mark.slow
def test_t2v_checkpoints_prunes_and_resumes(tiny_models, t2v_trainer, train, tmp_path):
    data = write_dataset(tmp_path / "data", [(160, 96, 9)] * 2)
    out = tmp_path / "out"
    args = common_args(tiny_models["5b"], data, out, 96, 160)
    first = train(t2v_trainer, [*args, "--checkpointing_steps", 1, "--checkpoints_total_limit", 1])
    assert first.returncode == 0, output_of(first)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (out / "checkpoint-2" / "pytorch_lora_weights.safetensors").is_file()  # the save hook's format

    args[args.index("--max_train_steps") + 1] = 3
    resumed = train(t2v_trainer, [*args, "--checkpointing_steps", 1, "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, output_of(resumed)
    assert "Resuming from checkpoint checkpoint-2" in resumed.stdout + resumed.stderr
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert_trained_lora(out)
