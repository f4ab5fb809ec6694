"""One writer per output folder: a lock file that holds the writer's process id.

A run folder (`train`), an experiment folder or a search directory (`tune`) written by
two processes at once ends with one run's network beside the other's config and log.
`folder_lock` makes the second writer fail at once instead. The lock is a file
(`.cactus-lock`) created atomically (`O_CREAT | O_EXCL`) holding the host and the
process id; a lock left by a process that no longer runs on this host (killed, the
machine restarted) does not block: it is taken over. Locks are re-entrant within one
process, so `train` can lock a folder that the command line already locked.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time

LOCK_FILE = ".cactus-lock"

# Folders this process holds, with how many nested holders each has.
_held = {}


class FolderLockedError(ValueError):
    """Another running process writes the folder."""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    except OSError:
        return False
    return True


def _read(path):
    try:
        with open(path) as f:
            owner = json.load(f)
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _blocks(owner):
    """Whether the lock's owner may still write: a live process, or one on another
    host (whose liveness this host cannot see)."""
    if owner is None:
        return False
    if owner.get("host") != socket.gethostname():
        return True
    return owner["pid"] != os.getpid() and _alive(owner["pid"])


def holder(folder):
    """The `{"pid", "host", "command"}` of the process that writes `folder`, or None
    when no running process holds it."""
    owner = _read(os.path.join(folder, LOCK_FILE))
    return owner if _blocks(owner) else None


@contextlib.contextmanager
def folder_lock(folder, what="output folder", hint="wait for it to finish, or choose another folder"):
    """Holds `folder` (created if missing) for this process while the block runs.

    Raises `FolderLockedError` naming the process that holds it, and `hint`.

    ```python
    with folder_lock("runs/fmnist", "--output"):
        train(config, data, "runs/fmnist")
    ```
    """
    key = os.path.realpath(folder)
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "command": " ".join(sys.argv)[:500]})
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read(path)
            if owner is None:
                # Being written by its creator this instant, or left empty by a crash:
                # an empty lock of a crash must not block forever.
                time.sleep(0.2)
                owner = _read(path)
            if _blocks(owner):
                host = "" if owner.get("host") == socket.gethostname() else f" on {owner.get('host')}"
                raise FolderLockedError(
                    f"{what} '{folder}' is being written by process {owner['pid']}{host} "
                    f"({owner.get('command') or 'another command'}); {hint}. (If no such "
                    f"process runs, delete {path}.)"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # a dead process's lock: taken over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(mine)
        break
    else:
        raise FolderLockedError(f"{what} '{folder}': could not take its lock {path}; {hint}.")
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        if (_read(path) or {}).get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
