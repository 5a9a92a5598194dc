"""cogvx-ext: plugins for the diffusers CogVideoX LoRA training scripts.

This file stays cheap to import: the start-up hook (cogvx_ext.pth) imports the package in every
Python process, so the public names below are loaded on first use.
"""

from cogvx_ext._version import __version__

__all__ = [
    "__version__",
    "hookimpl",
    "hookspec",
    "load_trainer",
    "UsageError",
    "SkipClip",
    "Clip",
    "Target",
    "Sample",
    "VideoInfo",
    "Stage",
    "ModelInfo",
]

_WHERE = {
    "hookimpl": "cogvx_ext.plugin.hookspecs",
    "hookspec": "cogvx_ext.plugin.hookspecs",
    "load_trainer": "cogvx_ext.script.activation",
    "UsageError": "cogvx_ext.base.errors",
    "SkipClip": "cogvx_ext.base.errors",
    "Clip": "cogvx_ext.data.clips",
    "Target": "cogvx_ext.data.clips",
    "Sample": "cogvx_ext.data.clips",
    "VideoInfo": "cogvx_ext.data.clips",
    "Stage": "cogvx_ext.data.clips",
    "ModelInfo": "cogvx_ext.model.facts",
}


def __getattr__(name):
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cogvx_ext' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
