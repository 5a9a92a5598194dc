"""A plugin that makes batches of several shapes needs, on a RoPE model, a plugin that provides
`batch_rope`; without one the run stops at start with `cogvx-ext: 5b model: add rope_rescale to
--plugins`."""

from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_requires(model):
    return [("batch_rope", "add rope_rescale to --plugins")] if model.rotary else []
