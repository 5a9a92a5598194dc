"""Plugin state in a checkpoint: asked for and handed back through the plugin manager.

Each plugin's state is kept under the plugin's identity, what the plugin *is* (its class or
module, ``cogvx_ext_plugins.aspect_bucket.plugin:AspectBucket``), not the name it was given on
the command line: ``--plugins aspect_bucket`` and
``--plugins cogvx_ext_plugins.aspect_bucket:AspectBucket`` load the same class and resume the
same state.

The hooks are called through pluggy, one plugin at a time (a subset caller holding that plugin's
implementation and every plugin's wrappers): ordering, ``wrapper=True`` implementations
(which receive the list holding that one plugin's state) and ``COGVX_EXT_TRACE`` work as for any
other hook, and each answer is known to be that plugin's.
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any

import pluggy

from cogvx_ext.data.context import RunContext


def plugin_identity(plugin: Any) -> str:
    """``module:Qualname`` of a plugin object's class, or the module's name for a module plugin."""
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    cls = plugin if inspect.isclass(plugin) else type(plugin)
    return f"{cls.__module__}:{cls.__qualname__}"


def _one_plugin_caller(pm: pluggy.PluginManager, hook_name: str, plugin: Any):
    """A caller of ``hook_name`` with ``plugin``'s own implementation and everybody's wrappers."""
    caller = getattr(pm.hook, hook_name)
    others = {
        impl.plugin
        for impl in caller.get_hookimpls()
        if impl.plugin is not plugin and not (impl.wrapper or impl.hookwrapper)
    }
    return pm.subset_hook_caller(hook_name, remove_plugins=others)


def _answering_plugins(pm: pluggy.PluginManager, hook_name: str) -> list[Any]:
    caller = getattr(pm.hook, hook_name)
    plugins = []
    for impl in reversed(caller.get_hookimpls()):  # the order pluggy calls them in
        if not (impl.wrapper or impl.hookwrapper) and impl.plugin not in plugins:
            plugins.append(impl.plugin)
    return plugins


def collect_states(pm: pluggy.PluginManager, step: int | None, run: RunContext) -> dict[str, Any]:
    """``{identity: state}`` of every plugin that has state to save."""
    states: dict[str, Any] = {}
    for plugin in _answering_plugins(pm, "cogvx_state_dict"):
        answers = _one_plugin_caller(pm, "cogvx_state_dict", plugin)(step=step, run=run)
        answers = [a for a in answers or () if a is not None]
        if answers:
            identity = plugin_identity(plugin)
            if identity in states:
                raise RuntimeError(f"two plugins of one kind ({identity}) both keep checkpoint state")
            states[identity] = answers[0] if len(answers) == 1 else answers
    return states


def restore_states(pm: pluggy.PluginManager, states: dict[str, Any], run: RunContext) -> list[str]:
    """Hand each plugin the state saved under its identity; returns the identities restored.

    Checkpoints written before identities were used keyed states by the plugin's registered name:
    that name is looked up too.
    """
    restored = []
    for plugin in _answering_plugins(pm, "cogvx_load_state_dict"):
        identity = plugin_identity(plugin)
        key = identity if identity in states else pm.get_name(plugin)
        if key in states:
            _one_plugin_caller(pm, "cogvx_load_state_dict", plugin)(state=states[key], run=run)
            restored.append(identity)
    return restored
