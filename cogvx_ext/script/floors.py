"""Which diffusers and transformers a script can run with, known before anything is imported.

Two pairings fail inside the script's own imports, before any cogvx-ext code runs in it, with a
traceback a user meets first:

* The script's ``check_min_version("X")`` raises ImportError when the installed diffusers is older
  (main's script asks for 0.40.0.dev0).
* diffusers up to 0.35.1 imports ``FLAX_WEIGHTS_NAME`` from transformers, which transformers after
  4.56.2 no longer has: ``from diffusers import CogVideoX...`` fails (0.35.2 imports it only from
  transformers <= 4.56.2).

:func:`from_import_error` turns those ImportErrors into one line that says what to install:
the runner catches them where it loads the script; for a script run as ``__main__`` (the start-up
hook), the hook's ``sys.excepthook`` does, since the script's imports run before its get_args.
"""

from __future__ import annotations

import ast
import os
from importlib import metadata

LAST_TRANSFORMERS_WITH_FLAX = "4.56.2"
LAST_DIFFUSERS_NEEDING_FLAX = "0.35.1"


def _installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def module_tree(script_path: str | os.PathLike) -> ast.Module | None:
    try:
        with open(script_path, encoding="utf-8") as f:
            return ast.parse(f.read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None


def script_min_diffusers(tree: ast.Module) -> str | None:
    """The argument of the script's module-level ``check_min_version(...)``, if it has one."""
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "check_min_version"
            and call.args
            and isinstance(call.args[0], ast.Constant)
            and isinstance(call.args[0].value, str)
        ):
            return call.args[0].value
    return None


def _too_old(script: str, needed: str, diffusers: str) -> str:
    release = needed.split(".dev")[0]
    return (
        f"{script} needs diffusers >= {needed} (its check_min_version) and diffusers {diffusers} is "
        f"installed: pip install -U 'diffusers>={release}', or use the {script} of diffusers "
        f"v{diffusers} (examples/cogvideo at that tag)"
    )


def _flax(diffusers: str, transformers: str) -> str:
    return (
        f"diffusers {diffusers} cannot import CogVideoX with transformers {transformers} (diffusers up to "
        f"{LAST_DIFFUSERS_NEEDING_FLAX} imports FLAX_WEIGHTS_NAME, which transformers after "
        f"{LAST_TRANSFORMERS_WITH_FLAX} does not have): pip install 'transformers<="
        f"{LAST_TRANSFORMERS_WITH_FLAX}', or pip install -U diffusers"
    )


def from_import_error(exc: BaseException, script_path: str | os.PathLike) -> str | None:
    """The line to show (without ``cogvx-ext: ``) for an ImportError raised while the training script
    imports, when it is one of the two above; None for anything else."""
    if not isinstance(exc, (ImportError, RuntimeError)):  # diffusers' lazy import wraps it in a RuntimeError
        return None
    text = str(exc)
    diffusers = _installed("diffusers") or "?"
    if "FLAX_WEIGHTS_NAME" in text:
        return _flax(diffusers, _installed("transformers") or "?")
    tree = module_tree(script_path)
    needed = script_min_diffusers(tree) if tree is not None else None
    if needed and "example requires" in text and "but the version found is" in text:
        return _too_old(os.path.basename(script_path), needed, diffusers)
    return None
