"""rope_rescale through pluggy and the forward hooks, and cogvx_ext.inference.prepare_pipeline."""

from __future__ import annotations

import argparse
import json

import pluggy
import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

from cogvx_ext.base.errors import UsageError
from cogvx_ext.data.context import RunContext
from cogvx_ext.model import rope
from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.plugin import hookspecs
from cogvx_ext.plugin.forward import install_forward_hooks, remove_forward_hooks
from cogvx_ext.testing import build_tiny_model, tiny_transformer_config
from cogvx_ext_plugins.posemb_adapt import PosembAdapt
from cogvx_ext_plugins.rope_rescale import RopeRescale

CPU = torch.device("cpu")
TEXT_LEN = 16


def make_pm(*argv: str) -> tuple[pluggy.PluginManager, argparse.Namespace]:
    """A manager with the two built-ins, configured from ``argv`` as a run would be."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(RopeRescale(), name="rope_rescale")
    pm.register(PosembAdapt(), name="posemb_adapt")
    pm.check_pending()
    parser = argparse.ArgumentParser()
    pm.hook.cogvx_add_arguments(parser=parser)
    args = parser.parse_args(list(argv))
    pm.hook.cogvx_configure(args=args)
    return pm, args


def tiny_transformer(kind: str) -> CogVideoXTransformer3DModel:
    torch.manual_seed(0)
    config = tiny_transformer_config(kind)
    config["max_text_seq_length"] = TEXT_LEN
    return CogVideoXTransformer3DModel(**config).eval()


def forward_inputs(transformer, frames: int, height: int = 8, width: int = 12, batch: int = 1) -> dict:
    torch.manual_seed(1)
    channels = transformer.config.in_channels
    return dict(
        hidden_states=torch.randn(batch, frames, channels, height, width),
        encoder_hidden_states=torch.randn(batch, TEXT_LEN, 32),
        timestep=torch.tensor([500] * batch),
        return_dict=False,
    )


# ---- the hooks, called through pluggy --------------------------------------------------------


@pytest.mark.parametrize("kind", ["5b", "1.5-5B"])
@pytest.mark.parametrize("mode", rope.MODES)
def test_rope_hook_returns_the_mode(kind, mode):
    pm, _ = make_pm("--rope_mode", mode)
    model = ModelInfo.from_config(tiny_transformer_config(kind))
    got = pm.hook.cogvx_rotary_embedding(model=model, latent_shape=(14, 72, 128), device=CPU)
    assert got is rope.rotary_embedding(model, (14, 72, 128), CPU, mode=mode)


def test_rope_hook_in_pipeline_mode_equals_the_pipeline():
    from diffusers import CogVideoXPipeline

    pm, _ = make_pm()
    transformer = tiny_transformer("5b")
    pipe = CogVideoXPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=transformer, scheduler=None
    )
    model = ModelInfo.from_config(transformer.config)
    for shape in [(13, 90, 60), (13, 60, 90), (7, 72, 128)]:
        got = pm.hook.cogvx_rotary_embedding(model=model, latent_shape=shape, device=CPU)
        expected = pipe._prepare_rotary_positional_embeddings(shape[1] * 8, shape[2] * 8, shape[0], CPU)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_settings_hooks():
    pm, args = make_pm("--rope_mode", "ntk", "--validation_resolutions", "1024x576, 576x1024")
    assert sorted(pm.hook.cogvx_provides(args=args)) == [["batch_rope", "frame_padding"], ["learned_posemb"]]
    metadata = {}
    for part in pm.hook.cogvx_lora_metadata(args=args):
        metadata.update(part)
    assert metadata == {"rope_mode": "ntk", "posemb_mode": "interpolate"}
    variants = [{"prompt": "a cat"}]
    pm.hook.cogvx_validation_args(variants=variants, args=args, samples=None)
    assert variants == [
        {"prompt": "a cat", "width": 1024, "height": 576},
        {"prompt": "a cat", "width": 576, "height": 1024},
    ]
    # Without the flag: one size trained, nothing changes; several, the largest of each orientation.
    pm, args = make_pm()
    variants = [{"prompt": "a cat", "width": 160, "height": 96}]
    pm.hook.cogvx_validation_args(variants=variants, args=args, samples=None)
    assert variants == [{"prompt": "a cat", "width": 160, "height": 96}]
    trained = [trained_sample(w, h) for w, h in [(160, 96), (176, 96), (96, 160), (128, 128), (112, 112)]]
    pm.hook.cogvx_validation_args(variants=variants, args=args, samples=trained)
    assert [(v["width"], v["height"]) for v in variants] == [(176, 96), (96, 160), (128, 128)]


def trained_sample(width, height):
    from cogvx_ext.data.clips import Clip, Sample, Target, VideoInfo

    clip = Clip(0, "clip.mp4", "a clip", VideoInfo(width, height, 9, 8.0))
    return Sample(clip, Target(height, width, tuple(range(9)), (0, 0, height, width)))


@pytest.mark.parametrize("value", ["1024", "1024x", "1000x576", "axb"])
def test_bad_validation_resolutions(value):
    with pytest.raises(UsageError, match="validation_resolutions"):
        make_pm("--validation_resolutions", value)


# ---- forward hooks on real tiny transformers -------------------------------------------------


def test_1_5_odd_latent_frames_are_padded_and_cut():
    transformer = tiny_transformer("1.5-5B")
    inputs = forward_inputs(transformer, frames=13)
    with pytest.raises(RuntimeError):  # the stock forward cannot patchify an odd frame count
        transformer(**inputs)
    pm, _ = make_pm()
    model = ModelInfo.from_config(transformer.config)
    assert install_forward_hooks(transformer, pm.hook, model, RunContext("inference", model=model))
    with torch.no_grad():
        out = transformer(**inputs)[0]
        assert out.shape == inputs["hidden_states"].shape

        # The same as the pipeline's way: one leading frame, its positions, the frame dropped.
        padded = torch.cat([inputs["hidden_states"][:, :1], inputs["hidden_states"]], dim=1)
        rotary = rope.rotary_embedding(model, (14, 8, 12), CPU)
        remove_forward_hooks(transformer)  # call the bare forward
        reference = transformer(**{**inputs, "hidden_states": padded, "image_rotary_emb": rotary})[0][:, 1:]
    assert torch.equal(out, reference)


def test_even_frames_and_1_0_models_pass_unchanged():
    for kind, frames in [("1.5-5B", 14), ("5b", 13)]:
        transformer = tiny_transformer(kind)
        inputs = forward_inputs(transformer, frames=frames)
        model = ModelInfo.from_config(transformer.config)
        rotary = rope.rotary_embedding(model, (frames, 8, 12), CPU)
        with torch.no_grad():
            stock = transformer(**inputs, image_rotary_emb=rotary)[0]
            pm, _ = make_pm()
            install_forward_hooks(transformer, pm.hook, model, RunContext("inference", model=model))
            assert torch.equal(transformer(**inputs)[0], stock)


def test_1_5_i2v_gets_ofs_and_the_pipeline_image_scale():
    transformer = tiny_transformer("1.5-5B-I2V")
    inputs = forward_inputs(transformer, frames=3, batch=2)
    with pytest.raises(AttributeError):  # the stock I2V script passes no ofs
        with torch.no_grad():
            transformer(**inputs)
    pm, args = make_pm()
    model = ModelInfo.from_config(transformer.config)
    install_forward_hooks(transformer, pm.hook, model, RunContext("inference", model=model))
    with torch.no_grad():  # as in a pipeline: no rescaling
        inference = transformer(**inputs)[0]
    assert inference.shape == (2, 3, 4, 8, 12)
    with pytest.raises(RuntimeError, match="VAE"):
        transformer(**inputs)  # a training forward must know the VAE's scale

    vae = AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        scaling_factor=0.7,
        invert_scale_latents=True,
    )
    pm.hook.cogvx_vae_loaded(vae=vae, args=args)
    # The script's image latents are z * 0.7, the pipeline's z / 0.7: a training forward on the
    # script's value must equal a pipeline forward on the pipeline's value.
    script_inputs = dict(inputs)
    hidden = inputs["hidden_states"].clone()
    hidden[:, :, 4:] *= 0.7**2
    script_inputs["hidden_states"] = hidden
    training = transformer(**script_inputs)[0]
    assert training.requires_grad
    torch.testing.assert_close(training.detach(), inference)


def test_forward_and_output_hooks_called_directly():
    pm, _ = make_pm()
    transformer = tiny_transformer("1.5-5B-I2V")
    model = ModelInfo.from_config(transformer.config)
    hidden_states = torch.randn(2, 3, 8, 4, 4)
    inputs = {"hidden_states": hidden_states, "ofs": None}
    with torch.no_grad():
        pm.hook.cogvx_transformer_forward(
            transformer=transformer, inputs=inputs, latent_shape=(3, 4, 4), model=model
        )
    assert inputs["hidden_states"].shape == (2, 4, 8, 4, 4)
    assert torch.equal(inputs["ofs"], torch.full((2,), 2.0))
    output = (torch.randn(2, 4, 4, 4, 4),)
    cut = pm.hook.cogvx_transformer_output(transformer=transformer, inputs=inputs, output=output, model=model)
    assert torch.equal(cut[0], output[0][:, 1:])
    # Only the forward this plugin padded is cut, and only once.
    assert (
        pm.hook.cogvx_transformer_output(transformer=transformer, inputs=inputs, output=output, model=model)
        is None
    )


def test_i2v_padding_follows_the_pipeline_layout():
    model = ModelInfo.from_config(tiny_transformer_config("1.5-5B-I2V"))
    video = torch.randn(1, 3, 4, 2, 2)
    image = torch.cat([torch.randn(1, 1, 4, 2, 2), torch.zeros(1, 2, 4, 2, 2)], dim=1)  # the script's
    padded = RopeRescale._pad_frames(torch.cat([video, image], dim=2), 1, model)
    assert torch.equal(padded[:, 0, :4], video[:, 0]) and torch.equal(padded[:, 1:, :4], video)
    # The pipeline's image latents over 4 frames: [image, zeros, zeros, zeros].
    assert torch.equal(padded[:, 0, 4:], image[:, 0]) and not padded[:, 1:, 4:].any()


def test_2b_takes_bucket_shapes_without_rope():
    """2b regenerates its sin-cos table per shape; the rope hook is not even installed for it."""
    transformer = tiny_transformer("2b")
    pm, _ = make_pm()
    model = ModelInfo.from_config(transformer.config)
    install_forward_hooks(transformer, pm.hook, model, RunContext("inference", model=model))
    seen = capture_rotary(transformer)
    for height, width in [(8, 12), (12, 8), (10, 16)]:
        out = transformer(**forward_inputs(transformer, frames=3, height=height, width=width))[0]
        assert out.shape == (1, 3, 4, height, width)
        out.mean().backward()
    assert seen == [None, None, None]


def test_5b_i2v_trains_at_bucket_shapes_with_both_plugins():
    transformer = tiny_transformer("5b-I2V")
    pm, args = make_pm()
    pm.hook.cogvx_transformer_loaded(transformer=transformer, args=args)
    model = ModelInfo.from_config(transformer.config)
    install_forward_hooks(transformer, pm.hook, model, RunContext("inference", model=model))
    seen = capture_rotary(transformer)
    for frames, height, width in [(5, 18, 32), (5, 32, 18), (4, 8, 12)]:
        out = transformer(**forward_inputs(transformer, frames=frames, height=height, width=width))[0]
        assert out.shape == (1, frames, 4, height, width)
        out.mean().backward()
        assert seen[-1] is rope.rotary_embedding(model, (frames, height, width), CPU)


# ---- inference: a saved LoRA and a stock pipeline --------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {kind: build_tiny_model(root, kind) for kind in ("5b", "5b-I2V", "1.5-5B", "1.5-5B-I2V")}


def save_lora(pipe_class, model_path, out_dir, settings: dict) -> None:
    """What a training run leaves: LoRA weights and cogvx_ext.json."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = pipe_class.from_pretrained(model_path)
    torch.manual_seed(0)
    config = LoraConfig(
        r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v"]
    )
    pipe.transformer.add_adapter(config)
    pipe_class.save_lora_weights(out_dir, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer))
    record = {"cogvx_ext_version": "0", "plugins": ["aspect_bucket", "rope_rescale", "posemb_adapt"]}
    record["settings"] = settings
    (out_dir / "cogvx_ext.json").write_text(json.dumps(record))


