"""The end of training: ``cogvx_train_end`` on every process, after the final LoRA is saved.

The scripts end with ``accelerator.wait_for_everyone()``, the final save and validation on the main
process alone, then ``accelerator.end_training()`` on every process. The hook fires from
``end_training`` (trackers and the process group still up). The other processes reach it while the
main process may still be saving, so each process passes one barrier first: the main process
right after the final save (before its final validation, which may take long), the others in
``end_training``; a main process that made no final save through the pipeline class passes it in
``end_training`` too. The barrier is there only when a chosen plugin implements the hook.
"""

from __future__ import annotations

import functools
import os
import re

from cogvx_ext.plugin.lora_record import LORA_WEIGHT_NAME


def _wrap_end_training(run, accelerator) -> None:
    real_end_training = accelerator.end_training

    @functools.wraps(real_end_training)
    def end_training(*args, **kwargs):
        _wait_for_final_save(run)
        output_dir = os.fspath(getattr(run.args, "output_dir", None) or ".")
        run.hook.cogvx_train_end(
            output_dir=output_dir,
            lora=os.path.join(output_dir, LORA_WEIGHT_NAME),
            checkpoint=last_checkpoint(output_dir, run.logged_step),
            step=run.logged_step,
            args=run.args,
            run=run.context,
        )
        return real_end_training(*args, **kwargs)

    accelerator.end_training = end_training


def _after_lora_saved(run, directory: str) -> None:
    """The pipeline class saved a LoRA; the one in ``--output_dir`` is the final one."""
    if "cogvx_train_end" not in run.chosen:
        return
    output_dir = getattr(run.args, "output_dir", None)
    if output_dir is not None and os.path.normpath(os.fspath(directory)) == os.path.normpath(output_dir):
        _wait_for_final_save(run)


def _wait_for_final_save(run) -> None:
    """Each process passes here once: the main process once it has saved, the others at the end."""
    accelerator = run.accelerator
    if run.passed_final_save_barrier or accelerator is None or accelerator.num_processes < 2:
        return
    run.passed_final_save_barrier = True
    accelerator.wait_for_everyone()


def last_checkpoint(output_dir: str, step: int | None) -> str | None:
    """The newest ``checkpoint-<step>`` folder in ``output_dir`` at or before ``step`` (what
    ``--resume_from_checkpoint latest`` would take), or None."""
    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        match = re.fullmatch(r"checkpoint-(\d+)", name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            if step is None or int(match.group(1)) <= step:
                found.append((int(match.group(1)), name))
    return os.path.join(output_dir, max(found)[1]) if found else None
