"""Errors that are the user's to fix.

A :class:`UserError` carries one line that names the bad value and what is accepted. The CLI
prints it and exits with code 2; library callers catch it like any exception.
"""


class UserError(Exception):
    """A mistake in the user's input (a name, a value, a file). ``str(err)`` is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
