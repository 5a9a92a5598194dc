"""Files on disk: atomic writes, modes that honour the umask, folders checked before a long run.

Atomic writes: a reader never sees half a file, a crash leaves the old one or none. The temporary
file ``tempfile.mkstemp`` makes is private (0600); it is given the mode ``open()`` would have given
the file (0666 less the umask) before it takes the final name, so a shared latent cache or a LoRA
folder stays readable by whoever the umask lets read it. :func:`give_umask_modes` does the same
for files other libraries saved that way.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process's umask, read without changing it where the system tells (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def umask_mode() -> int:
    """The mode ``open()`` gives a new file under the process's umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def folder_write_problem(path: str | os.PathLike) -> str | None:
    """Why no file can be written in folder ``path``, as words that follow its name ("is a file,
    not a folder"), or ``None`` when one can.

    Tried with a real file, created and removed at once: permission bits do not tell (root writes
    where they forbid it; an immutable folder, a read-only mount or a full quota stop root too).
    A folder that does not exist yet is judged by the nearest one above it that does, where the
    run will create it; nothing is created here.
    """
    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return "is a file, not a folder" if existing == path else f"cannot be created: {existing} is a file"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".cogvx-ext-write-test.", dir=existing)
    except OSError as exc:
        failed = f"({exc.strerror or exc})"
        if existing == path:
            return f"is not writable: creating a file there fails {failed}"
        return f"cannot be created: creating a file in {existing} fails {failed}"
    os.close(fd)
    os.unlink(tmp)
    return None


def files_under(directory: str | os.PathLike, recursive: bool = True) -> dict[str, tuple[int, int, int]]:
    """``{path: (inode, mtime_ns, size)}`` of the regular files under ``directory``: what
    :func:`give_umask_modes` compares to find the files a save wrote."""
    found: dict[str, tuple[int, int, int]] = {}
    if not os.path.isdir(directory):
        return found
    walk = os.walk(directory) if recursive else [(directory, [], os.listdir(directory))]
    for folder, _, names in walk:
        for name in names:
            path = os.path.join(folder, name)
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:  # removed meanwhile (another rank's temporary file)
                continue
            if stat.S_ISREG(st.st_mode):
                found[path] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return found


def give_umask_modes(
    directory: str | os.PathLike, before: dict[str, tuple[int, int, int]], recursive: bool = True
) -> list[str]:
    """Give every file written under ``directory`` since ``before`` (a :func:`files_under`) the mode
    ``open()`` would have given it; returns the paths changed.

    Libraries that save through a private temporary file leave their files 0600 whatever the
    umask (safetensors 0.8: every ``.safetensors`` file), so a LoRA or checkpoint saved for a team
    would be readable by its writer alone.
    """
    wanted = umask_mode()
    changed = []
    for path, identity in files_under(directory, recursive).items():
        if before.get(path) == identity:
            continue
        try:
            if stat.S_IMODE(os.stat(path).st_mode) != wanted:
                os.chmod(path, wanted)
                changed.append(path)
        except OSError:  # gone meanwhile, or another user's file: not ours to change
            continue
    return changed
