"""The script's ``DataLoader``: the plugins' batch sampler, and DeepSpeed's micro batch."""

from __future__ import annotations

from cogvx_ext.data.sampling import sampler_report
from cogvx_ext.script.seams.compile_watch import _watch_compilations
from cogvx_ext.script.seams.dataset import ScriptDataset
from cogvx_ext.script.seams.memory_log import _log_memory_estimate


def _make_dataloader(run, real_dataloader, dataset, *args, **kwargs):
    if not isinstance(dataset, ScriptDataset):
        return real_dataloader(dataset, *args, **kwargs)
    batch_size = kwargs.get("batch_size", args[0] if args else 1)
    accelerator = run.accelerator
    sampler = run.hook.cogvx_batch_sampler(
        samples=dataset.samples,
        batch_size=batch_size,
        num_replicas=accelerator.num_processes if accelerator else 1,
        args=run.args,
        model=run.model,
        stages=run.context.stages,
        run=run.context,
    )
    described = sampler_report(sampler, dataset.samples, run.model, batch_size)
    _log_memory_estimate(run, described)
    _watch_compilations(run, described, dataset.samples)
    if sampler is None:
        return real_dataloader(dataset, *args, **kwargs)
    for name in ("batch_size", "shuffle", "sampler", "drop_last"):
        kwargs.pop(name, None)
    _deepspeed_micro_batch(accelerator, batch_size)
    return real_dataloader(dataset, batch_sampler=sampler, **kwargs)


def _deepspeed_micro_batch(accelerator, batch_size) -> None:
    """Under DeepSpeed, give the micro batch size that the batch sampler hides.

    A DataLoader built on a batch sampler has ``batch_size`` None, and accelerate's DeepSpeed set-up
    reads an ``auto`` ``train_micro_batch_size_per_gpu`` from it, so ``accelerator.prepare`` stops.
    Each batch holds at most the script's ``--train_batch_size`` samples (a bucket's batches never
    hold more): that is the micro batch, as without buckets.
    """
    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
    if plugin is None or not plugin.is_auto("train_micro_batch_size_per_gpu"):
        return
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = int(batch_size or 1)
