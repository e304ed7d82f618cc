"""The ``localfm`` command.

Each subcommand lives in its own module in this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking
the parsed ``argparse.Namespace`` and returning an exit code or None). Modules are
discovered, so adding a command never touches this file, and a command that is not
built simply does not exist. Heavy libraries (torch, faiss) are imported inside the
handlers so ``localfm --help`` stays fast.

Exit codes: 0 ok, 2 bad input or usage (one line on stderr naming the file/field),
3 drift (``parity``), 1 internal error.

The library names Python parameters in its errors (``LocalFMError.param``); only this
package knows flags, so :func:`main` rewrites a parameter into the flag of the running
subcommand whose argparse ``dest`` it is (``batch_size`` -> ``--batch-size``), and
prints library warnings (:class:`~localfm.errors.LocalFMWarning`) as one stderr line.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings
from collections.abc import Sequence

from .. import __version__, progress
from ..errors import LocalFMError, LocalFMWarning

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_DRIFT = 3


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="localfm",
        description="Offline twin of SageMaker Factorization Machines + k-NN top-x recommendations.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--version", action="version", version=f"localfm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    _add_quiet_everywhere(sub)
    return parser


def _add_quiet_everywhere(sub: argparse._SubParsersAction) -> None:
    """Let ``--quiet`` also follow the (sub)command, where people tend to type it.

    argparse only parses a subcommand's own options after its name, so every parser in
    the tree gets a ``--quiet`` of its own (dest ``quiet_sub``, read by :func:`main`).
    """
    for parser in set(sub.choices.values()):
        if "--quiet" not in parser._option_string_actions:
            parser.add_argument("--quiet", dest="quiet_sub", action="store_true", help="no progress bars")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_quiet_everywhere(action)


def running_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost (sub)command parser that parsed ``args`` (``parity training``, not ``parity``)."""
    current = parser
    while True:
        sub = next((a for a in current._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, sub.dest, None) if sub is not None else None
        if sub is None or name not in sub.choices:
            return current
        current = sub.choices[name]


def flag_for(parser: argparse.ArgumentParser, param: str | None) -> str | None:
    """The option string a user types for the argparse ``dest`` ``param`` (longest ``--`` form), or None."""
    if not param:
        return None
    for action in parser._actions:
        if action.dest == param and action.option_strings:
            return max(action.option_strings, key=lambda o: (o.startswith("--"), len(o)))
    return None


def error_line(parser: argparse.ArgumentParser, args: argparse.Namespace, exc: LocalFMError) -> str:
    """``exc``'s message in the running subcommand's vocabulary: its parameter as the flag."""
    flag = flag_for(running_parser(parser, args), exc.param)
    return exc.renamed(flag) if flag else str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (the console script passes it to sys.exit)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet or getattr(args, "quiet_sub", False):
        progress.set_quiet(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", LocalFMWarning)  # once per place, even under -W ignore defaults
            warnings.showwarning = _warning_printer(parser, args)
            code = args.func(args)
    except LocalFMError as exc:
        print(f"localfm {_command_name(args)}: error: {error_line(parser, args, exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("localfm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    return EXIT_OK if code is None else int(code)


def _command_name(args: argparse.Namespace) -> str:
    """What error and warning lines call the command: a subcommand module may name itself
    more precisely with ``set_defaults(command_name="knn train")``."""
    return getattr(args, "command_name", None) or args.command


def _warning_printer(parser: argparse.ArgumentParser, args: argparse.Namespace):  # noqa: ANN202
    """``warnings.showwarning`` for a CLI run: library warnings as one line, flags for parameters."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        if not issubclass(category, LocalFMWarning):
            return default(message, category, filename, lineno, file, line)
        flag = flag_for(running_parser(parser, args), getattr(message, "param", None))
        text = message.renamed(flag) if flag and isinstance(message, LocalFMWarning) else " ".join(str(message).split())
        print(f"localfm {_command_name(args)}: warning: {text}", file=sys.stderr)
        return None

    return show


def run() -> None:
    sys.exit(main())
