"""RoPE positions squeezed into the model's pre-trained range for grids larger than its base, and
integer positions inside it (`cogvx_ext.model.rope`'s `interpolate` mode), instead of the
pipeline's."""

from cogvx_ext.api import hookimpl, rotary_embedding


@hookimpl
def cogvx_rotary_embedding(model, latent_shape, device):
    return rotary_embedding(model, latent_shape, device, mode="interpolate")
