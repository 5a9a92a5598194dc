"""Plugin manager factory and the ``--plugins`` grammar.

Grammar (pytest's ``-p`` is the model): a comma list whose items are

* an entry-point name in group ``cogvx_ext`` (``aspect_bucket``),
* ``no:NAME`` to block NAME even when listed elsewhere (``COGVX_EXT_PLUGINS``, another flag),
* a dotted module path (``mypkg.my_plugin``),
* a path to a ``.py`` file (``./my_plugin.py``), imported as a real module so that its classes
  pickle for DataLoader workers,
* either of the last two followed by ``:Name`` to use one attribute of the module
  (``./my_plugin.py:ShapeLogger``, ``mypkg.plugins:Cache``), as an entry point does.

A plugin object may be a module, a class (instantiated once per run, so per-run state lives on the
instance), or any other object with hook implementations. Only named plugins are loaded:
installing a plugin package never changes a run.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from cogvx_ext.base.errors import PluginImportError, UsageError
from cogvx_ext.plugin import hookspecs

ENTRY_POINT_GROUP = "cogvx_ext"
ENV_PLUGINS = "COGVX_EXT_PLUGINS"
ENV_TRACE = "COGVX_EXT_TRACE"
CORE_PLUGIN_NAME = "cogvx_ext.defaults"


@dataclass(frozen=True)
class PluginChoice:
    """What the user asked for: plugins in load order, and names blocked with ``no:``."""

    wanted: tuple[str, ...]
    blocked: frozenset[str]


def parse_plugin_list(values: Iterable[str | None]) -> PluginChoice:
    """Split comma lists (from the environment, flags, or Python) into wanted and blocked names."""
    wanted: list[str] = []
    blocked: set[str] = set()
    for value in values:
        for item in (value or "").split(","):
            item = item.strip()
            if not item:
                continue
            if item.startswith("no:"):
                blocked.add(plugin_name(item[3:]))
            elif item not in wanted:
                wanted.append(item)
    return PluginChoice(tuple(w for w in wanted if plugin_name(w) not in blocked), frozenset(blocked))


def plugins_flag_values(argv: list[str]) -> list[str]:
    """The values of every ``--plugins`` in a command line, read before its parser knows the flag."""
    import argparse

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--plugins", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    return known.plugins


def plugin_name(item: str) -> str:
    """The name a plugin is registered under: entry-point name, module path or file stem, then :Name."""
    base, attribute = _split_attribute(item)
    name = Path(base).stem if _is_path(base) else base
    return f"{name}:{attribute}" if attribute else name


def _split_attribute(item: str) -> tuple[str, str | None]:
    base, sep, attribute = item.rpartition(":")
    if sep and attribute.isidentifier() and base and not base.endswith(("/", "\\")):
        return base, attribute
    return item, None


def _is_path(item: str) -> bool:
    return item.endswith(".py") or os.sep in item or "/" in item


def installed_plugins() -> dict[str, metadata.EntryPoint]:
    """Entry points in group ``cogvx_ext``, by name."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def make_plugin_manager() -> pluggy.PluginManager:
    """A fresh manager with every hook spec and the core defaults; one per run."""
    from cogvx_ext.plugin import defaults

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(defaults.CoreDefaults(), name=CORE_PLUGIN_NAME)
    if os.environ.get(ENV_TRACE, "") not in ("", "0"):
        pm.trace.root.setwriter(lambda message: sys.stderr.write(f"cogvx-ext trace: {message}"))
        pm.enable_tracing()
    return pm


def load_plugins(pm: pluggy.PluginManager, choice: PluginChoice) -> list[str]:
    """Import and register every wanted plugin; returns their names in load order."""
    for name in choice.blocked:
        pm.set_blocked(name)
    names = []
    for item in choice.wanted:
        name, plugin = _import_plugin(item)
        if pm.is_registered(plugin) or pm.has_plugin(name):
            continue
        defects = never_called_defects(plugin, item)
        if defects:
            raise UsageError(f"plugin '{item}' " + "; ".join(defects))
        register_plugin(pm, plugin, name)
        names.append(name)
    check_hooks(pm)
    return names


