"""Finds the packages and installs cogvx_ext.pth next to them, in regular and in editable installs.

The .pth line is what lets the unmodified diffusers scripts accept --plugins after a plain
`pip install cogvx-ext`. Everything else about the build lives in pyproject.toml.
"""

import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "cogvx_ext.pth"

# Every package under cogvx_ext/ and plugins/ (installed as cogvx_ext_plugins, see pyproject.toml's
# package-dir), found rather than listed: a listed subpackage was once missing from the wheel.
PACKAGES = [
    "cogvx_ext",
    *(f"cogvx_ext.{name}" for name in find_packages("cogvx_ext")),
    "cogvx_ext_plugins",
    *(f"cogvx_ext_plugins.{name}" for name in find_packages("plugins")),
]


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        self.copy_file(PTH, os.path.join(self.build_lib, PTH))


class EditableWheelWithPth(editable_wheel):
    # setuptools' editable strategies only write their own .pth and finder; wrap the chosen
    # strategy so the editable wheel carries our start-up line too.
    def _select_strategy(self, *args, **kwargs):
        strategy = super()._select_strategy(*args, **kwargs)

        class WithPth:
            def __enter__(self):
                strategy.__enter__()
                return self

            def __exit__(self, *exc):
                return strategy.__exit__(*exc)

            def __call__(self, wheel, files, mapping):
                strategy(wheel, files, mapping)
                with open(PTH, "rb") as f:
                    wheel.writestr(PTH, f.read())

        return WithPth()


setup(packages=PACKAGES, cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
