"""The one error type for mistakes a user can cause (bad folder, bad image, bad run, bad option)."""


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