def capture_rotary(transformer) -> list:
    seen = []

    def grab(module, args, kwargs):
        seen.append(kwargs.get("image_rotary_emb"))

    transformer.register_forward_pre_hook(grab, with_kwargs=True)  # after cogvx's: sees its result
    return seen


def generate(pipe, num_frames=5, height=144, width=256, **kwargs):
    return pipe(
        prompt="a cat",
        height=height,
        width=width,
        num_frames=num_frames,
        num_inference_steps=2,
        guidance_scale=1.0,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).frames


def test_prepare_pipeline_t2v_at_16_9(models, tmp_path):
    from diffusers import CogVideoXPipeline

    from cogvx_ext.inference import prepare_pipeline

    save_lora(CogVideoXPipeline, models["5b"], tmp_path, {"rope_mode": "ntk", "posemb_mode": "interpolate"})
    pipe = prepare_pipeline(CogVideoXPipeline.from_pretrained(models["5b"]), tmp_path)
    assert "cogvx" in pipe.get_active_adapters()
    seen = capture_rotary(pipe.transformer)
    latents = generate(pipe)
    assert latents.shape == (1, 2, 4, 18, 32)
    model = ModelInfo.from_config(pipe.transformer.config)
    expected = rope.rotary_embedding(model, (2, 18, 32), CPU, mode="ntk")
    assert seen and all(rotary is expected for rotary in seen)


