"""Checkpoints: plugin state saved and loaded beside accelerate's, and the scripts' ``shutil`` across ranks."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

STATE_FILE = "cogvx_ext_state.json"


class _ShutilAcrossRanks:
    """The scripts' ``shutil``, whose ``rmtree`` lets another rank remove the files first.

    Under DeepSpeed every rank runs the scripts' checkpoint block, ``--checkpoints_total_limit``
    pruning included, so two ranks remove the same old checkpoint at once and the slower one stops
    with ``FileNotFoundError`` (seen with two ranks on the first pruning). A file already gone is
    what the call asked for.
    """

    def __getattr__(self, name):
        return getattr(shutil, name)

    @staticmethod
    def rmtree(path, *args, **kwargs):
        if args or kwargs:
            return shutil.rmtree(path, *args, **kwargs)

        def gone_is_fine(function, name, exc):
            exc = exc[1] if isinstance(exc, tuple) else exc  # onerror passes exc_info, onexc the error
            if not isinstance(exc, FileNotFoundError):
                raise exc

        if sys.version_info >= (3, 12):
            return shutil.rmtree(path, onexc=gone_is_fine)
        return shutil.rmtree(path, onerror=gone_is_fine)


def _save_plugin_state(run, models, weights, output_dir):
    """On every process that saves (the main one; under DeepSpeed all): the plugins are asked
    there, and the first process of each machine writes the file (its state, not whichever
    process wrote last)."""
    from cogvx_ext.base.io import write_json_atomic
    from cogvx_ext.plugin.state import collect_states

    match = re.search(r"checkpoint-(\d+)$", os.path.normpath(output_dir))
    states = collect_states(run.pm, int(match.group(1)) if match else None, run.context)
    writes = run.accelerator is None or run.accelerator.is_local_main_process
    if states and writes:
        write_json_atomic(os.path.join(output_dir, STATE_FILE), {"plugins": states})


def _load_plugin_state(run, models, input_dir):
    from cogvx_ext.plugin.state import restore_states

    path = os.path.join(input_dir, STATE_FILE)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        restore_states(run.pm, json.load(f).get("plugins", {}), run.context)
