"""The script's ``Accelerator``: ``cogvx_accelerator_ready``, ``cogvx_step_end`` at each ``accelerator.log``
(its values on the progress bar too), the last logged step, checkpoints (plugin state and settings,
file modes), ``cogvx_train_end`` at ``end_training``, and DeepSpeed's state hooks."""

from __future__ import annotations

import functools

from cogvx_ext.script.seams.checkpoints import (
    _load_plugin_state,
    _save_plugin_state,
    _save_state_with_umask_modes,
)
from cogvx_ext.script.seams.train_end import _wrap_end_training
from cogvx_ext.script.zero3 import (
    gathered,
    snapshot_lora,
    trainable,
    zero3_plugin,
)


def _accelerator_factory(run, real_accelerator):
    @functools.wraps(real_accelerator)
    def make_accelerator(*args, **kwargs):
        accelerator = real_accelerator(*args, **kwargs)
        run.accelerator = accelerator
        run.context.num_processes, run.context.process_index = (
            accelerator.num_processes,
            accelerator.process_index,
        )
        # Every checkpoint records the plugins and their training settings (compared on resume).
        accelerator.register_save_state_pre_hook(functools.partial(_save_plugin_state, run))
        if run.chosen & {"cogvx_state_dict", "cogvx_load_state_dict"}:
            accelerator.register_load_state_pre_hook(functools.partial(_load_plugin_state, run))
        accelerator.save_state = _save_state_with_umask_modes(accelerator.save_state)
        _hand_state_hooks_unwrapped_models(accelerator)  # the script's hooks, registered after ours
        _note_prepared_lr_schedulers(run, accelerator)
        if zero3_plugin(accelerator) is not None:
            _on_every_logged_step(accelerator, functools.partial(_snapshot_lora_after_last_step, run))
        if "cogvx_step_end" in run.chosen:
            _on_every_logged_step(accelerator, functools.partial(_step_end, run, accelerator))
        _on_every_logged_step(accelerator, functools.partial(_remember_step, run))
        if "cogvx_train_end" in run.chosen:
            _wrap_end_training(run, accelerator)
        run.hook.cogvx_accelerator_ready(accelerator=accelerator, args=run.args, run=run.context)
        return accelerator

    return make_accelerator


def _note_prepared_lr_schedulers(run, accelerator) -> None:
    """Hand plugins the script's learning-rate schedulers as prepared (``run.lr_schedulers``).

    Plugins that shape the rate (progressive_resize's re-warm-up) would otherwise reach for
    accelerate's private ``accelerator._schedulers``.
    """
    real_prepare = accelerator.prepare

    @functools.wraps(real_prepare)
    def prepare(*args, **kwargs):
        import torch  # the script has imported it long before

        prepared = real_prepare(*args, **kwargs)
        for thing in prepared if isinstance(prepared, tuple) else (prepared,):
            if isinstance(getattr(thing, "scheduler", thing), torch.optim.lr_scheduler.LRScheduler):
                run.context.lr_schedulers.append(thing)
        return prepared

    accelerator.prepare = prepare


def _hand_state_hooks_unwrapped_models(accelerator) -> None:
    """Under DeepSpeed, hand the script's save/load hooks the models they expect.

    accelerate passes DeepSpeed's engine (not the transformer) and, on save, an empty weights list;
    the scripts' hooks check ``isinstance(model, <transformer class>)`` and ``weights.pop()``, so every
    checkpoint of a DeepSpeed run stops with "unexpected save model: DeepSpeedEngine". The save hooks
    get the unwrapped models and a weights list of their length (the engine saves its own state
    besides). On load the engine has restored every weight from its checkpoint and accelerate
    hands the hooks no model, where the scripts' hooks would load the LoRA into None: they are
    skipped.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    real_save, real_load = accelerator.register_save_state_pre_hook, accelerator.register_load_state_pre_hook

    def register_save(hook):
        @functools.wraps(hook)
        def save(models, weights, output_dir):
            unwrapped = [accelerator.unwrap_model(m) for m in models]
            with gathered(accelerator, trainable(unwrapped)):  # ZeRO-3; every rank saves
                return hook(unwrapped, list(weights) or [None] * len(unwrapped), output_dir)

        return real_save(save)

    def register_load(hook):
        @functools.wraps(hook)
        def load(models, input_dir):
            if not models:
                return None
            return hook([accelerator.unwrap_model(m) for m in models], input_dir)

        return real_load(load)

    accelerator.register_save_state_pre_hook = register_save
    accelerator.register_load_state_pre_hook = register_load


def _on_every_logged_step(accelerator, on_step) -> None:
    """Run ``on_step(values, step)`` at each ``accelerator.log`` call, before it. The scripts log every
    step on every rank (accelerate's log acts on the main process only), so per-rank plugin state
    (the sampler's position) stays the same everywhere and collectives have every rank."""
    real_log = accelerator.log

    def log(values, step=None, log_kwargs=None):
        on_step(values, step)
        return real_log(values, step=step, log_kwargs=log_kwargs or {})

    accelerator.log = log


def _remember_step(run, values, step) -> None:
    run.logged_step = step


def _step_end(run, accelerator, values, step) -> None:
    """``cogvx_step_end`` adds to the dict the script is about to log; the script showed that dict
    on its progress bar just before, so the bar is shown again with what the plugins added (with
    the scripts' default ``--report_to`` the trackers are none and the bar is all there is)."""
    before = dict(values)
    run.hook.cogvx_step_end(step=step, logs=values, accelerator=accelerator, run=run.context)
    if values != before and run.progress_bar is not None:
        run.progress_bar.set_postfix(**values)


def _snapshot_lora_after_last_step(run, values, step) -> None:
    """ZeRO-3: the final LoRA is saved on the main process alone, so the whole copy it needs is
    taken at the last step's log, where every rank is (cogvx_ext.script.zero3)."""
    last = getattr(run.args, "max_train_steps", None)
    if run.zero3_lora is None and step is not None and last and step >= last and run.transformer is not None:
        run.zero3_lora = snapshot_lora(run.accelerator, run.transformer)


def _steps_bar_class(run, real_tqdm):
    """The script's ``tqdm``, remembering its training progress bar (``desc="Steps"`` in both
    scripts) for ``_step_end``; a subclass, so the script's every other use is unchanged."""

    class Tqdm(real_tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if kwargs.get("desc") == "Steps":
                run.progress_bar = self

    Tqdm.__name__ = Tqdm.__qualname__ = real_tqdm.__name__
    return Tqdm
