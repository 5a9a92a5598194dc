"""Resuming: the checkpoint ``--resume_from_checkpoint`` names, found as the scripts find it, and
the plugins and settings it was trained with, compared with this run's before any model loads.

The scripts look for the checkpoint in ``--output_dir`` by its folder name (``latest``: the
``checkpoint-N`` with the highest N) and start a new run when there is none; so does this check.
"""

from __future__ import annotations

import argparse
import json
import os
import re

from cogvx_ext.base.errors import UsageError, report_warning
from cogvx_ext.data.context import RunContext
from cogvx_ext.plugin.state import settings_differences, training_settings
from cogvx_ext.script.seams.checkpoints import SETTINGS_KEY, STATE_FILE

ALLOW_CHANGES_FLAG = "--allow_changed_plugins_on_resume"


def add_resume_arguments(parser: argparse.ArgumentParser) -> None:
    """cogvx-ext's resume flag, on a script parser that resumes."""
    actions = parser._option_string_actions
    if "--resume_from_checkpoint" not in actions or ALLOW_CHANGES_FLAG in actions:
        return
    parser.add_argument(
        ALLOW_CHANGES_FLAG,
        action="store_true",
        help="cogvx-ext: resume even when the checkpoint was trained with other plugins or plugin settings "
        "that change the data or the model (default: stop, naming the differences)",
    )


def checkpoint_to_resume(args: argparse.Namespace) -> str | None:
    """The checkpoint folder the script will load, or ``None`` when it will start a new run."""
    value, output_dir = getattr(args, "resume_from_checkpoint", None), getattr(args, "output_dir", None)
    if not value or not output_dir:
        return None
    if value == "latest":
        try:
            names = os.listdir(output_dir)
        except OSError:
            return None
        numbered = [(int(m.group(1)), n) for n in names if (m := re.fullmatch(r"checkpoint-(\d+)", n))]
        if not numbered:
            return None
        name = max(numbered)[1]
    else:
        name = os.path.basename(os.path.normpath(value))
    path = os.path.join(output_dir, name)
    return path if os.path.isdir(path) else None


def check_resume(pm, plugin_names: list[str], run: RunContext) -> None:
    """Stop (or, with the flag, warn) when the checkpoint to resume was trained with other plugins
    or plugin settings that change the data or the model."""
    args = run.args
    path = checkpoint_to_resume(args)
    if path is None:
        return
    saved = _saved_settings(path)
    differences = settings_differences(saved or [], training_settings(pm, plugin_names, run))
    if not differences:
        return
    unrecorded = "" if saved is not None else " (it records none: saved without cogvx-ext plugins)"
    line = f"{path} was trained with other plugins or plugin settings{unrecorded}: {'; '.join(differences)}"
    if getattr(args, "allow_changed_plugins_on_resume", False):
        report_warning(f"{ALLOW_CHANGES_FLAG}: resuming anyway; {line}")
        return
    raise UsageError(
        f"--resume_from_checkpoint: {line}. Resume with the checkpoint's --plugins and flags, or add "
        f"{ALLOW_CHANGES_FLAG} to continue anyway"
    )


def _saved_settings(checkpoint: str) -> list | None:
    path = os.path.join(checkpoint, STATE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get(SETTINGS_KEY)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume_from_checkpoint: {path} cannot be read ({exc})") from None
