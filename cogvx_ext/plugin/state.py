"""Plugin state in a checkpoint: asked for and handed back through the plugin manager; and the
plugins' training settings (``cogvx_training_settings``) recorded with it and compared on resume.

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
import json
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


def training_settings(pm: pluggy.PluginManager, names: list[str], run: RunContext) -> list[dict[str, Any]]:
    """``[{"plugin": identity, "name": name, "settings": dict or None}]`` for every chosen plugin, in
    load order: what each declares through ``cogvx_training_settings`` (``None``: it declares
    nothing, so it cannot change what is trained), as JSON would give it back."""
    record = []
    for name in names:
        plugin = pm.get_plugin(name)
        if plugin is None:
            continue
        answers = _one_plugin_caller(pm, "cogvx_training_settings", plugin)(args=run.args, run=run)
        answers = [a for a in answers or () if a is not None]
        settings = None
        if answers:
            settings = {}
            for answer in answers:
                settings.update(answer)
            settings = json.loads(json.dumps(settings, default=str))
        record.append({"plugin": plugin_identity(plugin), "name": name, "settings": settings})
    return record


def settings_differences(saved: list[dict[str, Any]], current: list[dict[str, Any]]) -> list[str]:
    """What differs between two :func:`training_settings` records, one phrase each: a plugin that
    changes the training left out or added, a setting of another value. Plugins that declare no
    settings in either record may come and go."""
    before = {p["plugin"]: p for p in saved if p.get("settings") is not None}
    now = {p["plugin"]: p for p in current if p.get("settings") is not None}
    loaded = {p["plugin"] for p in current}
    differences = []
    for identity, entry in before.items():
        if identity not in now:
            how = "declares no settings now" if identity in loaded else "left out"
            differences.append(f"{entry['name']} {how}")
    for identity, entry in now.items():
        if identity not in before:
            differences.append(f"{entry['name']} added")
            continue
        old, new = before[identity]["settings"], entry["settings"]
        for key in sorted(set(old) | set(new)):
            if old.get(key, _UNSET) != new.get(key, _UNSET):
                differences.append(f"{entry['name']} {key} {_shown(old, key)} -> {_shown(new, key)}")
    return differences


_UNSET = object()


def _shown(settings: dict[str, Any], key: str) -> str:
    if key not in settings:
        return "(unset)"
    text = json.dumps(settings[key])
    return text if len(text) <= 60 else text[:57] + "..."
