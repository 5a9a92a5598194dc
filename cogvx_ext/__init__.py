"""cogvx-ext: plugins for the diffusers CogVideoX LoRA training scripts.

This file stays cheap to import: the start-up hook (cogvx_ext.pth) imports the package in every
Python process. The public names are those of ``cogvx_ext.api`` (the API for plugin authors),
loaded on first use: ``from cogvx_ext import hookimpl`` is ``from cogvx_ext.api import hookimpl``.
"""

import importlib

from cogvx_ext._version import __version__ as __version__


def __getattr__(name):
    if name == "api":  # the submodule, imported on first use like the names
        return importlib.import_module("cogvx_ext.api")
    api = importlib.import_module("cogvx_ext.api")
    if name == "__all__":
        return ["__version__", *api.__all__]
    if name in api.__all__:
        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cogvx_ext' has no attribute {name!r}")


def __dir__():
    return sorted(["__version__", *importlib.import_module("cogvx_ext.api").__all__])