def never_called_defects(plugin: Any, item: str | None = None) -> list[str]:
    """What keeps a loaded plugin (a module, a class or an instance) from ever being called, each
    in words that follow ``plugin 'NAME' ``; ``[]`` for a sound plugin. ``item`` is how the user
    named it (for the ``:Name`` advice).

    pluggy registers only what carries ``@hookimpl`` and accepts a plugin with no hook at all, so
    a forgotten decorator or a ``.py`` file whose hooks sit in a class nobody chose would be loaded
    and never called. As in pytest, where every ``pytest_*`` function is a hook, a ``cogvx_*``
    function or method is taken as meant to be one.
    """
    hooks = _spec_names()
    implemented, undecorated = [], []
    for attribute in _hook_like_names(plugin):
        if _is_hookimpl(plugin, attribute):
            implemented.append(attribute)
        else:
            undecorated.append(attribute)
    defects = []
    meant = [a for a in undecorated if a in hooks]
    if meant:
        them = "it" if len(meant) == 1 else "them"
        defects.append(f"has {_and(meant)} without @hookimpl: decorate {them} with cogvx_ext.hookimpl")
    for attribute in (a for a in undecorated if a not in hooks):
        close = difflib.get_close_matches(attribute, sorted(hooks), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "hook names are listed in hooks.md"
        defects.append(
            f"has {attribute} without @hookimpl, and no hook has that name ({hint}): name it after a "
            "hook and decorate it with cogvx_ext.hookimpl, or drop the cogvx_ prefix from a helper"
        )
    if implemented or undecorated:
        return defects
    classes = _classes_with_hooks(plugin) if inspect.ismodule(plugin) else []
    if classes:
        base = _split_attribute(item)[0] if item else None
        choices = " or ".join(f"{base}:{c}" if base else f":{c}" for c in classes)
        where = f"its class {classes[0]} does" if len(classes) == 1 else f"its classes {_and(classes)} do"
        return [f"implements no hook itself; {where}: use --plugins {choices}"]
    return [
        "implements no hook: hooks are functions or methods named after a hook in hooks.md and "
        "decorated with cogvx_ext.hookimpl"
    ]


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _spec_names() -> set[str]:
    return {name for name in dir(hookspecs) if name.startswith("cogvx_")}


def _hook_like_names(plugin: Any) -> list[str]:
    """Names of the plugin's functions and methods that are hooks or look like one."""
    names = []
    is_module = inspect.ismodule(plugin)
    for attribute in dir(plugin):
        marked = _is_hookimpl(plugin, attribute)  # any name, with @hookimpl(specname=...)
        if not attribute.startswith("cogvx_") and not marked:
            continue
        try:
            value = getattr(plugin, attribute)
        except Exception:  # a property that needs state the plugin does not have yet
            continue
        if is_module and not marked and getattr(value, "__module__", None) != plugin.__name__:
            continue  # imported from elsewhere (a hook spec imported as a helper is not the plugin's)
        if inspect.isroutine(value) or marked:
            names.append(attribute)
    return names


def _is_hookimpl(plugin: Any, attribute: str) -> bool:
    try:
        return _MARKS.parse_hookimpl_opts(plugin, attribute) is not None
    except Exception:
        return False


# Reads @hookimpl marks only (parse_hookimpl_opts); nothing is registered with it.
_MARKS = pluggy.PluginManager(hookspecs.PROJECT)


def _classes_with_hooks(module: Any) -> list[str]:
    """Public classes a module holds whose methods carry @hookimpl (cogvx-ext's own left out)."""
    found = []
    for attribute in dir(module):
        value = getattr(module, attribute, None)
        if (
            attribute.startswith("_")
            or not inspect.isclass(value)
            or (getattr(value, "__module__", "") or "").startswith("cogvx_ext")
        ):
            continue
        if any(_is_hookimpl(value, name) for name in _hook_like_names(value)):
            found.append(attribute)
    return found


def register_plugin(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Register one plugin, turning pluggy's validation error into one line naming plugin and hook."""
    if inspect.isclass(plugin):
        plugin = plugin()
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise UsageError(f"plugin '{name}' was rejected: {_validation_reason(pm, exc)}") from None


def check_hooks(pm: pluggy.PluginManager) -> None:
    """Reject implementations of hooks that do not exist (a misspelled hook would do nothing)."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise UsageError(
            f"plugin '{pm.get_name(exc.plugin)}' was rejected: {_validation_reason(pm, exc)}"
        ) from None


def _validation_reason(pm: pluggy.PluginManager, exc: pluggy.PluginValidationError) -> str:
    message = str(exc)
    if message.startswith("unknown hook"):
        hook = message.split("'")[1]
        close = difflib.get_close_matches(hook, _hook_names(pm), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else " (hook names are listed in hooks.md)"
        return f"it implements unknown hook '{hook}'{hint}"
    # pluggy: "Plugin 'x' for hook 'h'\nhookimpl definition: h(a, b)\nArgument(s) {'b'} are declared
    # in the hookimpl but can not be found in the hookspec"
    lines = message.splitlines()
    hook = lines[0].split("'")[3] if lines[0].count("'") >= 4 else "?"
    detail = lines[-1] if len(lines) > 1 else message
    if "can not be found in the hookspec" in detail:
        spec_args = getattr(pm.hook, hook).spec.argnames if hasattr(pm.hook, hook) else ()
        bad = detail.split("{", 1)[-1].split("}", 1)[0]
        return f"its {hook} takes argument(s) {{{bad}}} that the hook does not have (it has: {', '.join(spec_args)})"
    return f"hook '{hook}': {detail}"


def _hook_names(pm: pluggy.PluginManager) -> list[str]:
    """Hooks with a spec (pluggy also keeps callers for unknown names it has seen)."""
    return [
        name for name in dir(pm.hook) if name.startswith("cogvx_") and getattr(pm.hook, name).spec is not None
    ]


def _import_plugin(item: str) -> tuple[str, Any]:
    """Resolve one grammar item to (name, plugin object)."""
    base, attribute = _split_attribute(item)
    if attribute:
        _, module = _import_plugin(base)
        if not hasattr(module, attribute):
            raise UsageError(f"plugin '{item}': {base} has no attribute '{attribute}'")
        return plugin_name(item), getattr(module, attribute)
    if _is_path(item):
        return plugin_name(item), _import_file(item)
    entry_points = installed_plugins()
    if item in entry_points:
        try:
            return item, entry_points[item].load()
        except Exception as exc:
            raise _import_failed(item, exc) from exc
    if "." in item:
        try:
            return item, importlib.import_module(item)
        except ModuleNotFoundError as exc:
            if exc.name and item.startswith(exc.name):
                raise UsageError(_unknown_message(item, entry_points)) from None
            raise _import_failed(item, exc) from exc
        except Exception as exc:
            raise _import_failed(item, exc) from exc
    raise UsageError(_unknown_message(item, entry_points))


def _import_failed(item: str, exc: BaseException) -> PluginImportError:
    """One line naming the plugin and what went wrong; the cause stays attached for tracing."""
    detail = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        detail = f"{exc.msg} ({exc.filename}, line {exc.lineno})"
    return PluginImportError(
        f"plugin '{item}' failed to import: {type(exc).__name__}: {detail} "
        "(fix it or leave it out of --plugins; COGVX_EXT_TRACE=1 shows the traceback)"
    )


def _unknown_message(item: str, entry_points: dict[str, Any]) -> str:
    names = ", ".join(sorted(entry_points)) or "none"
    close = difflib.get_close_matches(item, list(entry_points), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return (
        f"unknown plugin '{item}': {hint}installed plugins: {names} "
        "(a dotted module path or a path to a .py file also works)"
    )


def _import_file(item: str) -> Any:
    path = Path(item).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"plugin file '{item}' does not exist")
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None:
        if getattr(existing, "__file__", None) and Path(existing.__file__).resolve() == path:
            return existing
        raise UsageError(
            f"plugin file '{item}' is named like the already imported module '{name}': rename the file"
        )
    # As tox does for toxfile.py: import by name with the folder briefly on sys.path, so the
    # module is a real module (its classes pickle into DataLoader worker processes).
    sys.path.insert(0, str(path.parent))
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise _import_failed(item, exc) from exc
    finally:
        sys.path.remove(str(path.parent))


def parse_args_naming_flag_owners(
    parser: argparse.ArgumentParser, argv: list[str], namespace: argparse.Namespace | None = None
) -> argparse.Namespace:
    """``parser.parse_args(argv)``, except that a flag of an installed plugin that is not loaded
    stops with one line naming the plugin to add, not the usage block and ``unrecognized
    arguments``."""
    args, extras = parser.parse_known_args(argv, namespace)
    if not extras:
        return args
    owners = plugin_flag_owners(extras)
    if owners:
        by_plugin: dict[str, list[str]] = {}
        for flag, plugin in owners.items():
            by_plugin.setdefault(plugin, []).append(flag)
        parts = [
            f"{_and(flags)} {'belongs' if len(flags) == 1 else 'belong'} to plugin {plugin}"
            for plugin, flags in by_plugin.items()
        ]
        them = "it" if len(by_plugin) == 1 else "them"
        raise UsageError(f"{'; '.join(parts)}: add {them} to --plugins")
    # What argparse's parse_args does with leftovers.
    message = f"unrecognized arguments: {' '.join(extras)}"
    if getattr(parser, "exit_on_error", True):
        parser.error(message)
    raise argparse.ArgumentError(None, message)


def plugin_flag_owners(arguments: Iterable[str]) -> dict[str, str]:
    """``{flag: installed plugin that adds it}`` for the flags among ``arguments``.

    Imports every installed plugin: only for flags a parser did not know, so that a run that
    starts right never pays for it. A plugin that fails to load owns nothing here.
    """
    flags = []
    for argument in arguments:
        flag = argument.split("=", 1)[0]
        if flag.startswith("--") and flag not in flags:
            flags.append(flag)
    if not flags:
        return {}
    owners: dict[str, str] = {}
    for name, ep in sorted(installed_plugins().items()):
        try:
            options = _options_of(_alone(name, ep))
        except Exception:
            continue
        for flag in flags:
            if flag in options and flag not in owners:
                owners[flag] = name
    return {flag: owners[flag] for flag in flags if flag in owners}


def _alone(name: str, ep: metadata.EntryPoint) -> pluggy.PluginManager:
    """An installed plugin in a manager of its own, so that its flags are its alone."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    try:
        plugin = ep.load()
    except Exception as exc:
        raise _import_failed(name, exc) from exc
    register_plugin(pm, plugin, name)
    check_hooks(pm)
    return pm


def _options_of(pm: pluggy.PluginManager) -> list[str]:
    parser = argparse.ArgumentParser(add_help=False)
    pm.hook.cogvx_add_arguments(parser=parser)
    return [option for action in parser._actions for option in action.option_strings]


def describe_installed() -> list[dict[str, Any]]:
    """Installed plugins: distribution version, one-line purpose, flags and hooks, or the error
    that keeps a plugin from loading."""
    rows = []
    for name, ep in sorted(installed_plugins().items()):
        row: dict[str, Any] = {
            "name": name,
            "value": ep.value,
            "version": ep.dist.version if ep.dist else "?",
        }
        try:
            pm = _alone(name, ep)  # its flags and hooks are its alone
            registered = pm.get_plugin(name)
            row["purpose"] = _purpose(sys.modules.get(ep.module), ep.load())
            row["hooks"] = sorted({caller.name for caller in _impls_of(pm, registered)})
            parser = argparse.ArgumentParser(add_help=False)
            pm.hook.cogvx_add_arguments(parser=parser)
            row["flags"] = [option for action in parser._actions for option in action.option_strings[:1]]
        except Exception as exc:  # one broken plugin must not hide the others
            row["error"] = (
                str(exc) if isinstance(exc, UsageError) else f"plugin '{name}': {type(exc).__name__}: {exc}"
            )
        rows.append(row)
    return rows


def _purpose(module: Any, plugin: Any) -> str:
    """The first line of the module docstring the entry point names (else the plugin's own)."""
    for owner in (module, plugin):
        doc = (inspect.getdoc(owner) or "").strip() if owner is not None else ""
        if doc:
            return doc.splitlines()[0]
    return ""


def _impls_of(pm: pluggy.PluginManager, plugin: Any):
    for caller in pm.get_hookcallers(plugin) or ():
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin:
                yield caller


def chosen_hooks(pm: pluggy.PluginManager) -> set[str]:
    """Names of the hooks implemented by the plugins the user chose (the core defaults excluded)."""
    return {name for name in _hook_names(pm) if implemented_by_plugins(getattr(pm.hook, name))}


def implemented_by_plugins(caller: Any) -> bool:
    """Whether a plugin other than the core's defaults implements this hook (a hook caller)."""
    return any(impl.plugin_name != CORE_PLUGIN_NAME for impl in caller.get_hookimpls())


# ---------------------------------------------------------------------------------------------
# Checking one plugin without a run (`cogvx-ext plugins --check`)


def plugin_defects(plugin: Any, item: str | None = None) -> list[str]:
    """Everything wrong with one loaded plugin (a module, a class, or an instance), one line each
    in words that follow ``plugin 'NAME': ``; ``[]`` when there is nothing to say.

    What would keep it from ever being called (``never_called_defects``: a ``cogvx_*`` function
    without ``@hookimpl``, no hook at all, hooks only in a class nobody chose), and what a run
    stops at when it registers it (a hook that does not exist, an argument the hook does not
    have, an argument with a default — pluggy never passes it —, a wrapper that does not yield).
    """
    defects = never_called_defects(plugin, item)
    specs = {name: list(inspect.signature(fn).parameters) for name, fn in _spec_functions().items()}
    for attribute, function in _plugin_routines(plugin):
        options = getattr(function, f"{hookspecs.PROJECT}_impl", None)
        if options is None:
            continue  # a cogvx_* one is named by never_called_defects
        hook = options.get("specname") or attribute
        label = hook if hook == attribute else f"{attribute} (for {hook})"
        if hook not in specs:
            close = difflib.get_close_matches(hook, list(specs), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "hook names are listed in hooks.md"
            defects.append(f"{label} is not a hook ({hint})")
            continue
        parameters = list(inspect.signature(function).parameters.items())
        if parameters and parameters[0][0] == "self" and inspect.isclass(plugin):
            parameters = parameters[1:]  # a method read from its class
        for name, parameter in parameters:
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                defects.append(
                    f"{label} takes *{name}: name the arguments it needs ({', '.join(specs[hook])})"
                )
            elif name not in specs[hook]:
                close = difflib.get_close_matches(name, specs[hook], n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                defects.append(
                    f"{label} takes '{name}', which {hook} does not have ({hint}it has: {', '.join(specs[hook])})"
                )
            elif parameter.default is not parameter.empty:
                defects.append(
                    f"{label} gives '{name}' a default: pluggy never passes such an argument (remove the default)"
                )
        wrapper = options.get("wrapper") or options.get("hookwrapper")
        if wrapper and not inspect.isgeneratorfunction(function):
            defects.append(
                f"{label} is a wrapper but does not yield (a wrapper is `result = yield`, then `return result`)"
            )
    return defects


def _spec_functions() -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(hookspecs).items()
        if name.startswith("cogvx_") and hasattr(value, f"{hookspecs.PROJECT}_spec")
    }


def _plugin_routines(plugin: Any):
    """``(attribute, function)`` pairs pluggy would look at; for a module, only the functions it defines."""
    is_module = inspect.ismodule(plugin)
    for attribute in dir(plugin):
        if attribute.startswith("__"):
            continue
        try:
            value = getattr(plugin, attribute)
        except Exception:  # a property that fails is not a hook
            continue
        if not inspect.isroutine(value):
            continue
        marked = hasattr(value, f"{hookspecs.PROJECT}_impl")
        if is_module and not marked and getattr(value, "__module__", None) != plugin.__name__:
            continue  # imported from elsewhere
        yield attribute, value


def check_plugin(item: str) -> dict[str, Any]:
    """Load one ``--plugins`` item as a run would and say what it is: its name, purpose, hooks,
    flags and defects (``defects`` empty when it is fine). A plugin that cannot be imported or
    instantiated comes back with that as its one defect."""
    report: dict[str, Any] = {
        "item": item,
        "name": plugin_name(item),
        "hooks": [],
        "flags": [],
        "defects": [],
    }
    try:
        name, plugin = _import_plugin(item)
    except UsageError as exc:
        report["defects"].append(str(exc))
        return report
    report["name"] = name
    module = (
        sys.modules.get(getattr(plugin, "__module__", None) or "") if not inspect.ismodule(plugin) else plugin
    )
    report["purpose"] = _purpose(module, plugin)
    try:
        instance = plugin() if inspect.isclass(plugin) else plugin
    except Exception as exc:
        report["defects"].append(f"creating it failed: {type(exc).__name__}: {exc}")
        return report
    report["defects"] = plugin_defects(instance, item)
    report["hooks"] = sorted(
        {
            getattr(function, f"{hookspecs.PROJECT}_impl").get("specname") or attribute
            for attribute, function in _plugin_routines(instance)
            if hasattr(function, f"{hookspecs.PROJECT}_impl")
        }
    )
    if report["defects"]:
        return report
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    try:
        register_plugin(pm, instance, name)
        check_hooks(pm)
        parser = argparse.ArgumentParser(add_help=False)
        pm.hook.cogvx_add_arguments(parser=parser)
        report["flags"] = [option for action in parser._actions for option in action.option_strings[:1]]
    except UsageError as exc:
        report["defects"].append(str(exc))
    except Exception as exc:
        report["defects"].append(f"its cogvx_add_arguments failed: {type(exc).__name__}: {exc}")
    return report
