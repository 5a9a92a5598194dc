"""Small helpers shared by test modules (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pluggy

from cogvx_ext.plugin import hookspecs
from cogvx_ext.plugin.defaults import CoreDefaults

HERE = Path(__file__).parent


def read_events(directory) -> dict[str, list[dict]]:
    """What tests/plugins/recorder.py wrote, by file name (events-rank<N>.jsonl)."""
    out = {}
    for name in sorted(os.listdir(directory)):
        if name.startswith("events-rank"):
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                out[name] = [json.loads(line) for line in f]
    return out


def run_context(hook, args, model, command="plan", num_processes=1):
    """The run's context as the core makes it: the stage schedule asked once."""
    from cogvx_ext.data.context import RunContext

    run = RunContext(command, args=args, model=model, num_processes=num_processes, process_index=0)
    run.ask_stages(hook)
    return run


def configured(parser, argv, plugins, model):
    """A plugin manager with the core defaults and ``plugins``, through add_arguments, parsing,
    configure and requires, as a run starts: ``(pm, args)``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(CoreDefaults(), "cogvx_ext.defaults")
    for plugin in plugins:
        pm.register(plugin, type(plugin).__name__)
    pm.check_pending()
    pm.hook.cogvx_add_arguments(parser=parser)
    args = parser.parse_args(argv)
    pm.hook.cogvx_configure(args=args)
    pm.hook.cogvx_requires(args=args, model=model)
    return pm, args


def training_args(model, data, out, *extra, height=96, width=160, frames=9, steps=2):
    """The training script's flags for a tiny run on ``data`` (a ``write_dataset`` folder)."""
    return [
        "--pretrained_model_name_or_path", model, "--instance_data_root", data,
        "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--height", height, "--width", width, "--max_num_frames", frames, "--fps", 8,
        "--train_batch_size", 1, "--max_train_steps", steps, "--output_dir", out, "--seed", 0,
        "--rank", 4, "--lora_alpha", 4, "--learning_rate", "1e-3", *extra,
    ]  # fmt: skip


def ok(result):
    """``result`` (a finished training), after checking that it succeeded."""
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )
    return result
