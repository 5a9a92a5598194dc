"""Writes hooks.md, the hook reference, from the one source of each of its parts.

* the introduction and the timeline: ``docs/hooks_template.md``, where a line ``@hooks NAME ...``
  stands for the sections of those hooks and ``@example FILE`` for an example plugin;
* each hook's section: its spec in ``cogvx_ext/plugin/hookspecs.py`` (the signature as the heading;
  the docstring's summary, ``:param:`` lines and paragraphs), whether it is firstresult (from the
  spec), the built-in plugins that implement it (from the installed entry points, each described
  by its implementation's docstring) and its example: ``examples/hooks/<hook>.py``, or the example
  file that implements it among others;
* the examples are whole plugin files that ``tests/test_hooks_examples.py`` runs.

``python -m cogvx_ext.plugin.hookdoc`` (in a checkout's root) rewrites hooks.md; ``--check`` only
compares. ``tests/test_hooks_reference.py`` fails when the committed hooks.md differs.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cogvx_ext.plugin import hookspecs

TEMPLATE = "docs/hooks_template.md"
EXAMPLES = "examples/hooks"
OUTPUT = "hooks.md"
BUILTIN_PACKAGE = "cogvx_ext_plugins"
FIRSTRESULT_WORDS = "Stops at first non-None result."
COMMAND = "python -m cogvx_ext.plugin.hookdoc"


class HookDocError(Exception):
    """The sources disagree; the message lists every problem, one a line."""


@dataclass(frozen=True)
class Example:
    """One example plugin file."""

    path: Path
    hooks: frozenset[str]  # the hooks it implements (function names, or specname)
    plugin_class: str | None  # the class to load with `--plugins FILE:Class`, if it is one
    doc: str  # its module docstring
    code: str  # the file without the module docstring

    @property
    def plugin_item(self) -> str:
        """The `--plugins` item that loads it."""
        return f"{self.path}:{self.plugin_class}" if self.plugin_class else str(self.path)


def specs() -> dict[str, Callable[..., Any]]:
    """Every hook spec, in the order of hookspecs.py."""
    return {
        name: value
        for name, value in vars(hookspecs).items()
        if name.startswith("cogvx_") and inspect.isfunction(value) and hasattr(value, "cogvx_ext_spec")
    }


def signature_heading(name: str, spec: Callable[..., Any]) -> str:
    return f"{name}({', '.join(inspect.signature(spec).parameters)})"


def is_firstresult(spec: Callable[..., Any]) -> bool:
    return bool(spec.cogvx_ext_spec.get("firstresult"))


# ---------------------------------------------------------------------------------------------
# Docstrings


@dataclass(frozen=True)
class Docstring:
    summary: str
    body: list[str]  # paragraphs, as written
    params: dict[str, str]  # name -> text (continuation lines joined with "\n")


def parse_docstring(text: str) -> Docstring:
    lines = inspect.cleandoc(text).splitlines()
    first_param = next((i for i, line in enumerate(lines) if line.startswith(":param ")), len(lines))
    paragraphs = _paragraphs(lines[:first_param])
    params: dict[str, str] = {}
    current = None
    for line in lines[first_param:]:
        match = re.match(r":param (\w+):\s*(.*)", line)
        if match:
            current = match.group(1)
            params[current] = match.group(2)
        elif line.strip() and current:
            params[current] += "\n" + line.strip()
    summary = " ".join(paragraphs[0].split()) if paragraphs else ""
    return Docstring(summary, paragraphs[1:], params)


def _paragraphs(lines: list[str]) -> list[str]:
    out, block = [], []
    for line in [*lines, ""]:
        if line.strip():
            block.append(line.rstrip())
        elif block:
            out.append("\n".join(block))
            block = []
    return out


def markdown(text: str) -> str:
    """reST literals (``x``) as Markdown code (`x`)."""
    return re.sub(r"``(.+?)``", r"`\1`", text, flags=re.S)


def docstring_problems(name: str, spec: Callable[..., Any]) -> list[str]:
    problems = []
    if not (spec.__doc__ or "").strip():
        return [f"{name}: the spec has no docstring"]
    doc = parse_docstring(spec.__doc__)
    if not doc.summary:
        problems.append(f"{name}: the docstring has no summary line")
    says_firstresult = FIRSTRESULT_WORDS in " ".join(spec.__doc__.split())
    if says_firstresult != is_firstresult(spec):
        problems.append(f"{name}: a firstresult hook's docstring says '{FIRSTRESULT_WORDS}', and no other's")
    arguments = list(inspect.signature(spec).parameters)
    if list(doc.params) != arguments:
        problems.append(
            f"{name}: the docstring's :param lines are {list(doc.params)}, the signature's arguments {arguments}"
        )
    return problems


# ---------------------------------------------------------------------------------------------
# Examples


def read_examples(folder: Path) -> dict[str, Example]:
    """``{file name: Example}`` for every ``.py`` file in ``folder``."""
    found = {}
    for path in sorted(folder.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        doc = ast.get_docstring(tree) or ""
        code = source
        if doc:
            code = "\n".join(source.splitlines()[tree.body[0].end_lineno :]).lstrip("\n")
        classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
        found[path.name] = Example(
            path=path,
            hooks=frozenset(_implemented_hooks(tree)),
            plugin_class=classes[0] if classes else None,
            doc=doc,
            code=code.rstrip("\n") + "\n",
        )
    return found


def _implemented_hooks(tree: ast.AST) -> set[str]:
    hooks = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            call = decorator if isinstance(decorator, ast.Call) else None
            target = call.func if call else decorator
            if isinstance(target, ast.Name) and target.id == "hookimpl":
                specname = next(
                    (kw.value.value for kw in (call.keywords if call else []) if kw.arg == "specname"),
                    None,
                )
                hooks.add(specname or node.name)
    return hooks


def example_for(name: str, examples: dict[str, Example]) -> Example | None:
    """The hook's own example file, else the first example that implements it."""
    own = examples.get(f"{name}.py")
    if own is not None and name in own.hooks:
        return own
    return next((e for e in examples.values() if name in e.hooks), None)


