"""A run without the training script, for tools that read the data the same way (plan, cache).

``cogvx-ext plan`` and ``cogvx-ext cache`` take the script's data flags and the plugins' own,
so the bucket plan and the cache keys they compute are the ones training computes: the same
plugins, the same hooks, the same core functions (cogvx_ext.data).

The flags and their defaults come from the training script's own parser when the script is at
hand (``--trainer PATH`` or ``$COGVX_EXT_TRAINER``): the script is imported (its ``main`` does
not run) and its ``get_args()`` hands over its parser instead of parsing. Without a script, the
tools use the copy below of the data flags of diffusers' scripts.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import sys
from dataclasses import dataclass
from typing import Any

from cogvx_ext.base.errors import OneLineParser, UsageError
from cogvx_ext.data.context import RunContext
from cogvx_ext.model.facts import RELEASED, ModelInfo, find_model
from cogvx_ext.script.data_formats import add_data_format_arguments

ENV_TRAINER = "COGVX_EXT_TRAINER"
_module_counter = itertools.count(1)


@dataclass
class OfflineRun:
    pm: Any
    context: RunContext  # what the plugins see (the hooks' ``run``)
    plugin_names: list[str]
    model_source: str = ""  # where the model's rules came from (find_model)

    @property
    def hook(self):
        return self.pm.hook

    @property
    def args(self) -> argparse.Namespace:
        return self.context.args

    @property
    def model(self) -> ModelInfo:
        return self.context.model


def script_data_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The training scripts' data and model flags, with their defaults."""
    parser = OneLineParser(prog=prog, description=description)
    g = parser.add_argument_group("the training script's flags (same names and defaults)")
    g.add_argument(
        "--pretrained_model_name_or_path",
        default=None,
        help="read the model's positional settings from its transformer/config.json",
    )
    g.add_argument("--revision", default=None)
    g.add_argument("--instance_data_root", default=None)
    g.add_argument("--dataset_name", default=None, help="a datasets.load_dataset source (e.g. a CSV file)")
    g.add_argument("--dataset_config_name", default=None)
    g.add_argument("--cache_dir", default=None)
    g.add_argument("--caption_column", default="text")
    g.add_argument("--video_column", default="video")
    g.add_argument("--video_reshape_mode", choices=("center", "random", "none"), default="center")
    g.add_argument("--id_token", default=None)
    g.add_argument("--height", type=int, default=480)
    g.add_argument("--width", type=int, default=720)
    g.add_argument("--fps", type=int, default=8)
    g.add_argument("--max_num_frames", type=int, default=49)
    g.add_argument("--skip_frames_start", type=int, default=0)
    g.add_argument("--skip_frames_end", type=int, default=0)
    g.add_argument("--train_batch_size", type=int, default=4)
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--seed", type=int, default=None)
    t = parser.add_argument_group("cogvx-ext")
    t.add_argument(
        "--model",
        choices=sorted(RELEASED),
        default=None,
        help="positional settings of a released model, when --pretrained_model_name_or_path is not "
        "at hand (default: 5b)",
    )
    t.add_argument(
        "--num_processes", type=int, default=1, help="training processes (steps per epoch depend on it)"
    )
    t.add_argument(
        "--trainer",
        metavar="PATH",
        default=None,
        help=f"the training script: its own flags and defaults are used (default: ${ENV_TRAINER}; "
        "without one, a copy of the diffusers scripts' data flags)",
    )
    t.add_argument(
        "--plugins",
        action="append",
        default=None,
        help="plugins, as for training (default: aspect_bucket,rope_rescale)",
    )
    add_data_format_arguments(t)
    return parser