def test_prepare_pipeline_i2v_at_16_9(models, tmp_path):
    from diffusers import CogVideoXImageToVideoPipeline
    from PIL import Image

    from cogvx_ext.inference import prepare_pipeline

    image = Image.new("RGB", (256, 144), (200, 80, 40))
    stock = CogVideoXImageToVideoPipeline.from_pretrained(models["5b-I2V"])
    with pytest.raises(ValueError, match="different resolution"):
        generate(stock, image=image)

    save_lora(CogVideoXImageToVideoPipeline, models["5b-I2V"], tmp_path, {"posemb_mode": "interpolate"})
    pipe = prepare_pipeline(stock, tmp_path, lora_scale=0.5)
    latents = generate(pipe, image=image)
    assert latents.shape == (1, 2, 4, 18, 32) and torch.isfinite(latents).all()
    assert pipe.transformer._cogvx_ext_posemb_adapter.mode == "interpolate"


def test_prepare_pipeline_without_a_record_only_loads_the_lora(models, tmp_path):
    from diffusers import CogVideoXPipeline

    from cogvx_ext.inference import prepare_pipeline

    save_lora(CogVideoXPipeline, models["5b"], tmp_path, {})
    (tmp_path / "cogvx_ext.json").unlink()
    pipe = prepare_pipeline(CogVideoXPipeline.from_pretrained(models["5b"]), tmp_path)
    assert "cogvx" in pipe.get_active_adapters()
    assert not hasattr(pipe.transformer, "_cogvx_ext_forward_hooks")


