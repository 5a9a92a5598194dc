"""Encoding that streams: one clip decoded, straight to its target size, encoded and dropped before
the next, so peak memory does not grow with the number of clips (the next clip is decoded while
this one encodes: cogvx_ext.data.decode_ahead). Each rank encodes its share and
the posteriors are then exchanged with their real shapes (the stock T2V script's exchange assumes
one shape for all clips). Posteriors are kept on the CPU as one tensor each (mean and
log-variance): the stock script keeps every ``DiagonalGaussianDistribution`` (four tensors) on the
accelerator. Nothing here knows the training scripts."""

from __future__ import annotations

from typing import Any

import torch

from cogvx_ext.base.errors import SkipClip
from cogvx_ext.data.clips import Sample, Skipped
from cogvx_ext.data.context import RunContext
from cogvx_ext.data.decode_ahead import DecodeAhead
from cogvx_ext.data.ranks import RankSync


class LatentPosterior:
    """A VAE posterior kept as one tensor ``[1, 2C, F, H, W]`` (mean, log-variance).

    Offers what the scripts' collate functions call (``sample()``) and what diffusers'
    ``DiagonalGaussianDistribution`` offers besides (``mode()``, ``mean``, ``logvar``,
    ``parameters``), at a quarter of its memory: std and var are computed when sampling.
    """

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters

    @classmethod
    def from_distribution(cls, dist: Any, device: str | torch.device = "cpu") -> LatentPosterior:
        return cls(dist.parameters.detach().to(device))

    @property
    def mean(self) -> torch.Tensor:
        return self.parameters.chunk(2, dim=1)[0]

    @property
    def logvar(self) -> torch.Tensor:
        # The same clamp as diffusers' DiagonalGaussianDistribution.
        return torch.clamp(self.parameters.chunk(2, dim=1)[1], -30.0, 20.0)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        mean = self.mean
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * self.logvar) * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.parameters.shape)


def encode_samples(
    hook: Any,
    samples: list[Sample],
    vae: Any,
    kind: str,
    run: RunContext,
    rank: int,
    world: int,
    progress: bool,
    sync: RankSync | None = None,
) -> tuple[list[Any], list[Skipped]]:
    """Encode this rank's share of the samples (one at a time), then share all of them.

    Returns one entry per sample: a LatentPosterior, a tuple of them (I2V: video, image), or None
    for a sample whose clip failed to decode (a file can pass the header probe and still be cut
    short). Every rank gets the same Nones; the failures list (with reasons) is this rank's own.
    With ``sync`` the ranks meet before sharing, and stop as soon as one has failed (a rank that
    fails here says so on its way out: cogvx_ext.data.ranks).
    """
    from tqdm.auto import tqdm

    results: list[Any] = [None] * len(samples)
    failed: list[Skipped] = []
    mine = range(rank, len(samples), world)
    with torch.no_grad(), DecodeAhead(hook, [samples[i] for i in mine], run.args, run):
        for i in tqdm(mine, desc="cogvx-ext: decoding and encoding clips", disable=not progress):
            if sync is not None:
                sync.poll()
            try:
                encoded = hook.cogvx_encode_sample(
                    sample=samples[i], vae=vae, kind=kind, args=run.args, run=run
                )
            except SkipClip as exc:
                failed.append(Skipped(samples[i].clip.path, str(exc)))
                continue
            if encoded is None:
                raise RuntimeError(f"no plugin encoded {samples[i].clip.path}")
            results[i] = _to_cpu_posteriors(encoded)
    if world > 1:
        if sync is not None:
            sync.meet("the exchange of latents")
        _share(results, world, device=vae_device(vae), dtype=vae.dtype)
    return results, failed


def _to_cpu_posteriors(encoded: Any) -> Any:
    if isinstance(encoded, tuple):
        return tuple(_to_cpu_posteriors(part) for part in encoded)
    if isinstance(encoded, LatentPosterior):
        return LatentPosterior(encoded.parameters.detach().cpu())
    return LatentPosterior.from_distribution(encoded)


def vae_device(vae: Any) -> torch.device:
    return next(vae.parameters()).device


def _share(results: list[Any], world: int, device: torch.device, dtype: torch.dtype) -> None:
    """Broadcast every sample's posteriors from the rank that encoded it, shapes first."""
    import torch.distributed as dist

    # gloo works on CPU tensors, nccl only on CUDA ones: send through the VAE's device.
    for i in range(len(results)):
        owner = i % world
        mine = results[i] is not None  # on the owner, None means the clip failed: count 0 tells everyone
        parts = results[i] if isinstance(results[i], tuple) else (results[i],) if mine else None
        count = torch.tensor([len(parts) if mine else 0], dtype=torch.int64, device=device)
        dist.broadcast(count, src=owner)
        received = []
        for p in range(int(count.item())):
            shape = torch.zeros(8, dtype=torch.int64, device=device)
            if mine:
                dims = parts[p].parameters.shape
                shape[0] = len(dims)
                shape[1 : 1 + len(dims)] = torch.tensor(dims, dtype=torch.int64)
            dist.broadcast(shape, src=owner)
            dims = tuple(int(d) for d in shape[1 : 1 + int(shape[0])])
            if mine:
                data = parts[p].parameters.to(device=device, dtype=dtype).contiguous()
            else:
                data = torch.empty(dims, dtype=dtype, device=device)
            dist.broadcast(data, src=owner)
            received.append(LatentPosterior(data.cpu()) if not mine else parts[p])
        if not mine and received:
            results[i] = tuple(received) if len(received) > 1 else received[0]
