"""The one error type for mistakes a user can cause (bad folder, bad image, bad run, bad option)."""


class HerlevError(Exception):
    """A user-facing error: the message says what was wrong and what to do about it.

    The CLI prints it on one line and exits with status 2; library callers catch it by type.
    """
