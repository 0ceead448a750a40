"""One rich progress bar for every long loop of the tool (decoding, prediction, explanation)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any


def progress_bar(enabled: bool, description: str, total: int) -> tuple[Any, Callable[[int], None]]:
    """A transient rich progress bar (a context manager) and the function that advances it by n.

    Disabled: a null context and a no-op, so callers need no branches.
    """
    if not enabled:
        return contextlib.nullcontext(), lambda n: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   transient=True)
    task = bar.add_task(description, total=total)
    return bar, lambda n: bar.advance(task, n)
