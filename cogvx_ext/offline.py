"""A run without the training script, for tools that read the data the same way (plan, cache).

``cogvx-ext plan`` and ``cogvx-ext cache`` take the script's data flags and the plugins' own,
so the bucket plan and the cache keys they compute are the ones training computes: the same
plugins, the same hooks, the same core functions (cogvx_ext.dataset).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from cogvx_ext.errors import UsageError
from cogvx_ext.model import RELEASED, ModelInfo, released_model


@dataclass
class OfflineRun:
    pm: Any
    args: argparse.Namespace
    model: ModelInfo
    plugin_names: list[str]

    @property
    def hook(self):
        return self.pm.hook


def script_data_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The training scripts' data and model flags, with their defaults."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    g = parser.add_argument_group("the training script's flags (same names and defaults)")
    g.add_argument(
        "--pretrained_model_name_or_path",
        default=None,
        help="read the model's positional settings from its transformer/config.json",
    )
    g.add_argument("--revision", default=None)
    g.add_argument("--instance_data_root", required=True)
    g.add_argument("--caption_column", default="text")
    g.add_argument("--video_column", default="video")
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
        "--plugins",
        action="append",
        default=None,
        help="plugins, as for training (default: aspect_bucket,rope_rescale)",
    )
    return parser


def start_offline_run(parser: argparse.ArgumentParser, argv: list[str], default_plugins: str) -> OfflineRun:
    from cogvx_ext.contracts import check_requirements
    from cogvx_ext.manager import (
        ENV_PLUGINS,
        load_plugins,
        make_plugin_manager,
        parse_plugin_list,
        plugins_flag_values,
    )

    choice = parse_plugin_list(
        [os.environ.get(ENV_PLUGINS)] + (plugins_flag_values(argv) or [default_plugins])
    )
    pm = make_plugin_manager()
    names = load_plugins(pm, choice)
    pm.hook.cogvx_add_arguments(parser=parser)
    args = parser.parse_args(argv)
    pm.hook.cogvx_configure(args=args)
    model = None
    if args.pretrained_model_name_or_path:
        model = ModelInfo.from_pretrained(args.pretrained_model_name_or_path)
        if model is None:
            raise UsageError(
                f"no transformer/config.json under '{args.pretrained_model_name_or_path}': "
                "give a local model folder or --model NAME"
            )
    model = model or released_model(args.model or "5b")
    check_requirements(pm.hook, args, model)  # what training checks at start, with the same verdict
    return OfflineRun(pm=pm, args=args, model=model, plugin_names=names)
