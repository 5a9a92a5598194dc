"""SD3's resolution rule instead of snr_shift's: the model's shift times the square root of the
sample's tokens over those of the model's native size (720x480x49 for CogVideoX 1.0). Prints the
shift once per latent shape it is asked about."""

from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_snr_shift(model, latent_shape, shift, run):
    width, height, frames = model.native_size
    native = model.tokens(model.latent_shape(frames, height, width))
    answer = shift * (model.tokens(latent_shape) / native) ** 0.5
    printed = run.stash.setdefault("cogvx_snr_shift example", set())
    if latent_shape not in printed:
        printed.add(latent_shape)
        print(f"SNR shift {answer:.4f} at {latent_shape}")
    return answer
