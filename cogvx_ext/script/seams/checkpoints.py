"""Checkpoints: plugin state and the plugins' training settings saved beside accelerate's, state
loaded on resume, files given the modes the umask asks for, and the scripts' ``shutil`` across ranks."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sys

STATE_FILE = "cogvx_ext_state.json"
SETTINGS_KEY = "plugin_settings"  # in STATE_FILE: cogvx_ext.plugin.state.training_settings, for resume


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
    from cogvx_ext.plugin.state import collect_states, training_settings

    match = re.search(r"checkpoint-(\d+)$", os.path.normpath(output_dir))
    states = collect_states(run.pm, int(match.group(1)) if match else None, run.context)
    settings = training_settings(run.pm, run.plugin_names, run.context)  # compared on resume
    if run.accelerator is None or run.accelerator.is_local_main_process:
        write_json_atomic(os.path.join(output_dir, STATE_FILE), {"plugins": states, SETTINGS_KEY: settings})


def _load_plugin_state(run, models, input_dir):
    from cogvx_ext.plugin.state import restore_states

    path = os.path.join(input_dir, STATE_FILE)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        restore_states(run.pm, json.load(f).get("plugins", {}), run.context)


def _save_state_with_umask_modes(real_save_state):
    """``accelerator.save_state`` whose files get the modes the umask asks for.

    accelerate saves model weights with safetensors, which writes every file 0600 (through a
    private temporary file), and the scripts' hook saves the LoRA the same way: under umask 022 a
    teammate could not read the checkpoint.
    """

    @functools.wraps(real_save_state)
    def save_state(output_dir=None, *args, **kwargs):
        from cogvx_ext.base.io import files_under, give_umask_modes

        before = files_under(output_dir) if output_dir is not None else {}
        location = real_save_state(output_dir, *args, **kwargs)
        folder = location if isinstance(location, (str, os.PathLike)) else output_dir
        if folder is not None:
            give_umask_modes(folder, before)
        return location

    return save_state
