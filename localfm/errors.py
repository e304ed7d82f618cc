"""One error type for bad input.

Everything a user can cause (a malformed file, an out-of-range hyperparameter, a
missing column) raises :class:`LocalFMError` with a one-line message naming the
file/field and what was expected. The CLI maps it to exit code 2; any other
exception is a bug in localfm and maps to exit code 1.
"""
from __future__ import annotations


class LocalFMError(Exception):
    """Bad input or usage. The message is shown to the user as-is, on one line."""

    def __init__(self, message: str) -> None:
        # Keep messages to one line so they read well in logs and CI output.
        super().__init__(" ".join(str(message).split()))
