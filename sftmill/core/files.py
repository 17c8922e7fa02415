"""Files a run hands on are written whole or not at all, and the room there is for them."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable


def write_atomic(path: Path, chunks: Iterable[bytes]) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it
    (a failed write, a full disk say, leaves `path` as it was and removes
    its temporary file; one a killed process left is removed here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.partial"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or, before it
    exists, its nearest existing folder)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def space_problem(folder: Path, need: int, what: str) -> str | None:
    """None when `folder`'s disk has `need` bytes free; else one sentence
    naming the folder, the space and `what` needs it."""
    free = free_bytes(folder)
    if free >= need:
        return None
    return (f"disk space: {folder} has {free / 2**20:.1f} MB free; {what} could need "
            f"{need / 2**20:.1f} MB. Finished work is kept: free some space and run the same "
            "command again to go on")
