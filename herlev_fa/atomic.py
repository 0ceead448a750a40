"""Atomic file writes: every file the tool writes appears whole or not at all.

Each writer goes to a temporary name in the target's folder, is flushed to disk, then renamed
over the target with `os.replace` (atomic on POSIX and Windows). A crash or interrupt leaves at
most a stray `.*.tmp` file, never a half-written result under the real name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from herlev_fa.errors import HerlevError


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it is renamed to `target`.

    Raises:
        HerlevError: the target's folder cannot be created or written.
    """
    target = Path(target)
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
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(target: str | Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json(target: str | Path, data: Any) -> Path:
    return write_text(target, json.dumps(data, indent=2, allow_nan=True) + "\n")

