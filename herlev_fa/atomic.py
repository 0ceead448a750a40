"""Atomic file writes: every file the tool writes appears whole or not at all.

Each writer goes to a temporary name in the target's folder, is flushed to disk, then renamed
over the target with `os.replace` (atomic on POSIX and Windows). A crash or interrupt leaves at
most a stray `.*.tmp` file, never a half-written result under the real name. The temporary file
is private while it is written; the finished file gets the mode the umask gives (0644 under
0o022, 0664 under a team's 0o002).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
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


OUT_OF_SPACE = {errno.ENOSPC: "no space left on its device", errno.EDQUOT: "the disk quota is exceeded",
                errno.EFBIG: "the file size limit (ulimit -f) is reached"}


def human_size(n: float) -> str:
    """Bytes as people read them: 512 B, 3.1 KB, 20.4 MB."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def _os_errno(error: BaseException) -> int | None:
    """The errno of a failed write: an OSError's, or the one a Rust writer (safetensors) names in its text."""
    if isinstance(error, OSError):
        return error.errno
    if type(error).__name__ == "SafetensorError":
        found = re.search(r"os error (\d+)", str(error))
        return int(found.group(1)) if found else None
    return None


def out_of_space(target: Path, error: BaseException, tmp: Path | None = None,
                 size: int | None = None) -> HerlevError | None:
    """The one-line error for a write that ran out of room (full disk, quota, file size limit), else None.

    It names the file, what stopped it and the space it needs: `size` when the caller knows it,
    else more than what was written when it stopped.
    """
    code = _os_errno(_cause(error))
    if code not in OUT_OF_SPACE:
        return None
    written = tmp.stat().st_size if tmp is not None and tmp.exists() else 0
    if tmp is not None:
        tmp.unlink(missing_ok=True)  # before measuring what is free
    need = f"it needs {human_size(size)}" if size else f"it needs more than the {human_size(written)} written"
    try:
        free = f", {human_size(shutil.disk_usage(target.parent).free)} free there"
    except OSError:
        free = ""
    return HerlevError(f"cannot write '{target}': {OUT_OF_SPACE[code]} ({need}{free}); free space, or choose "
                       "another output folder")


@contextlib.contextmanager
def atomic_path(target: str | Path, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it is renamed to `target`.

    `size`, the bytes the file will take when the caller knows it, only makes an out-of-space
    error more precise.

    Raises:
        HerlevError: the target's folder cannot be created or written, the target is a folder,
            or the disk (quota, file size limit) has no room for it; the temporary file is removed.
    """
    target = Path(target)
    check_output_folder(target.parent, "cannot write")
    if target.is_dir():
        raise HerlevError(f"cannot write '{target}': a folder of that name exists; name a file to write, not a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise HerlevError(f"cannot write '{target}': {e.strerror or e}; choose another output folder") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            # mkstemp makes the file private (0600); the finished file gets the mode the umask gives, as
            # open() would, so that a runs folder shared by a team is readable by it
            os.chmod(tmp_path, 0o666 & ~current_umask())
            os.replace(tmp_path, target)
        except Exception as e:  # a writer's own error type (matplotlib, pandas, safetensors) wraps the OSError
            full = out_of_space(target, e, tmp_path, size)
            if full is None:
                raise
            raise full from None
    finally:
        tmp_path.unlink(missing_ok=True)


def _cause(error: BaseException) -> BaseException:
    """The OSError under a writer's wrapping exception (its __cause__ or __context__ chain), else `error`."""
    seen = error
    for _ in range(5):
        if _os_errno(seen) is not None:
            return seen
        nxt = seen.__cause__ or seen.__context__
        if nxt is None:
            break
        seen = nxt
    return error


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


def json_text(data: Any) -> str:
    """Strict JSON on one line: NaN as `null`, and a file name that is not UTF-8 escaped as the CSV keeps it.

    Python reads such a name's bytes into lone surrogates (`surrogateescape`); they are written as
    `\\udcXX` escapes (ASCII output), which `json.loads` turns back into the same name, where a
    UTF-8 writer (pandas' `to_json`) would fail on them.
    """
    return json.dumps(finite_or_none(data), allow_nan=False, ensure_ascii=True, default=str)


def records_json(frame: Any) -> str:
    """A table (pandas DataFrame) as a JSON list of row objects, by `json_text`'s rules."""
    return json_text(frame.to_dict(orient="records"))


def write_json(target: str | Path, data: Any) -> Path:
    """Write strict JSON (a value that cannot be computed, NaN, is written as `null`)."""
    return write_text(target, json.dumps(finite_or_none(data), indent=2, allow_nan=False) + "\n")

