"""Shared fixtures.

- Tiny models: every kind built once per session (about a second in all).
- Trainers: the T2V / I2V scripts the integration tests run. Our tiny ones by default; set
  COGVX_EXT_TRAINER / COGVX_EXT_I2V_TRAINER to the diffusers scripts to run the same tests
  against them (their interpreter then needs torchvision).
- ``train``: runs a trainer in fresh processes, offline, as a user would.

The tests test the cogvx-ext that is installed, never a checkout that happens to be on sys.path:
with a regular (wheel) install, the run stops at once when ``cogvx_ext`` would be imported from
anywhere else (``python -m pytest`` run in a clone puts the clone first; run ``pytest``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import cogvx_ext
import cogvx_ext_plugins
from cogvx_ext.testing import MODEL_KINDS, build_tiny_model
from cogvx_ext.trainers import minimal_trainer

TESTS = Path(__file__).parent
TINY_T2V_TRAINER = minimal_trainer("t2v")
TINY_I2V_TRAINER = minimal_trainer("i2v")


# ---------------------------------------------------------------------------------------------
# What is under test


def installed_cogvx_ext() -> tuple[str, str | None]:
    """``(how, problem)``: how cogvx-ext is installed ("wheel" or "editable"), and why the
    imported package is not the installed one (None when it is)."""
    try:
        dist = metadata.distribution("cogvx-ext")
    except metadata.PackageNotFoundError:
        return "none", "cogvx-ext is not installed: pip install . (see the README's set-up command)"
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    if direct_url.get("dir_info", {}).get("editable"):
        return "editable", None
    for module, relative in (
        (cogvx_ext, "cogvx_ext/__init__.py"),
        (cogvx_ext_plugins, "cogvx_ext_plugins/__init__.py"),
    ):
        installed = Path(dist.locate_file(relative)).resolve()
        imported = Path(module.__file__).resolve()
        if imported != installed:
            return "wheel", (
                f"the tests import {module.__name__} from {imported.parent}, not the installed wheel at "
                f"{installed.parent}: run `pytest` (`python -m pytest` puts the current folder first on sys.path)"
            )
    return "wheel", None


def pytest_report_header(config):
    how, _ = installed_cogvx_ext()
    return f"cogvx-ext {cogvx_ext.__version__} ({how} install) from {Path(cogvx_ext.__file__).parent}"


def pytest_configure(config):
    _, problem = installed_cogvx_ext()
    if problem:
        pytest.exit(f"cogvx-ext tests: {problem}", returncode=4)


# ---------------------------------------------------------------------------------------------
# Models


@pytest.fixture(scope="session", autouse=True)
def memory_trace_store(tmp_path_factory):
    """The memory estimate's trace store (cogvx_ext.model.memory.store) in a folder of the session's,
    not the user's cache; training processes get the same."""
    previous = os.environ.get("COGVX_EXT_MEMORY_CACHE")
    os.environ["COGVX_EXT_MEMORY_CACHE"] = str(tmp_path_factory.mktemp("memory") / "traces.json")
    yield
    if previous is None:
        os.environ.pop("COGVX_EXT_MEMORY_CACHE", None)
    else:
        os.environ["COGVX_EXT_MEMORY_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """``{kind: folder}`` for every kind in ``MODEL_KINDS``; treat the folders as read-only."""
    root = tmp_path_factory.mktemp("models")
    return {kind: build_tiny_model(root, kind) for kind in MODEL_KINDS}


# ---------------------------------------------------------------------------------------------
# Trainers


@pytest.fixture(scope="session")
def t2v_trainer() -> Path:
    return Path(os.environ.get("COGVX_EXT_TRAINER") or TINY_T2V_TRAINER)


@pytest.fixture(scope="session")
def i2v_trainer() -> Path:
    return Path(os.environ.get("COGVX_EXT_I2V_TRAINER") or TINY_I2V_TRAINER)


def _run_trainer(script, args, *, nproc=1, env=None, timeout=600) -> subprocess.CompletedProcess:
    # The caller's cogvx-ext settings (COGVX_EXT_PLUGINS, ...) must not leak into the run.
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    if "COGVX_EXT_MEMORY_CACHE" in os.environ:  # the session's trace store (memory_trace_store)
        full_env["COGVX_EXT_MEMORY_CACHE"] = os.environ["COGVX_EXT_MEMORY_CACHE"]
    full_env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    if nproc > 1:
        # torchrun's CPU ranks talk over gloo; --standalone picks a free port.
        full_env["ACCELERATE_USE_CPU"] = "1"
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
        ]
    else:
        launcher = [sys.executable]
    full_env.update(env or {})
    command = [*launcher, str(script), *map(str, args)]
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def train():
    """``train(script, args, nproc=1, env=None)`` -> ``CompletedProcess`` (stdout, stderr as text).

    Checks nothing: assert on ``returncode`` and the output yourself.
    """
    return _run_trainer
