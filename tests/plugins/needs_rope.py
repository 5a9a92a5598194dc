"""Declares that it needs the batch_rope capability on RoPE models."""

from cogvx_ext import hookimpl


@hookimpl
def cogvx_requires(model):
    return [("batch_rope", "add rope_rescale to --plugins")] if model.rotary else []
