"""The one error type for mistakes a user can cause (bad folder, bad image, bad run, bad option)."""

from __future__ import annotations

import re
from typing import Any


class HerlevError(Exception):
    """A user-facing error: the message says what was wrong and what to do about it.

    The CLI prints it on one line and exits with status 2; library callers catch it by type.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        # the message as raised: fastai rewrites the args of an exception raised in a callback
        # ("Exception occured in `X` when calling event ...:\n\t..."), which would break the one line
        return self.message

    @property
    def cli(self) -> str:
        """The message in the command line's words (the same, unless it names settings: `SettingError`)."""
        return self.message


class SettingError(HerlevError):
    """A setting out of range, or not among its choices.

    The message names each setting as a Python caller passes it; `cli` names the command-line
    option instead. `template` puts setting names in braces and the offending value at `{value}`:
    "{epochs} {value} is out of range: use 1..10000" reads "epochs 0 is out of range: use
    1..10000" from the library and "--epochs 0 is out of range: use 1..10000" from the CLI.
    `options`: a setting whose option is not `--` + its name with dashes (`n_boot`: `--bootstrap`).
    """

    def __init__(self, template: str, value: Any = None, options: dict[str, str] | None = None) -> None:
        self.template, self.options = template, dict(options or {})
        self.value = "" if value is None else str(value) if isinstance(value, (int, float)) else f"'{value}'"
        super().__init__(self._render(lambda name: name))

    @property
    def cli(self) -> str:
        return self._render(lambda name: self.options.get(name, "--" + name.replace("_", "-")))

    def _render(self, named) -> str:
        # a substitution, not str.format: a message may quote user input holding braces
        return re.sub(r"{(\w+)}", lambda m: self.value if m.group(1) == "value" else named(m.group(1)), self.template)


def missing(path, what: str) -> str:
    """The message for a path that cannot be found: a dangling or looping symbolic link is said to be one.

    `what` names the kind of path ("image", "run folder"); the result reads "image 'x' does not
    exist" or "image 'x' is a symbolic link that leads nowhere (a loop, or its target is missing)".
    """
    import errno
    import os

    prefix = f"{what} '{path}'" if what else f"'{path}'"
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{prefix} is a symbolic link loop (a link that leads back to itself); fix or remove the link"
        if os.path.islink(path):
            return f"{prefix} is a symbolic link whose target '{os.readlink(path)}' does not exist"
    return f"{prefix} does not exist"
