"""Progress of every long loop of the tool (decoding, prediction, explanation): a bar on a terminal, lines in a log.

On a terminal (stderr), a transient rich bar whose time estimate starts with the first update
(rich's default needs two updates within 30 s, which a 40 s batch never gives). When stdout is
not a terminal (`herlev quantify ... > quantify.log`), plain lines instead, as fastai and timm
print them: `quantifying: 32/184 (17%), 0:01:20 elapsed, about 0:06:20 left`, at most one
every `PLAIN_EVERY` seconds, none for a loop that ends sooner.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

PLAIN_EVERY = 10.0  # seconds between two plain progress lines


def duration(seconds: float) -> str:
    """Seconds as h:mm:ss, e.g. 3725 -> '1:02:05'."""
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_line(description: str, done: int, total: int, elapsed: float) -> str:
    """'quantifying: 32/184 (17%), 0:01:20 elapsed, about 0:06:20 left' (the rate so far, from the first step on)."""
    line = f"{description}: {done}/{total} ({done / max(total, 1):.0%}), {duration(elapsed)} elapsed"
    if 0 < done < total:
        line += f", about {duration(elapsed / done * (total - done))} left"
    return line


class PlainProgress:
    """Plain progress lines for a log: one when `every` seconds have passed since the last, and a last one at the end
    if any was written. A context manager; `advance(n)` counts n more items done."""

    def __init__(self, description: str, total: int, every: float = PLAIN_EVERY, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.description, self.total, self.every, self.clock = description, total, every, clock
        self.stream = stream
        self.done, self.started, self.written = 0, clock(), 0
        self.last = self.started

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()

    def close(self) -> None:
        """The last line, where the loop ended (before `total` when it stopped early), if any line was written."""
        if self.written and self.done < self.total:
            self._write()

    def advance(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.every or (self.written and self.done >= self.total):
            self._write(now)

    def _write(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        print(progress_line(self.description, self.done, self.total, now - self.started),
              file=self.stream or sys.stdout, flush=True)
        self.last, self.written = now, self.written + 1


def in_notebook() -> bool:
    """This process is a Jupyter kernel (ipykernel imported by a test or a tool is not enough)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def logging_to_file() -> bool:
    """stdout is a log (a file or a pipe), not a terminal nor a notebook (which shows its own bars)."""
    return not sys.stdout.isatty() and not in_notebook()


def rich_bar(console: Any, description: str, total: int,
             get_time: Callable[[], float] | None = None) -> tuple[Any, Any]:
    """A transient rich `Progress` on `console` and its task, whose time estimate is the rate since the start.

    rich's default estimates from the last 30 s, so a loop whose steps take longer shows no
    estimate at all; here a sample at the start makes it known from the first advance on.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   transient=True, console=console, speed_estimate_period=7 * 24 * 3600.0,
                   **({"get_time": get_time} if get_time else {}))
    task = bar.add_task(description, total=total)
    bar.advance(task, 0)
    return bar, task


def progress_bar(enabled: bool, description: str, total: int) -> tuple[Any, Callable[[int], None]]:
    """A progress display (a context manager) and the function that advances it by n.

    Enabled: a transient rich bar when stderr is a terminal, and plain lines when stdout is a log
    (`logging_to_file`); both when only stdout is redirected. Disabled: a null context and a
    no-op, so callers need no branches.
    """
    from rich.console import Console

    if not enabled:
        return contextlib.nullcontext(), lambda n: None
    stack, advances = contextlib.ExitStack(), []
    if logging_to_file():
        plain = stack.enter_context(PlainProgress(description, total))
        advances.append(plain.advance)
    console = Console(stderr=True)
    if console.is_terminal:
        bar, task = rich_bar(console, description, total)
        stack.enter_context(bar)
        advances.append(lambda n: bar.advance(task, n))
    if not advances:
        return contextlib.nullcontext(), lambda n: None

    def advance(n: int) -> None:
        for step in advances:
            step(n)

    return stack, advance
