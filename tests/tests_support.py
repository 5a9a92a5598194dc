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