def start_offline_run(
    parser: argparse.ArgumentParser, argv: list[str], default_plugins: str, command: str = "plan"
) -> OfflineRun:
    """Load the plugins, parse, configure and check as training starts; ``command`` names the tool
    (``plan`` or ``cache``) in the run's context."""
    from cogvx_ext.data.contracts import check_requirements
    from cogvx_ext.plugin.manager import (
        ENV_PLUGINS,
        load_plugins,
        make_plugin_manager,
        parse_args_naming_flag_owners,
        parse_plugin_list,
        plugins_flag_values,
    )

    choice = parse_plugin_list(
        [os.environ.get(ENV_PLUGINS)] + (plugins_flag_values(argv) or [default_plugins])
    )
    pm = make_plugin_manager()
    names = load_plugins(pm, choice)
    trainer = trainer_flag_value(argv) or os.environ.get(ENV_TRAINER)
    if trainer:
        parser = with_script_flags(parser, trainer)
    pm.hook.cogvx_add_arguments(parser=parser)
    args = parse_args_naming_flag_owners(parser, argv)
    # The plan is for --num_processes; a cache fill's processes are those it was launched with.
    processes = args.num_processes if command == "plan" else None
    context = RunContext(command, args=args, plugins=names, num_processes=processes)
    pm.hook.cogvx_configure(args=args, run=context)
    context.ask_stages(pm.hook)  # once: every later hook sees this answer (run.stages)
    model, source = find_model(
        args.pretrained_model_name_or_path, args.model, getattr(args, "revision", None)
    )
    if model is None:
        raise UsageError(
            f"cannot tell which CogVideoX '{source}' is without downloading it (no transformer/config.json "
            "there or in the Hugging Face cache, and its name names no released model): give a local model "
            f"folder or --model ({', '.join(sorted(RELEASED))})"
        )
    context.model = model
    # What training checks at start, with the same verdict. (The memory check waits for the clips:
    # with them at hand it judges the shapes they train at, cogvx_ext.cli.plan.)
    check_requirements(pm.hook, context)
    from cogvx_ext.plugin.manager import chosen_hooks
    from cogvx_ext.script.data_formats import check_unpaired_flag
    from cogvx_ext.script.seams.kinds import DATA_HOOKS

    check_unpaired_flag(args, data_plugin=bool(chosen_hooks(pm) & set(DATA_HOOKS)))
    return OfflineRun(pm=pm, context=context, plugin_names=names, model_source=source)


def trainer_flag_value(argv: list[str]) -> str | None:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--trainer", default=None)
    return pre.parse_known_args(argv)[0].trainer


class _ParserCaptured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def script_parser(path: str | os.PathLike) -> argparse.ArgumentParser:
    """The training script's own argument parser, as its ``get_args()`` builds it."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise UsageError(f"training script '{path}' does not exist (--trainer / ${ENV_TRAINER})")
    name = f"_cogvx_ext_flags_of_{os.path.splitext(os.path.basename(path))[0]}_{next(_module_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # the script's imports; its main() does not run
        if not callable(getattr(module, "get_args", None)):
            raise UsageError(f"{os.path.basename(path)} has no get_args(): not a diffusers training script")

        def capture(self, args=None, namespace=None):
            raise _ParserCaptured(self)

        previous = argparse.ArgumentParser.parse_args
        argparse.ArgumentParser.parse_args = capture
        try:
            module.get_args()
        except _ParserCaptured as captured:
            return captured.parser
        finally:
            argparse.ArgumentParser.parse_args = previous
        raise UsageError(f"{os.path.basename(path)}'s get_args() parsed no arguments")
    finally:
        sys.modules.pop(name, None)


def with_script_flags(
    tool_parser: argparse.ArgumentParser, script: str | os.PathLike
) -> argparse.ArgumentParser:
    """A parser with the script's own flags and defaults, then the tool's flags the script lacks.

    Nothing is required here (the script requires a model, the plan does not): what a tool needs,
    it checks itself.
    """
    flags = script_parser(script)
    parser = OneLineParser(
        prog=tool_parser.prog, description=tool_parser.description, conflict_handler="resolve"
    )
    group = parser.add_argument_group(f"the training script's flags ({os.path.basename(os.fspath(script))})")
    for action in flags._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        action.required = False
        group._add_action(action)
    ours = parser.add_argument_group("cogvx-ext")
    for action in tool_parser._actions:
        if isinstance(action, argparse._HelpAction) or any(
            option in parser._option_string_actions for option in action.option_strings
        ):
            continue
        ours._add_action(action)
    return parser
