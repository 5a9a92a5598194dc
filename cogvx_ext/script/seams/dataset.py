"""The script's ``VideoDataset`` replaced by the data path of cogvx_ext.data (plan, stream, share)."""

from __future__ import annotations

import argparse
import functools

import torch

from cogvx_ext.base.errors import UsageError
from cogvx_ext.plugin.hookspecs import hookimpl

_STANDIN_SHAPE = (2, 3, 1, 1)  # [F, C, H, W]: no real video is 1x1 pixels


class ScriptDataset(torch.utils.data.Dataset):
    """Takes the place of the script's VideoDataset, with the attributes and items it has.

    T2V items: ``{"instance_prompt": id_token + prompt, "instance_video": posterior}``.
    I2V items: the prompt is prefixed at construction, because the I2V script replaces
    ``instance_prompts`` by prompt embeddings after construction and returns them as they are.
    """

    def __init__(self, run, **kwargs):
        from cogvx_ext.data.clips import Skipped
        from cogvx_ext.data.encoding import encode_samples, vae_device
        from cogvx_ext.data.planning import plan_samples, report_skipped
        from cogvx_ext.data.ranks import RankSync, check_ranks_agree
        from cogvx_ext.script.data_formats import read_script_data

        self.run = run
        self.kind = run.kind
        self.id_token = kwargs.get("id_token") or ""
        accelerator = run.accelerator
        rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
        progress = accelerator is None or accelerator.is_local_main_process
        data_flags = (
            "instance_data_root",
            "dataset_name",
            "dataset_config_name",
            "caption_column",
            "video_column",
            "cache_dir",
        )
        # A rank that fails from here to the batch sampler says so on its way out (seams.main); the
        # others stop at their next meeting point or within a moment in the long loops.
        sync = run.rank_sync = RankSync()
        entries, skipped = read_script_data(
            argparse.Namespace(
                **{k: kwargs.get(k) for k in data_flags},
                allow_unpaired_captions=getattr(run.args, "allow_unpaired_captions", False),
            )
        )
        samples, more_skipped = plan_samples(run.hook, entries, run.context, progress=progress, sync=sync)
        sync.meet("the comparison of the ranks' plans")
        check_ranks_agree(
            samples, kwargs.get("instance_data_root"), vae_device(run.vae) if run.vae is not None else "cpu"
        )
        skipped += more_skipped
        if progress:
            report_skipped(skipped)
        _check_planned_memory(run, samples)  # before anything is decoded
        if skipped:  # the same list on every rank: the ranks agree on the plan
            run.hook.cogvx_clips_skipped(skipped=skipped, when="plan", args=run.args, run=run.context)
        if not samples:
            raise UsageError("no clip can be used for training (every one was skipped, reasons above)")
        posteriors, failed = encode_samples(
            run.hook, samples, run.vae, run.kind, run.context, rank, world, progress, sync=sync
        )
        report_skipped(failed)  # each rank names the clips it failed to decode
        kept = [i for i, p in enumerate(posteriors) if p is not None]
        if len(kept) < len(samples):  # every rank knows which samples failed, not always why
            reasons = {item.path: item.reason for item in failed}
            lost = [
                Skipped(s.clip.path, reasons.get(s.clip.path, "failed to decode on another rank"))
                for s, p in zip(samples, posteriors)
                if p is None
            ]
            run.hook.cogvx_clips_skipped(skipped=lost, when="decode", args=run.args, run=run.context)
        if not kept:
            raise UsageError("no clip could be decoded (reasons above)")
        self.samples = [samples[i] for i in kept]
        self._posteriors = [posteriors[i] for i in kept]
        self.skipped = skipped + failed
        prefix = self.id_token if self.kind == "i2v" else ""
        self.instance_prompts = [prefix + s.clip.prompt for s in self.samples]
        self.instance_video_paths = [s.clip.path for s in self.samples]
        self.num_instance_videos = len(self.samples)
        # One stand-in per sample, and at least one per process: the v0.37+ T2V script splits its
        # encoding loop across processes and takes a shape from each process's first result
        # (`next(...)` raises StopIteration on a process that encoded none).
        standins = max(len(self.samples), world)
        self.instance_videos = [torch.zeros(_STANDIN_SHAPE) for _ in range(standins)]
        run.dataset = self
        _answer_stand_ins(run)
        sync.meet("the end of the data preparation")  # the script's own collectives may follow

    def __setattr__(self, name, value):
        # The script assigns what its encoding loop made of the stand-ins; keep the real posteriors.
        if (
            name == "instance_videos"
            and getattr(self, "_posteriors", None) is not None
            and "instance_videos" in self.__dict__
        ):
            if len(value) != len(self.instance_videos):
                raise RuntimeError(
                    f"the script encoded {len(value)} items for {len(self.instance_videos)} stand-ins"
                )
            value, self._posteriors = self._posteriors, None
            _stop_answering_stand_ins(self.run)
        super().__setattr__(name, value)

    def __len__(self):
        return self.num_instance_videos

    def __getitem__(self, index):
        if self.kind == "i2v":
            return {
                "instance_prompt": self.instance_prompts[index],
                "instance_video": self.instance_videos[index],
            }
        return {
            "instance_prompt": self.id_token + self.instance_prompts[index],
            "instance_video": self.instance_videos[index],
        }


