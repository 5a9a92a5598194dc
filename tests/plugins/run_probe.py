"""A test plugin that takes ``run`` in every hook that has it and notes each call, one JSON line each.

``--run_probe_out DIR`` gets ``probe-rank<N>.jsonl``: for every hook call the hook's name, the
``RunContext``'s id, command and process index. ``cogvx_stages`` (which has no ``run``) is noted
too, so a test can count how often the core asks it. ``cogvx_train_end`` also notes its
arguments and what the final save left on disk. ``--run_probe_slow_metadata`` makes the main
process's ``cogvx_lora_metadata`` (part of every save, the final one included) take 2 s, so a
process that ends without waiting for the final save would find it unfinished.
"""

from __future__ import annotations

import inspect
import json
import os
import time

from cogvx_ext.api import RunContext, hookimpl
from cogvx_ext.plugin import hookspecs


class RunProbe:
    def __init__(self):
        self.path = None
        self.pending: list[dict] = []

    def note(self, hook: str, run=None, **fields) -> None:
        line = {"hook": hook, **fields}
        if run is not None:
            line.update(
                run=id(run),
                is_context=isinstance(run, RunContext),
                command=run.command,
                rank=run.process_index,
            )
        self.pending.append(line)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                for item in self.pending:
                    f.write(json.dumps(item, default=str) + "\n")
            self.pending = []

    @hookimpl
    def cogvx_add_arguments(self, parser):
        parser.add_argument("--run_probe_out", default=None)
        parser.add_argument("--run_probe_slow_metadata", action="store_true")
        parser.add_argument("--run_probe_fast_validation", action="store_true")

    @hookimpl
    def cogvx_configure(self, args, run):
        if args.run_probe_out:
            os.makedirs(args.run_probe_out, exist_ok=True)
            self.path = os.path.join(args.run_probe_out, f"probe-rank{run.process_index}.jsonl")
        self.note("cogvx_configure", run)

    @hookimpl
    def cogvx_stages(self, args):
        self.note("cogvx_stages")

    @hookimpl
    def cogvx_batch_sampler(self, run, stages):
        # The core hands the schedule it keeps: the same object every time it is asked for it.
        self.note("cogvx_batch_sampler", run, stages_as_kept=stages is run.stages)

    @hookimpl
    def cogvx_validation_args(self, variants, args, run):
        self.note("cogvx_validation_args", run)
        if args.run_probe_fast_validation:  # the pipeline's defaults take minutes on a CPU
            for variant in variants:
                variant.update(num_frames=5, num_inference_steps=2)

    @hookimpl
    def cogvx_lora_metadata(self, args, run):
        self.note("cogvx_lora_metadata", run)
        if args.run_probe_slow_metadata and run.is_main_process:
            time.sleep(2)
        return {}

    @hookimpl
    def cogvx_state_dict(self, run):
        self.note("cogvx_state_dict", run)
        return {"probed": True}

    @hookimpl
    def cogvx_train_end(self, output_dir, lora, checkpoint, step, args, run):
        self.note(
            "cogvx_train_end",
            run,
            output_dir=output_dir,
            lora=lora,
            lora_saved=os.path.isfile(lora),
            record_saved=os.path.isfile(os.path.join(output_dir, "cogvx_ext.json")),
            checkpoint=checkpoint,
            step=step,
            same_args=args is run.args,
        )


def _noting(name):
    def implementation(self, run):
        self.note(name, run)

    implementation.__name__ = f"_note_{name}"
    return hookimpl(specname=name)(implementation)


# Every other hook that takes `run`: note the call and answer nothing.
for _name, _spec in inspect.getmembers(hookspecs, inspect.isfunction):
    if (
        _name.startswith("cogvx_")
        and "run" in inspect.signature(_spec).parameters
        and not hasattr(RunProbe, _name)
    ):
        setattr(RunProbe, f"_note_{_name}", _noting(_name))
