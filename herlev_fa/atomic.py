"""Atomic file writes: every file the tool writes appears whole or not at all.

Each writer goes to a temporary name in the target's folder, is flushed to disk, then renamed
over the target with `os.replace` (atomic on POSIX and Windows). A crash or interrupt leaves at
most a stray `.*.tmp` file, never a half-written result under the real name. The temporary file
is private while it is written; the finished file gets the mode the umask gives (0644 under
0o022, 0664 under a team's 0o002).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from herlev_fa.errors import HerlevError


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_folder(path: str | Path, what: str = "output folder") -> None:
    """Raises HerlevError when `path` or one of its parents is a file (checked before any work is done)."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise HerlevError(f"{what} '{path}': '{p}' is a file, not a folder; choose another output folder")
            return


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it is renamed to `target`.

    Raises:
        HerlevError: the target's folder cannot be created or written.
    """
    target = Path(target)
    check_output_folder(target.parent, "cannot write")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise HerlevError(f"cannot write '{target}': {e.strerror or e}; choose another output folder") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); the finished file gets the mode the umask gives, as
        # open() would, so that a runs folder shared by a team is readable by it
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(target: str | Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def finite_or_none(data: Any) -> Any:
    """`data` with every NaN or infinite float replaced by None, so that it is strict JSON (`null`)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_or_none(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_none(v) for v in data]
    return data


def write_json(target: str | Path, data: Any) -> Path:
    """Write strict JSON (a value that cannot be computed, NaN, is written as `null`)."""
    return write_text(target, json.dumps(finite_or_none(data), indent=2, allow_nan=False) + "\n")

