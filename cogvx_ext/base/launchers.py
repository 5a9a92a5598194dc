"""Under ``accelerate launch`` and ``torchrun``: a user's mistake is one line, shown once and last,
and the launcher exits 2.

Each rank finds the mistake and stops with status 2; the launcher then reports a failed child
its own way (accelerate: a ``CalledProcessError`` traceback and status 1; torchrun: a
``ChildFailedError`` block), after every rank has printed the line. So the start-up hook, which
runs in the launcher too, calls :func:`watch_children` there: the launcher's children (they
inherit its environment) hand their line to it instead of printing it (:func:`hand_to_launcher`),
and when the launcher ends with lines handed over, it prints each distinct line once, after
everything else, without its own report of the failure, and exits 2. A child that was not started
by this launcher (a process a rank starts itself) prints its line as usual.
"""

from __future__ import annotations

import os
import sys

ENV_LAUNCHER = "COGVX_EXT_LAUNCHER"  # "<launcher pid>:<folder the ranks write their lines to>"
_SUFFIX = ".line"


def watch_children() -> None:
    """In the launcher: collect the children's lines, and end with them (status 2) if any came."""
    import atexit
    import tempfile

    if os.environ.get(ENV_LAUNCHER, "").partition(":")[0] == str(os.getpid()):
        return  # watching already
    folder = tempfile.mkdtemp(prefix="cogvx-ext-launch-")
    os.environ[ENV_LAUNCHER] = f"{os.getpid()}:{folder}"
    previous = sys.excepthook

    def excepthook(exc_type, exc, traceback):
        # A child stopped on a mistake: its line says what to do; the launcher's traceback of the
        # failed child says nothing more.
        if not _lines(folder):
            previous(exc_type, exc, traceback)

    sys.excepthook = excepthook
    # Registered before the launcher imports anything, so it runs after every other exit handler.
    atexit.register(_finish, folder)


def _finish(folder: str) -> None:
    lines = _lines(folder)
    _remove(folder)
    if not lines:
        return
    sys.stdout.flush()
    sys.stderr.write("".join(f"{line}\n" for line in lines))
    sys.stderr.flush()
    os._exit(2)


def _lines(folder: str) -> list[str]:
    """The distinct lines the children handed over, in rank order."""
    try:
        names = [n for n in os.listdir(folder) if n.endswith(_SUFFIX)]
    except OSError:
        return []
    lines: list[str] = []
    for name in sorted(names, key=_rank_order):
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                line = f.read().strip()
        except OSError:
            continue
        if line and line not in lines:
            lines.append(line)
    return lines


def _rank_order(name: str) -> tuple[int, str]:
    rank = name.split("-", 1)[0]
    return (int(rank) if rank.isdigit() else -1, name)


def _remove(folder: str) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def hand_to_launcher(line: str) -> bool:
    """In a rank: give ``line`` to the launcher that started this process, to print once at the
    end; ``False`` (print it yourself) when no watching launcher started this process."""
    value = os.environ.get(ENV_LAUNCHER, "")
    pid, _, folder = value.partition(":")
    if not (pid.isdigit() and int(pid) == os.getppid() and os.path.isdir(folder)):
        return False
    rank = os.environ.get("RANK", "0")
    path = os.path.join(folder, f"{rank if rank.isdigit() else 0}-{os.getpid()}{_SUFFIX}")
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(line + "\n")
        os.replace(path + ".tmp", path)  # the launcher never reads half a line
    except OSError:
        return False
    return True
