"""Every hook spec has its section in hooks.md, and every hook is exercised by some test."""

import inspect
import re
from pathlib import Path

import pytest

from cogvx_ext.plugin import hookspecs

ROOT = Path(__file__).resolve().parents[1]
SPECS = {
    name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("cogvx_")
}


def signature_heading(name: str) -> str:
    return f"{name}({', '.join(inspect.signature(SPECS[name]).parameters)})"


def test_specs_follow_the_house_rules():
    assert len(SPECS) >= 20
    for name, fn in SPECS.items():
        assert hasattr(fn, "cogvx_ext_spec"), f"{name} is not decorated with @hookspec"
        assert fn.__doc__ and fn.__doc__.strip(), f"{name} has no docstring"
        firstresult = fn.cogvx_ext_spec.get("firstresult")
        doc = " ".join(fn.__doc__.split())
        assert ("Stops at first non-None result." in doc) == bool(firstresult), name


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_is_documented_with_its_signature(name):
    headings = re.findall(r"^#+ (.+)$", (ROOT / "hooks.md").read_text(), flags=re.M)
    assert signature_heading(name) in headings, f"hooks.md needs a heading '### {signature_heading(name)}'"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_is_exercised_by_a_test(name):
    tests = [p for p in (ROOT / "tests").rglob("test_*.py") if p.name != Path(__file__).name]
    assert any(name in p.read_text() for p in tests), f"no test mentions {name}"
