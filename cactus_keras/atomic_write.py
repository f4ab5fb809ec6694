"""Files written whole or not at all.

Everything the package saves for a user to resume from or to read (run steps, specs,
results, reports, exported models) goes through a temporary file in the same folder
and `os.replace`, so an interrupted run never leaves a truncated file that reads as
finished. What a rerun replaces is removed the same way, by name (`remove_outputs`).
"""

from __future__ import annotations

import json
import os
import shutil


def write_bytes(path, data):
    """Writes `data` (bytes) to `path` atomically, creating its folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def write_text(path, text):
    """Writes `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, value):
    """Writes `value` as indented JSON to `path` atomically."""
    return write_text(path, json.dumps(value, indent=2))


def remove_outputs(folder, names):
    """Removes the files and folders `names` of `folder` that exist (what an earlier run
    or export wrote there), leaving everything else in it.

    ```python
    remove_outputs("runs/cactus", ("model.keras", "backup"))
    ```
    """
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
