"""Keeps each sample's VAE posterior in `OUTPUT_DIR/latents/`, so a resumed run decodes and encodes
nothing (text-to-video only). Hits are answered first (`tryfirst`: nothing below decodes);
misses are stored by a wrapper, which sees every answer (pluggy wants a wrapper to `yield`)."""

import hashlib
import os

from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from safetensors.torch import load_file, save_file

from cogvx_ext.api import hookimpl


class LatentFolder:
    def path(self, sample, args):
        key = hashlib.sha256(repr((sample.clip.path, sample.target)).encode()).hexdigest()[:16]
        return os.path.join(args.output_dir, "latents", f"{key}.safetensors")

    @hookimpl(tryfirst=True)
    def cogvx_encode_sample(self, sample, vae, kind, args):
        path = self.path(sample, args)
        if kind == "t2v" and os.path.exists(path):
            parameters = load_file(path)["parameters"].to(vae.device, vae.dtype)
            return DiagonalGaussianDistribution(parameters)

    @hookimpl(wrapper=True, specname="cogvx_encode_sample")
    def store(self, sample, kind, args):
        posterior = yield
        path = self.path(sample, args)
        if kind == "t2v" and not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_file({"parameters": posterior.parameters.detach().cpu().contiguous()}, path)
        return posterior
