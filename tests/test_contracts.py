"""The contracts the core keeps with any plugin (issue 12): what a hook's answer means, checked
on real parts (tiny transformers, real files), whoever the plugin is."""

from __future__ import annotations

import os

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from cogvx_ext import hookimpl, rope
from cogvx_ext.forward import install_forward_hooks
from cogvx_ext.manager import make_plugin_manager
from cogvx_ext.model import ModelInfo
from cogvx_ext.testing import tiny_transformer_config

TEXT_LEN = 16


class RopeOff:
    @hookimpl
    def cogvx_rotary_embedding(self, latent_shape):
        return None


@pytest.mark.parametrize("kind", ["5b", "1.5-5B"])
def test_none_from_every_rope_plugin_means_the_default_rope_of_the_batch(kind):
    torch.manual_seed(0)
    config = tiny_transformer_config(kind)
    config["max_text_seq_length"] = TEXT_LEN
    transformer = CogVideoXTransformer3DModel(**config).eval()
    model = ModelInfo.from_config(transformer.config)
    pm = make_plugin_manager()
    pm.register(RopeOff(), name="rope_off")
    assert install_forward_hooks(transformer, pm.hook, model)
    seen = []
    transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("image_rotary_emb")), with_kwargs=True
    )
    for height, width in [(8, 12), (12, 8)]:
        hidden = torch.randn(1, 2, config["in_channels"], height, width)
        with torch.no_grad():
            transformer(hidden_states=hidden, encoder_hidden_states=torch.randn(1, TEXT_LEN, 32),
                        timestep=torch.tensor([500]), image_rotary_emb=None, return_dict=False)  # fmt: skip
        expected = rope.rotary_embedding(model, (2, height, width), "cpu", mode="pipeline")
        assert seen[-1] is not None and all(torch.equal(a, b) for a, b in zip(seen[-1], expected))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    from cogvx_ext.io import write_json_atomic

    previous = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "a" / "state.json", {"x": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "a" / "state.json").stat().st_mode & 0o777 == mode
