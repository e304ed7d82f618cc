"""One error type for bad input, and one warning type for input that works but surprises.

Everything a user can cause (a malformed file, an out-of-range hyperparameter, a
missing column) raises :class:`LocalFMError` with a one-line message naming the
file/field and what was expected. The CLI maps it to exit code 2; any other
exception is a bug in localfm and maps to exit code 1.

Library messages name Python parameters (``batch_size``), never command-line flags:
a Python caller has no ``--batch-size``. When an error is about one parameter, it
says so structurally with ``param=`` too, and the CLI rewrites that name into the
running subcommand's flag (``--batch-size``), so both audiences read their own
vocabulary without the library knowing the CLI exists.
"""
from __future__ import annotations

import re


class _ParamMessage:
    """One-line message plus the parameter it is about (shared by the error and the warning)."""

    param: str | None

    def _setup(self, param: str | None) -> None:
        self.param = param

    def renamed(self, name: str) -> str:
        """The message with its leading mention of :attr:`param` replaced by ``name``.

        Messages about a parameter start with it (``batch_size: expected ...``), so
        only a whole-word match at the start is replaced; a message that does not
        start with the parameter is returned unchanged (better the Python name than
        a mangled sentence).
        """
        text = str(self)
        if not self.param:
            return text
        return re.sub(rf"^{re.escape(self.param)}\b", lambda _: name, text, count=1)


def _one_line(message: object) -> str:
    # Keep messages to one line so they read well in logs and CI output.
    return " ".join(str(message).split())


class LocalFMError(_ParamMessage, Exception):
    """Bad input or usage. The message is shown to the user as-is, on one line.

    ``param``: the Python parameter the error is about (a keyword of the function the
    caller called), or None when it is about a file or a field inside one.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        Exception.__init__(self, _one_line(message))
        self._setup(param)


class LocalFMWarning(_ParamMessage, UserWarning):
    """Input that works but probably not as meant (e.g. ``k`` larger than the item count).

    Python callers see it through :mod:`warnings`; the CLI prints it as one line on
    stderr (``localfm COMMAND: warning: ...``), with ``param`` shown as the flag.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        UserWarning.__init__(self, _one_line(message))
        self._setup(param)
