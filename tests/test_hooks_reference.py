"""hooks.md is generated (``python -m cogvx_ext.plugin.hookdoc``) and the committed page is what the
generator writes from the specs' docstrings, the template and the example plugins."""

from __future__ import annotations

import difflib
import inspect
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from cogvx_ext.plugin import hookdoc

ROOT = Path(__file__).resolve().parents[1]


def test_hooks_md_is_what_the_generator_writes():
    expected = hookdoc.render(ROOT)
    committed = (ROOT / hookdoc.OUTPUT).read_text(encoding="utf-8")
    if committed != expected:
        diff = difflib.unified_diff(
            committed.splitlines(),
            expected.splitlines(),
            "hooks.md (committed)",
            "hooks.md (generated)",
            lineterm="",
        )
        pytest.fail(
            f"hooks.md is out of date: run `{hookdoc.COMMAND}` in the checkout's root\n"
            + "\n".join(list(diff)[:60])
        )


@pytest.mark.parametrize("name", sorted(hookdoc.specs()))
def test_spec_docstring_follows_the_house_rules(name):
    assert hookdoc.docstring_problems(name, hookdoc.specs()[name]) == []


def test_every_spec_has_its_section_with_its_signature():
    text = (ROOT / hookdoc.OUTPUT).read_text(encoding="utf-8")
    headings = [line[4:] for line in text.splitlines() if line.startswith("### ")]
    expected = [hookdoc.signature_heading(name, spec) for name, spec in hookdoc.specs().items()]
    assert sorted(headings) == sorted(expected)


def builtin_hooks_by_inspection() -> dict[str, set[str]]:
    """``{hook: built-in plugin names}`` read off the plugin classes' marked methods, without pluggy."""
    out: dict[str, set[str]] = {}
    for entry_point in metadata.entry_points(group="cogvx_ext"):
        if not entry_point.value.startswith(hookdoc.BUILTIN_PACKAGE + "."):
            continue
        for _, member in inspect.getmembers(entry_point.load(), inspect.isfunction):
            options = getattr(member, "cogvx_ext_impl", None)
            if options is not None:
                out.setdefault(options.get("specname") or member.__name__, set()).add(entry_point.name)
    return out


def test_built_in_lists_name_the_installed_built_ins_that_implement_each_hook():
    generated = {
        name: {plugin for plugin, _ in impls} for name, impls in hookdoc.builtin_implementations().items()
    }
    assert {name: plugins for name, plugins in generated.items() if plugins} == builtin_hooks_by_inspection()
    text = hookdoc.render(ROOT)
    for name, plugins in generated.items():
        section = text.split(f"### {name}(", 1)[1].split("\n### ", 1)[0]
        line = section[section.index("- Built-ins:") :].split("\n\n", 1)[0]
        assert {p for p in builtin_hooks_by_inspection().get(name, ()) if f"`{p}`" in line} == plugins, name
        assert (line == "- Built-ins: none.") == (not plugins), name


def copy_sources(tmp_path: Path) -> Path:
    for part in (hookdoc.TEMPLATE, hookdoc.EXAMPLES, hookdoc.OUTPUT):
        source, target = ROOT / part, tmp_path / part
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    return tmp_path


@pytest.mark.parametrize(
    "change, problem",
    [
        (
            lambda root: edit(root / hookdoc.TEMPLATE, " cogvx_probe ", " "),
            "hook cogvx_probe must be in exactly one",
        ),
        (
            lambda root: edit(root / hookdoc.TEMPLATE, "cogvx_clips_skipped (", "(", count=2),
            "the timeline does not name cogvx_clips_skipped",
        ),
        (
            lambda root: (root / hookdoc.EXAMPLES / "cogvx_vae_loaded.py").unlink(),
            "no example implements cogvx_vae_loaded",
        ),
        (
            lambda root: edit(
                root / hookdoc.EXAMPLES / "cogvx_exception.py", "def cogvx_exception", "def cogvx_excepton"
            ),
            "implements unknown hook cogvx_excepton",
        ),
    ],
)
def test_the_generator_refuses_sources_that_leave_a_hook_out(tmp_path, change, problem):
    root = copy_sources(tmp_path)
    change(root)
    with pytest.raises(hookdoc.HookDocError, match=problem):
        hookdoc.render(root)


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == count
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_the_command_writes_and_checks(tmp_path):
    root = copy_sources(tmp_path)
    command = [sys.executable, "-m", "cogvx_ext.plugin.hookdoc"]
    assert subprocess.run([*command, "--check", str(root)], capture_output=True).returncode == 0
    edit(root / hookdoc.OUTPUT, "## Data", "## Data, edited by hand")
    stale = subprocess.run([*command, "--check", str(root)], capture_output=True, text=True)
    assert stale.returncode == 1
    assert stale.stderr == (
        f"hookdoc: {root / 'hooks.md'} is out of date: run `python -m cogvx_ext.plugin.hookdoc` "
        "in the checkout's root\n"
    )
    written = subprocess.run([*command, str(root)], capture_output=True, text=True)
    assert written.returncode == 0 and (root / "hooks.md").read_text() == (ROOT / "hooks.md").read_text()
