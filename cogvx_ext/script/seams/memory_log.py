"""The estimated peak memory of the run's largest batch, logged before the first step."""

from __future__ import annotations


def _log_memory_estimate(run, described) -> None:
    """One line at training start: the estimated peak accelerator memory of the run's largest batch
    (cogvx_ext.model.memory), so an out-of-memory an hour in can be told apart at step 0. The
    batches are the sampler's report (``cogvx_ext.data.sampling.SamplerReport``). An estimate that
    cannot be made is said, never a reason to stop."""
    import logging

    log = logging.getLogger("cogvx_ext.memory")
    if run.accelerator is not None and not run.accelerator.is_local_main_process:
        return  # the same estimate on every rank: traced and said once per machine
    try:
        from cogvx_ext.model.memory.estimate import estimate
        from cogvx_ext.model.memory.units import format_bytes
        from cogvx_ext.plugin.memory_check import setup_for_plugins

        pairs = {(row.latent, row.batch_size) for row in described.rows}
        if not pairs:
            return
        key, size = max(pairs, key=lambda pair: (run.model.tokens(pair[0]) * pair[1], pair))
        accelerator = run.accelerator
        setup = setup_for_plugins(
            run.pm,
            run.args,
            transformer_config=dict(run.transformer.config) if run.transformer is not None else None,
            mixed_precision=getattr(accelerator, "mixed_precision", None),
        )
        found = estimate(setup, key, size)
        log.info(
            "cogvx-ext: estimated peak accelerator memory per step: %s (largest batch: latent %s (WIDTHxHEIGHTxFRAMES) "
            "x %d; %s; allocated, before the allocator's reserve and the CUDA context)",
            format_bytes(found.peak),
            key,
            size,
            setup.describe(),
        )
    except Exception as exc:  # an estimate is advice: training goes on without it
        log.warning("cogvx-ext: no memory estimate for this run: %s", exc)
