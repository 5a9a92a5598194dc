"""A RoPE plugin whose option is off: it answers ``None``, as hooks.md says such a plugin should.

It declares ``batch_rope`` because the core's default then gives every forward the pipeline's
embedding at the batch's shape.
"""

from cogvx_ext import hookimpl


class RopeOff:
    @hookimpl
    def cogvx_provides(self):
        return ["batch_rope"]

    @hookimpl
    def cogvx_rotary_embedding(self, latent_shape):
        return None
