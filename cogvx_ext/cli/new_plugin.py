"""``cogvx-ext new-plugin NAME``: a plugin package to start from.

It installs with ``pip install DIR``, its test passes with ``pytest DIR`` (a tiny random model
trained for two steps on the minimal trainer, offline, on the CPU), and ``--plugins NAME`` loads
it. The plugin imports only ``cogvx_ext.api`` (the public API); the test only ``cogvx_ext.testing``.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from cogvx_ext.base.errors import UsageError

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "A cogvx-ext plugin: {name}"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["cogvx-ext>={version}"]

[project.optional-dependencies]
test = ["pytest"]

# The entry point makes `--plugins {name}` find the plugin once the package is installed.
[project.entry-points.cogvx_ext]
{name} = "{module}:{cls}"

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

PLUGIN = '''\
"""{name}: a cogvx-ext plugin. Say here in one line what it does (`cogvx-ext plugins` shows it)."""

from cogvx_ext.api import hookimpl


class {cls}:
    """One instance per training run: keep what the run needs on it."""

    @hookimpl
    def cogvx_add_arguments(self, parser):
        group = parser.add_argument_group("{name}")
        group.add_argument("--{name}_note", default="", help="a note recorded with the saved LoRA")

    @hookimpl
    def cogvx_lora_metadata(self, args):
        # Recorded in cogvx_ext.json next to the LoRA weights, at every save.
        return {{"{name}_note": args.{name}_note}}
'''

TEST = '''\
"""Trains a tiny random CogVideoX for two steps with the plugin on cogvx-ext's minimal trainer:
offline, on the CPU, in seconds. The plugin is loaded by its entry point, as users load it: install
the package first (pip install .)."""

import json

from cogvx_ext.testing import build_tiny_model, run_minimal_trainer, tiny_training_args, write_dataset


def test_the_note_is_recorded_with_the_lora(tmp_path):
    model = build_tiny_model(tmp_path / "models", "2b")
    data = write_dataset(tmp_path / "data", [(256, 144, 9)], prompts=["a bright square"])
    out = tmp_path / "out"
    args = tiny_training_args(model, data, out)
    result = run_minimal_trainer([*args, "--plugins", "{name}", "--{name}_note", "first try"])
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "cogvx_ext.json").read_text())
    assert record["plugins"] == ["{name}"]
    assert record["settings"]["{name}_note"] == "first try"
'''

README = """\
# {dist}

A [cogvx-ext](https://pypi.org/project/cogvx-ext/) plugin for the diffusers CogVideoX LoRA
training scripts. It adds `--{name}_note` and records the note with the saved LoRA
(`cogvx_ext.json`); make it yours (the hooks: cogvx-ext's hooks.md).

```bash
pip install .                        # or pip install -e . while you work on it
pytest                               # trains a tiny model with it on the CPU, offline
cogvx-ext plugins --check {name}     # its hooks and flags, and any defect
accelerate launch train_cogvideox_lora.py ... --plugins {name} --{name}_note "first try"
```
"""


def write_plugin_package(name: str, directory: str | None = None) -> Path:
    """Write the package for plugin ``name`` into ``directory`` (default ``./cogvx-ext-NAME``)."""
    from cogvx_ext import __version__
    from cogvx_ext.plugin.manager import installed_plugins

    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise UsageError(
            f"plugin name '{name}': use lower-case letters, digits and underscores, starting with a letter "
            "(e.g. shape_logger)"
        )
    if name in installed_plugins():
        raise UsageError(
            f"plugin name '{name}': an installed plugin has it already (cogvx-ext plugins): choose another"
        )
    dist = f"cogvx-ext-{name.replace('_', '-')}"
    folder = Path(directory or dist)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"{folder} exists and is not an empty folder: choose another --dir")
    fields = {
        "name": name,
        "dist": dist,
        "module": f"cogvx_ext_{name}",
        "cls": "".join(part.capitalize() for part in name.split("_") if part),
        "version": ".".join(__version__.split(".")[:2]),
    }
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"src/{fields['module']}/__init__.py": PLUGIN,
        f"tests/test_{name}.py": TEST,
    }
    try:
        for relative, template in files.items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(template.format(**fields), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {folder}: {exc.strerror or exc}: choose another --dir") from None
    return folder