def _check_planned_memory(run, samples) -> None:
    """``cogvx_memory_check`` with the planned samples, the loaded transformer's config and the
    accelerator's precision."""
    from cogvx_ext.plugin.memory_check import check_planned

    transformer = getattr(run, "transformer", None)
    check_planned(
        run.pm,
        run.context,
        samples,
        transformer_config=dict(transformer.config) if transformer is not None else None,
        mixed_precision=getattr(run.accelerator, "mixed_precision", None),
    )


def _answer_stand_ins(run) -> None:
    vae = run.vae
    if vae is None or "encode" in vae.__dict__:
        return
    real_encode = vae.encode

    @functools.wraps(real_encode)
    def encode(x, *args, **kwargs):
        if tuple(x.shape[-2:]) == _STANDIN_SHAPE[-2:]:
            return _StandInOutput(x.device)
        return real_encode(x, *args, **kwargs)

    vae.encode = encode


def _stop_answering_stand_ins(run) -> None:
    if run.vae is not None:
        run.vae.__dict__.pop("encode", None)


class _StandInOutput:
    """Looks like ``AutoencoderKLOutput``; its posterior has one fixed shape on every rank."""

    def __init__(self, device):
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        self.latent_dist = DiagonalGaussianDistribution(torch.zeros(1, 2, 1, 1, 1, device=device))


class ScriptEncoding:
    """The scripts' own ``encode_video`` recipe, as the trylast ``cogvx_encode_sample``."""

    def __init__(self, run):
        self.run = run

    @hookimpl(trylast=True)
    def cogvx_encode_sample(self, sample, vae, kind, args, run):
        from cogvx_ext.data.decode_ahead import load_pixels

        # Decoded while the sample before was encoding, when the encoding loop decodes ahead.
        pixels = load_pixels(self.run.hook, sample, args, run)
        video = pixels.to(vae.device, dtype=vae.dtype).unsqueeze(0).permute(0, 2, 1, 3, 4)  # [B, C, F, H, W]
        latent_dist = vae.encode(video).latent_dist
        if kind != "i2v":
            return latent_dist
        # The I2V script conditions on the first frame with a little noise, sigma = exp(N(-3, 0.5)),
        # drawn once per clip when it encodes.
        image = video[:, :, :1]
        sigma = torch.exp(torch.normal(mean=-3.0, std=0.5, size=(1,), device=image.device)).to(image.dtype)
        noisy_image = image + torch.randn_like(image) * sigma[:, None, None, None, None]
        return latent_dist, vae.encode(noisy_image).latent_dist
