"""The seams' shapes: what the loaded script must look like beyond having the names.

The seams wrap functions by their parameters (``log_validation``'s ``pipe`` and ``pipeline_args``;
``compute_prompt_embeddings``' signature is declared again) and rely on what ``main`` does with
the names they replace (it assigns the encoded clips to ``train_dataset.instance_videos`` and
hands the dataset to ``DataLoader`` with its ``collate_fn``). A script that changed one of these
would fail far into the run (a ``collate_fn`` that meets a stand-in tensor: ``'Tensor' object
has no attribute 'sample'``), or train silently wrong. So at start, before any model loads, each
seam the run needs is checked against the loaded script's signatures and the syntax tree of its
``main`` (``inspect.getsource`` + ``ast``). Every release from v0.31.0 to main passes
(benchmarks/compat.py).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from cogvx_ext.script.floors import module_tree, script_min_diffusers
from cogvx_ext.script.seams.kinds import DATA_HOOKS

KNOWN_SCRIPTS = "the diffusers scripts of v0.31.0 to main"
PROMPT_PARAMETERS = ("tokenizer", "text_encoder", "prompt", "max_sequence_length", "device", "dtype")


@dataclass(frozen=True)
class Seam:
    name: str  # as the message names it
    hooks: tuple[str, ...] | None  # the chosen hooks that need it; None: every run with plugins
    present: str  # the script global that must exist for the seam to be checked
    mismatch: Callable[[dict, ast.FunctionDef | None], str | None]  # None when it fits


def _parameters(function) -> list[str]:
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return []


def _log_validation(namespace, main_tree):
    parameters = _parameters(namespace["log_validation"])
    missing = [p for p in ("pipe", "pipeline_args") if p not in parameters]
    if missing:
        return f"log_validation({', '.join(parameters)}) has no parameter {' or '.join(missing)}"
    return None


def _compute_prompt_embeddings(namespace, main_tree):
    parameters = _parameters(namespace["compute_prompt_embeddings"])
    if tuple(parameters[: len(PROMPT_PARAMETERS)]) != PROMPT_PARAMETERS or "requires_grad" not in parameters:
        return (
            f"compute_prompt_embeddings({', '.join(parameters)}) is not "
            f"compute_prompt_embeddings({', '.join(PROMPT_PARAMETERS)}, requires_grad)"
        )
    return None


def _rotary_embeddings(namespace, main_tree):
    parameters = _parameters(namespace["prepare_rotary_positional_embeddings"])
    missing = [p for p in ("height", "width", "num_frames") if p not in parameters]
    if missing:
        return f"prepare_rotary_positional_embeddings has no parameter {', '.join(missing)}"
    if main_tree is not None and not _calls(main_tree, "prepare_rotary_positional_embeddings"):
        return "main() never calls prepare_rotary_positional_embeddings (the training step's RoPE)"
    return None


def _data_path(namespace, main_tree):
    if main_tree is None:
        return None
    made = [
        (node.targets[0].id, node.value)
        for node in ast.walk(main_tree)
        if isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and _is_call_of(node.value, "VideoDataset")
    ]
    if not made:
        return "main() never assigns VideoDataset(...) to a name"
    dataset, call = made[0]
    if call.args or not any(k.arg in ("instance_data_root", "dataset_name") for k in call.keywords):
        return "main() does not call VideoDataset with keyword arguments (instance_data_root=..., ...)"
    assigned = any(
        isinstance(node, ast.Assign)
        and any(
            isinstance(t, ast.Attribute)
            and t.attr == "instance_videos"
            and isinstance(t.value, ast.Name)
            and t.value.id == dataset
            for t in node.targets
        )
        for node in ast.walk(main_tree)
    )
    if not assigned:
        return f"main() never assigns {dataset}.instance_videos (the encoded clips)"
    loaders = [node for node in ast.walk(main_tree) if _is_call_of(node, "DataLoader")]
    handed = [
        node
        for node in loaders
        if node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == dataset
    ]
    if not handed:
        return f"main() never calls DataLoader({dataset}, ...)"
    if not any(k.arg == "collate_fn" for node in handed for k in node.keywords):
        return f"main() calls DataLoader({dataset}, ...) without collate_fn="
    return None


def _accelerator_log(namespace, main_tree):
    if main_tree is None:
        return None
    for node in ast.walk(main_tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "log"
            and any(k.arg == "step" for k in node.keywords)
        ):
            return None
    return "main() never calls accelerator.log(..., step=...) (once per training step)"


SEAMS = (
    Seam("log_validation(pipe, ..., pipeline_args)", None, "log_validation", _log_validation),
    Seam(
        "compute_prompt_embeddings(...)",
        ("cogvx_prompt_embeddings",),
        "compute_prompt_embeddings",
        _compute_prompt_embeddings,
    ),
    Seam(
        "prepare_rotary_positional_embeddings(...)",
        ("cogvx_rotary_embedding",),
        "prepare_rotary_positional_embeddings",
        _rotary_embeddings,
    ),
    Seam("the encoded clips (instance_videos, DataLoader)", DATA_HOOKS, "VideoDataset", _data_path),
    Seam("accelerator.log per step", ("cogvx_step_end",), "Accelerator", _accelerator_log),
)


def _is_call_of(node, name: str) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name


def _calls(tree, name: str) -> bool:
    return any(_is_call_of(node, name) for node in ast.walk(tree))


def _syntax_tree(function) -> ast.FunctionDef | None:
    """``function``'s syntax tree, or None when its source cannot be read (then only signatures are
    checked)."""
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        return None
    tree = ast.parse(source)
    return tree.body[0] if tree.body and isinstance(tree.body[0], ast.FunctionDef) else None


def script_release(module) -> str:
    """Which diffusers release the script says it is from: the argument of its ``check_min_version``."""
    path = getattr(module, "__file__", None)
    tree = module_tree(path) if path else None
    if tree is None:
        return "a script of unknown release"
    needed = script_min_diffusers(tree)
    if needed is None:
        return "a script without check_min_version"
    return f"the diffusers {needed} script, by its check_min_version"


def mismatches(module, chosen: set[str]) -> list[tuple[Seam, str]]:
    """Each seam this run needs that does not fit the loaded script, with what is wrong."""
    namespace = module.__dict__
    main_tree = _syntax_tree(namespace["main"]) if callable(namespace.get("main")) else None
    found = []
    for seam in SEAMS:
        if seam.present not in namespace or (seam.hooks is not None and not chosen & set(seam.hooks)):
            continue
        problem = seam.mismatch(namespace, main_tree)
        if problem:
            found.append((seam, problem))
    return found
