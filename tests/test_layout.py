"""The package's rooms: layers that import only downwards, and no import circles; built-in plugins
that use the public API and nothing else.

Every import in cogvx_ext and plugins/ is read from the source (function-level imports too), so a
layer that reaches back up, two modules that need each other, or a built-in plugin with a back
door into the core fail here rather than in a review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cogvx_ext
import cogvx_ext.api
import cogvx_ext_plugins

PACKAGE = Path(cogvx_ext.__file__).parent
BUILTIN_PLUGINS = Path(cogvx_ext_plugins.__file__).parent
# Lowest first: a module may import its own layer and the layers before it, never one after it.
LAYERS = ["base", "model", "data", "plugin", "script", "cli"]
# Modules at the top of the package stand above every layer (the public faces and the entry
# points); the minimal trainers stand outside (they are training scripts, and import none of us).
TOP = "top"
PUBLIC_TOP = [
    "cogvx_ext",  # cheap: the start-up hook imports it in every process
    "cogvx_ext.__main__",
    "cogvx_ext._startup",
    "cogvx_ext._version",
    "cogvx_ext.api",  # everything a plugin may import (the built-in ones too)
    "cogvx_ext.inference",  # prepare_pipeline, for people generating with a trained LoRA
    "cogvx_ext.testing",  # tiny models and clips, for plugin authors' tests
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in LAYERS:
        return parts[1]
    if len(parts) == 2 and parts[1] in LAYERS:
        return parts[1]
    return TOP


def imports_of(path: Path) -> set[str]:
    found = set()
    module = module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cogvx_ext")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("cogvx_ext"):
                found.add(target)
                # `from cogvx_ext.x import y` may name a submodule y
                found |= {f"{target}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    modules = {
        module_name(p): p for p in PACKAGE.rglob("*.py") if "trainers" not in p.relative_to(PACKAGE).parts
    }
    return {
        name: {t for t in imports_of(path) if t in modules and t != name and not name.startswith(t + ".")}
        for name, path in modules.items()
    }


def test_the_top_holds_only_the_public_faces_and_entry_points():
    top = sorted(m for m in graph() if layer_of(m) == TOP)
    assert top == sorted(PUBLIC_TOP), f"a module outside the layers: {sorted(set(top) - set(PUBLIC_TOP))}"


def test_layers_import_only_downwards():
    upward = []
    for module, targets in graph().items():
        mine = layer_of(module)
        for target in targets:
            theirs = layer_of(target)
            if mine == TOP:
                continue
            if (
                theirs == TOP
                and target != "cogvx_ext"
                or (theirs != TOP and LAYERS.index(theirs) > LAYERS.index(mine))
            ):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that run back up:\n" + "\n".join(sorted(upward))


def test_no_import_circles():
    edges = graph()
    circles = []

    def visit(node, path, on_path, done):
        on_path.add(node)
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt in on_path:
                circles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in done:
                visit(nxt, path, on_path, done)
        path.pop()
        on_path.discard(node)
        done.add(node)

    done: set[str] = set()
    for node in sorted(edges):
        if node not in done:
            visit(node, [], set(), done)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_builtin_plugins_import_only_the_public_api():
    back_doors = []
    for path in sorted(BUILTIN_PLUGINS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            back_doors += [
                f"{path.relative_to(BUILTIN_PLUGINS)}:{node.lineno}: {name}"
                for name in names
                if name.split(".")[0] == "cogvx_ext" and name != "cogvx_ext.api"
            ]
    assert not back_doors, "built-in plugins import past cogvx_ext.api:\n" + "\n".join(back_doors)


def test_every_public_name_resolves_and_the_package_gives_the_same():
    for name in cogvx_ext.api.__all__:
        assert getattr(cogvx_ext.api, name) is getattr(cogvx_ext, name), name
    assert set(dir(cogvx_ext)) == {"__version__", *cogvx_ext.api.__all__}
