"""Run by cogvx_ext.pth at every interpreter start: must cost next to nothing when inactive.

Active only when the command line holds --plugins or COGVX_EXT_PLUGINS is set, and never when
COGVX_EXT_DISABLE is set. Then it arranges for the training script's own get_args() to load the
plugins; every other program (the accelerate and torchrun launchers included) is left alone.
"""

import os
import sys


def _wanted() -> bool:
    if os.environ.get("COGVX_EXT_DISABLE", "") not in ("", "0"):
        return False
    if os.environ.get("COGVX_EXT_PLUGINS"):
        return True
    return any(a == "--plugins" or a.startswith("--plugins=") for a in sys.argv[1:])


# Python runs site-packages .pth files twice in a virtual environment; the import is cached, and
# activate_from_startup() is idempotent.
if _wanted():
    from cogvx_ext.script.activation import activate_from_startup

    activate_from_startup()
