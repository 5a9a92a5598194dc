"""The 5b-I2V learned positional table at other sizes: cogvx_ext.model.rope.adapt_learned_posemb and posemb_adapt."""

from __future__ import annotations

import argparse

import pluggy
import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from cogvx_ext.model import rope
from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.plugin import hookspecs
from cogvx_ext.testing import tiny_transformer_config
from cogvx_ext_plugins import posemb_adapt

TEXT_LEN = tiny_transformer_config("5b-I2V")["max_text_seq_length"]
BASE = (13, 60, 90)  # latent frames, height, width of 49 frames at 480x720


def tiny_i2v(seed: int = 0) -> CogVideoXTransformer3DModel:
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(**tiny_transformer_config("5b-I2V")).eval()
    # A trained table is not the sin-cos it started from: make it random, text rows included.
    transformer.patch_embed.pos_embedding.normal_()
    return transformer


@pytest.fixture
def transformer():
    return tiny_i2v()


def video_rows(table: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    return table[0, TEXT_LEN:].reshape(*grid, table.shape[-1])


def test_default_grid_returns_the_table(transformer):
    table = transformer.patch_embed.pos_embedding
    model = ModelInfo.from_config(transformer.config)
    assert rope.adapt_learned_posemb(table, model, BASE, TEXT_LEN) is table


def test_other_grids_keep_text_rows_and_layout(transformer):
    table = transformer.patch_embed.pos_embedding
    model = ModelInfo.from_config(transformer.config)
    base_rows = video_rows(table, (13, 30, 45))
    for shape in [(13, 72, 128), (13, 128, 72), (7, 60, 90), (2, 8, 14), (17, 60, 90), (17, 36, 64)]:
        adapted = rope.adapt_learned_posemb(table, model, shape, TEXT_LEN)
        grid = rope.token_grid(model, shape)
        assert adapted.shape == (1, TEXT_LEN + grid[0] * grid[1] * grid[2], table.shape[-1])
        assert adapted.dtype == table.dtype
        assert torch.equal(adapted[:, :TEXT_LEN], table[:, :TEXT_LEN])
        rows = video_rows(adapted, grid)
        if grid[1:] == (30, 45):
            if grid[0] <= 13:  # a shorter clip takes the leading frames' rows as they are
                assert torch.equal(rows, base_rows[: grid[0]])
            else:  # a longer one is interpolated in time; the first and last frames keep their rows
                assert torch.allclose(rows[0], base_rows[0], atol=1e-6)
                assert torch.allclose(rows[-1], base_rows[-1], atol=1e-6)


def test_wrong_table_size_raises(transformer):
    model = ModelInfo.from_config(transformer.config)
    with pytest.raises(ValueError, match="rows"):
        rope.adapt_learned_posemb(transformer.patch_embed.pos_embedding, model, BASE, TEXT_LEN + 1)


def run_patch_embed(transformer, shape, seed=1):
    torch.manual_seed(seed)
    text = torch.randn(1, TEXT_LEN, 32)
    video = torch.randn(1, shape[0], 8, shape[1], shape[2])
    with torch.no_grad():
        return transformer.patch_embed(text, video)


def test_stock_raises_and_adapter_runs_the_whole_forward(transformer):
    shape = (2, 18, 32)  # 144x256 px, 16:9
    hidden_states = torch.randn(1, *shape[:1], 8, *shape[1:])
    kwargs = dict(hidden_states=hidden_states, encoder_hidden_states=torch.randn(1, TEXT_LEN, 32))
    kwargs["timestep"] = torch.tensor([10])
    with pytest.raises(ValueError, match="different resolution"):
        transformer(**kwargs)
    posemb_adapt.install(transformer, "interpolate")
    with torch.no_grad():
        out = transformer(**kwargs, return_dict=False)[0]
    assert out.shape == (1, 2, 4, 18, 32)
    assert torch.isfinite(out).all()


def test_adapter_at_the_default_grid_equals_the_stock_forward(transformer):
    stock = run_patch_embed(transformer, BASE)
    posemb_adapt.install(transformer, "interpolate")
    assert torch.equal(run_patch_embed(transformer, BASE), stock)


def test_adapter_adds_the_adapted_table_and_caches_it(transformer):
    table = transformer.patch_embed.pos_embedding.clone()
    model = ModelInfo.from_config(transformer.config)
    shape = (3, 18, 32)
    adapter = posemb_adapt.install(transformer, "interpolate")
    with_table = run_patch_embed(transformer, shape)
    adapter.remove()
    posemb_adapt.install(transformer, "drop")
    without = run_patch_embed(transformer, shape)
    expected = rope.adapt_learned_posemb(table, model, shape, TEXT_LEN)
    assert torch.allclose(with_table - without, expected.float(), atol=1e-5)
    adapter = posemb_adapt.install(transformer, "interpolate")
    assert adapter.table_for(shape) is adapter.table_for(shape)
    assert posemb_adapt.install(transformer, "interpolate") is adapter  # idempotent


def test_drop_leaves_the_table_out_and_uninstall_restores_stock(transformer):
    stock = run_patch_embed(transformer, BASE)
    posemb_adapt.install(transformer, "drop")
    dropped = run_patch_embed(transformer, BASE)
    assert torch.allclose(
        stock - dropped, transformer.patch_embed.pos_embedding.float().expand_as(stock), atol=1e-5
    )
    assert run_patch_embed(transformer, (2, 18, 32)).shape[1] == TEXT_LEN + 2 * 9 * 16
    posemb_adapt.uninstall(transformer)
    assert torch.equal(run_patch_embed(transformer, BASE), stock)
    with pytest.raises(ValueError, match="different resolution"):
        run_patch_embed(transformer, (2, 18, 32))


def test_models_without_a_table_are_left_alone():
    transformer = CogVideoXTransformer3DModel(**tiny_transformer_config("5b"))
    assert posemb_adapt.install(transformer, "interpolate") is None
    assert transformer.patch_embed.use_positional_embeddings is False  # rotary: never had one


def plugin_manager() -> tuple[pluggy.PluginManager, argparse.Namespace]:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(posemb_adapt.PosembAdapt(), name="posemb_adapt")
    pm.check_pending()
    parser = argparse.ArgumentParser()
    pm.hook.cogvx_add_arguments(parser=parser)
    return pm, parser


def test_plugin_hooks(transformer):
    pm, parser = plugin_manager()
    args = parser.parse_args(["--posemb_mode", "drop"])
    pm.hook.cogvx_configure(args=args)
    assert pm.hook.cogvx_provides(args=args) == [["learned_posemb"]]
    pm.hook.cogvx_transformer_loaded(transformer=transformer, args=args)
    assert transformer._cogvx_ext_posemb_adapter.mode == "drop"
    assert pm.hook.cogvx_lora_metadata(args=args) == [{"posemb_mode": "drop"}]
    assert parser.parse_args([]).posemb_mode == "interpolate"


def test_pipeline_loaded_adapts_the_pipeline_transformer(transformer):
    from diffusers import CogVideoXImageToVideoPipeline

    pm, parser = plugin_manager()
    pipe = CogVideoXImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=transformer, scheduler=None
    )
    # At inference no cogvx_configure fires: the recorded settings come with the pipeline hook.
    pm.hook.cogvx_pipeline_loaded(pipe=pipe, args=parser.parse_args(["--posemb_mode", "interpolate"]))
    assert transformer._cogvx_ext_posemb_adapter.mode == "interpolate"
    assert run_patch_embed(transformer, (2, 18, 32)).shape[1] == TEXT_LEN + 2 * 9 * 16
