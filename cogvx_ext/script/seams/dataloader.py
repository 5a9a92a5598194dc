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
        loader = real_dataloader(dataset, *args, **kwargs)
    else:
        for name in ("batch_size", "shuffle", "sampler", "drop_last"):
            kwargs.pop(name, None)
        _deepspeed_micro_batch(accelerator, batch_size)
        _no_padding_batches(accelerator)
        loader = real_dataloader(dataset, batch_sampler=sampler, **kwargs)
    if run.rank_sync is not None:  # accelerator.prepare's collectives come next
        run.rank_sync.meet("the batch sampler")
    return loader


def _no_padding_batches(accelerator) -> None:
    """The plugins' batch samplers have no ``batch_size`` (their batches differ in size) and a
    length that is a multiple of the process count, so accelerate never pads. accelerate before
    1.14 refuses such a sampler on several processes unless ``even_batches`` is off ("You need to
    use `even_batches=False` when the batch sampler has no batch size"); with that length, off
    changes nothing."""
    if accelerator is not None and accelerator.num_processes > 1:
        accelerator.even_batches = False


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
