"""One rich progress bar for every long loop of the tool (decoding, prediction, explanation)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any


def progress_bar(enabled: bool, description: str, total: int) -> tuple[Any, Callable[[int], None]]:
    """A transient rich progress bar (a context manager) and the function that advances it by n.

    Disabled, or with stderr not a terminal (a log file, a pipe: a bar would write carriage returns
    and block characters into it): a null context and a no-op, so callers need no branches.
    """
    from rich.console import Console

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        return contextlib.nullcontext(), lambda n: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   transient=True, console=console)
    task = bar.add_task(description, total=total)
    return bar, lambda n: bar.advance(task, n)
