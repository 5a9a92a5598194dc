"""Decodes validation videos tile by tile (less memory)."""

from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_pipeline_loaded(pipe):
    pipe.vae.enable_tiling()
    print(f"{type(pipe).__name__}: VAE tiling on")