def render_example(example: Example, root: Path) -> str:
    relative = example.path.relative_to(root).as_posix()
    caption = f"Example ([`{relative}`]({relative}))"
    parts = [f"{caption}: {markdown(example.doc)}" if example.doc else f"{caption}:"]
    parts.append(f"```python\n{example.code}```")
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Built-in implementations


def builtin_implementations() -> dict[str, list[tuple[str, Any]]]:
    """``{hook: [(plugin name, HookImpl), ...]}`` of the installed built-in plugins, by name."""
    import pluggy

    from cogvx_ext.plugin.manager import installed_plugins, register_plugin

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name, entry_point in sorted(installed_plugins().items()):
        if entry_point.value.split(".")[0] == BUILTIN_PACKAGE:
            register_plugin(pm, entry_point.load(), name)
    out: dict[str, list[tuple[str, Any]]] = {}
    for name in specs():
        impls = getattr(pm.hook, name).get_hookimpls()
        out[name] = sorted(((impl.plugin_name, impl) for impl in impls), key=lambda pair: pair[0])
    return out


def render_builtins(impls: list[tuple[str, Any]]) -> str:
    """One line naming the built-ins, or a list of them with what each does (its docstring)."""
    if not impls:
        return "- Built-ins: none."
    entries = []
    for plugin, impl in impls:
        how = [word for word in ("wrapper", "tryfirst", "trylast") if getattr(impl, word)]
        label = f"`{plugin}`" + (f" ({', '.join(how)})" if how else "")
        doc = inspect.getdoc(impl.function) or ""
        first = _paragraphs(doc.splitlines())[0] if doc else ""
        entries.append((label, " ".join(markdown(first).split())))
    if not any(text for _, text in entries):
        return "- Built-ins: " + ", ".join(label for label, _ in entries) + "."
    return "\n".join(
        ["- Built-ins:", *(f"  - {label}" + (f": {text}" if text else "") for label, text in entries)]
    )


# ---------------------------------------------------------------------------------------------
# The page


