"""Shared fixtures.

- Tiny models: every kind built once per session (about a second in all).
- Trainers: the T2V / I2V scripts the integration tests run. Our tiny ones by default; set
  COGVX_EXT_TRAINER / COGVX_EXT_I2V_TRAINER to the diffusers scripts to run the same tests
  against them (their interpreter then needs torchvision).
- ``train``: runs a trainer in fresh processes, offline, as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cogvx_ext.testing import MODEL_KINDS, build_tiny_model

TESTS = Path(__file__).parent
TINY_T2V_TRAINER = TESTS / "trainers" / "tiny_t2v_trainer.py"
TINY_I2V_TRAINER = TESTS / "trainers" / "tiny_i2v_trainer.py"


# ---------------------------------------------------------------------------------------------
# Models


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
