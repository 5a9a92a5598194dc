from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_vae_loaded(vae):
    print(f"VAE scaling factor {vae.config.scaling_factor}")
