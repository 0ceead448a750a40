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