def render_hook(name: str, spec, examples: dict[str, Example], builtins, root: Path) -> str:
    doc = parse_docstring(spec.__doc__)
    parts = [f"### {signature_heading(name, spec)}", markdown(doc.summary)]
    params = [f"- `{arg}`: {markdown(text)}".replace("\n", "\n  ") for arg, text in doc.params.items()]
    if params:
        parts.append("\n".join(params))
    parts.extend(markdown(paragraph) for paragraph in doc.body)
    kind = (
        "- **firstresult**: the first answer that is not `None` is the result; the implementations "
        "after it are not called."
        if is_firstresult(spec)
        else "- Not firstresult: every implementation runs."
    )
    parts.append(kind + "\n" + render_builtins(builtins.get(name, [])))
    example = example_for(name, examples)
    if example is not None and example.path.stem == name:
        parts.append(render_example(example, root))
    elif example is not None:
        relative = example.path.relative_to(root).as_posix()
        parts.append(f"The example of `{example.path.stem}` implements it too ([`{relative}`]({relative})).")
    return "\n\n".join(parts)


def render(root: Path | str, builtins: dict[str, list[tuple[str, Any]]] | None = None) -> str:
    """hooks.md as the sources under ``root`` (a checkout) and the installed plugins say."""
    root = Path(root)
    template = (root / TEMPLATE).read_text(encoding="utf-8")
    examples = read_examples(root / EXAMPLES)
    all_specs = specs()
    builtins = builtin_implementations() if builtins is None else builtins
    problems = [p for name, spec in all_specs.items() for p in docstring_problems(name, spec)]

    placed: list[str] = []
    out = [
        f"<!-- Written by `{COMMAND}` from {TEMPLATE}, the docstrings in "
        f"cogvx_ext/plugin/hookspecs.py and {EXAMPLES}/: edit those, then run it. -->",
        "",
    ]
    for line in template.splitlines():
        if line.startswith("@hooks "):
            names = line.split()[1:]
            for name in names:
                if name not in all_specs:
                    close = difflib.get_close_matches(name, list(all_specs), n=1)
                    problems.append(
                        f"{TEMPLATE}: no hook '{name}'" + (f" (did you mean {close[0]}?)" if close else "")
                    )
            placed.extend(names)
            sections = [
                render_hook(name, all_specs[name], examples, builtins, root)
                for name in names
                if name in all_specs
            ]
            out.append("\n\n".join(sections))
        elif line.startswith("@example "):
            example = examples.get(line.split(maxsplit=1)[1].strip())
            if example is None:
                problems.append(f"{TEMPLATE}: no example file {line.split(maxsplit=1)[1]} in {EXAMPLES}/")
            else:
                out.append(render_example(example, root))
        else:
            out.append(line)

    # The timeline: the template's first plain fenced block.
    timeline = template.split("\n```\n", 2)[1] if template.count("\n```\n") >= 2 else ""
    for name in all_specs:
        if placed.count(name) != 1:
            problems.append(
                f"{TEMPLATE}: hook {name} must be in exactly one '@hooks' line ({placed.count(name)} now)"
            )
        if not re.search(rf"\b{name}\b", timeline):
            problems.append(f"{TEMPLATE}: the timeline does not name {name}")
        if example_for(name, examples) is None:
            problems.append(f"{EXAMPLES}/: no example implements {name} (add {EXAMPLES}/{name}.py)")
    for example in examples.values():
        for hook in sorted(example.hooks - set(all_specs)):
            problems.append(f"{example.path.relative_to(root)}: implements unknown hook {hook}")
    if problems:
        raise HookDocError("\n".join(problems))
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="Write hooks.md from its sources.")
    parser.add_argument("root", nargs="?", default=".", help="the checkout's root (default: .)")
    parser.add_argument("--check", action="store_true", help="only say whether hooks.md is up to date")
    args = parser.parse_args(argv)
    root = Path(args.root)
    try:
        text = render(root)
    except HookDocError as exc:
        for line in str(exc).splitlines():
            sys.stderr.write(f"hookdoc: {line}\n")
        return 1
    target = root / OUTPUT
    if args.check:
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            sys.stderr.write(f"hookdoc: {target} is out of date: run `{COMMAND}` in the checkout's root\n")
            return 1
        return 0
    from cogvx_ext.base.io import write_bytes_atomic

    write_bytes_atomic(target, text.encode("utf-8"))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
