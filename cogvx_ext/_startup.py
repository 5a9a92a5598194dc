"""Run by cogvx_ext.pth at every interpreter start: must cost next to nothing when inactive.

Active only when the command line holds --plugins (or names a cogvx_ext module) or
COGVX_EXT_PLUGINS is set, and never when COGVX_EXT_DISABLE is set. In a training script it
arranges for the script's own get_args() to load the plugins. In the accelerate and torchrun
launchers it only arranges that a mistake the ranks stop on is shown once, last, with exit
status 2 (cogvx_ext.base.launchers); their own parsers are left alone.
"""

import os
import sys

# Module names after `python -m` that are launchers (accelerate's console scripts are named below).
_LAUNCHER_MODULES = ("torch.distributed.run", "torch.distributed.launch", "accelerate.commands.launch")


def _disabled() -> bool:
    return os.environ.get("COGVX_EXT_DISABLE", "") not in ("", "0")


def _wanted() -> bool:
    if os.environ.get("COGVX_EXT_PLUGINS"):
        return True
    return any(a == "--plugins" or a.startswith("--plugins=") for a in sys.argv[1:])


def _names_cogvx_module() -> bool:
    """`accelerate launch -m cogvx_ext ...` / `torchrun -m cogvx_ext.cli.cache ...`, plugins or not."""
    return any(a == "cogvx_ext" or a.startswith("cogvx_ext.") for a in sys.argv[1:])


def _launcher() -> bool:
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    if name in ("torchrun", "accelerate-launch"):
        return True
    if name == "accelerate":
        return sys.argv[1:2] == ["launch"]
    if name == "-m":  # sys.argv[0] names the module only once runpy has found it
        argv = getattr(sys, "orig_argv", [])
        return any(argv[i] == "-m" and argv[i + 1] in _LAUNCHER_MODULES for i in range(len(argv) - 1))
    return False


# Python runs site-packages .pth files twice in a virtual environment; the imports are cached, and
# both calls below are idempotent.
if not _disabled():
    if _wanted():
        if _launcher():
            from cogvx_ext.base.launchers import watch_children

            watch_children()
        else:
            from cogvx_ext.script.activation import activate_from_startup

            activate_from_startup()
    elif _names_cogvx_module() and _launcher():
        from cogvx_ext.base.launchers import watch_children

        watch_children()
