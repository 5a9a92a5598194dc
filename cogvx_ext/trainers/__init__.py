"""Minimal trainers shipped with cogvx-ext: stand-ins for the diffusers CogVideoX LoRA scripts.

They have the diffusers scripts' seams (``get_args()``, the module-level names ``main`` looks up,
the closures handed to ``DataLoader`` and the accelerator's state hooks, the order of work), so
``cogvx-ext demo`` runs offline and CI tests every plugin without a copy of the diffusers scripts,
which are not ours to ship. They are written from scratch, without torchvision.
"""

from __future__ import annotations

from pathlib import Path

_SCRIPTS = {"t2v": "tiny_t2v_trainer.py", "i2v": "tiny_i2v_trainer.py"}


def minimal_trainer(kind: str = "t2v") -> Path:
    """The path of the shipped minimal trainer for ``kind`` (``t2v`` or ``i2v``)."""
    return Path(__file__).with_name(_SCRIPTS[kind])