@pytest.mark.parametrize("kind", ["5b", "1.5-5B", "1.5-5B-I2V"])
def test_prepare_pipeline_in_pipeline_mode_changes_nothing(models, tmp_path, kind):
    """rope_mode pipeline: the prepared pipeline's result is bit-identical to the stock one's.

    9 frames are 3 latent frames: the 1.5 pipelines pad them to 4 themselves.
    """
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXPipeline
    from PIL import Image

    from cogvx_ext.inference import prepare_pipeline

    pipe_class = CogVideoXImageToVideoPipeline if "I2V" in kind else CogVideoXPipeline
    extra = {"image": Image.new("RGB", (256, 144), (20, 120, 200))} if "I2V" in kind else {}
    save_lora(pipe_class, models[kind], tmp_path, {"rope_mode": "pipeline"})
    stock = pipe_class.from_pretrained(models[kind])
    stock.load_lora_weights(tmp_path, adapter_name="cogvx")
    expected = generate(stock, num_frames=9, **extra)
    pipe = prepare_pipeline(pipe_class.from_pretrained(models[kind]), tmp_path)
    seen = capture_rotary(pipe.transformer)
    assert torch.equal(generate(pipe, num_frames=9, **extra), expected)
    model = ModelInfo.from_config(pipe.transformer.config)
    latent_frames = 4 if model.patch_size_t else 3  # 1.5: padded to an even count by the pipeline
    assert seen and seen[0][0].shape[0] == model.tokens((latent_frames, 18, 32))


def test_prepare_pipeline_takes_1_5_beyond_2400_px(models, tmp_path):
    """The 1.5 pipeline's own RoPE has no positions past 150 patches; extrapolate does."""
    from diffusers import CogVideoXPipeline

    from cogvx_ext.inference import prepare_pipeline

    size = dict(height=2432, width=32)  # 152 x 2 patches: past the table, still tiny
    stock = CogVideoXPipeline.from_pretrained(models["1.5-5B"])
    with pytest.raises(RuntimeError):
        generate(stock, **size)
    save_lora(CogVideoXPipeline, models["1.5-5B"], tmp_path, {"rope_mode": "extrapolate"})
    pipe = prepare_pipeline(stock, tmp_path)
    latents = generate(pipe, **size)
    assert latents.shape == (1, 2, 4, 304, 4) and torch.isfinite(latents).all()
