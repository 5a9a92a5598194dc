"""The exceptions plugins raise on purpose, and how a user's mistake is reported."""

from __future__ import annotations

import argparse
import os
import sys
import traceback


class UsageError(Exception):
    """A user's mistake (bad flag, unknown plugin, missing seam).

    The run stops with ``cogvx-ext: <message>`` on one line and exit status 2, no traceback.
    """


class PluginImportError(UsageError):
    """A plugin the user named failed to import (syntax error, missing dependency, exception at
    import). One line like any usage error; ``COGVX_EXT_TRACE=1`` also prints the cause's
    traceback."""


class SkipClip(Exception):
    """Raised by ``cogvx_clip_targets`` to leave one clip out; the message is the reason.

    Skipped clips are listed by path and reason in the training log and in ``cogvx-ext plan``.
    """


def tracing() -> bool:
    return os.environ.get("COGVX_EXT_TRACE", "") not in ("", "0")


def report_usage_error(exc: UsageError) -> None:
    """Write ``cogvx-ext: <message>`` on one line; with ``COGVX_EXT_TRACE`` set, the traceback of
    what caused it first (a plugin author needs it, a user does not). Under a launcher the line
    goes to the launcher, which prints it once for all ranks (cogvx_ext.base.launchers)."""
    from cogvx_ext.base.launchers import hand_to_launcher

    if tracing() and exc.__cause__ is not None:
        traceback.print_exception(exc.__cause__, file=sys.stderr)
    line = f"cogvx-ext: {exc}"
    if hand_to_launcher(line):  # accelerate launch or torchrun prints it, once, last
        return
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def report_warning(message: str) -> None:
    """Write ``cogvx-ext: warning: <message>`` on one line, once per launch: on the first process
    (``RANK`` 0 or unset), as every rank reaches the same verdict."""
    if os.environ.get("RANK", "0") != "0":
        return
    sys.stderr.write(f"cogvx-ext: warning: {message}\n")
    sys.stderr.flush()


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose mistakes are usage errors: the line first, no usage block
    (``--help`` still prints it)."""

    def error(self, message: str):
        raise UsageError(f"{message} ({self.prog} --help lists the flags)")
