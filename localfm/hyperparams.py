"""One mechanism for SageMaker-style hyperparameters.

SageMaker hands every hyperparameter to the container as a *string* (from
``hyperparameters.json``). Each algorithm declares a table of :class:`HP` rows
(name, type, default, allowed range, required) and :func:`parse` turns a mapping of
strings (or already-typed values) into a validated dict. Errors name the
hyperparameter and what was allowed, so ``num_factors=0`` fails the same way the
cloud would, before any work starts. They name hyperparameters, never command-line
flags: the CLI is one caller among several.
"""
from __future__ import annotations

import copy
import difflib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LocalFMError

# Our own namespace for settings SageMaker does not have: never sent by the cloud, so an
# unknown name in it is a typo, not a container internal to ignore.
LOCAL_PREFIX = "_local_"

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclass(frozen=True)
class HP:
    """One declared hyperparameter.

    kind: "int", "float", "bool" or "str". ``choices`` restricts str (or any) values;
    ``low``/``high`` bound numbers (inclusive unless ``low_open``/``high_open``).
    ``special`` lists extra literal strings accepted as-is (e.g. ``"auto"``).
    """

    name: str
    kind: str
    default: Any = None
    required: bool = False
    choices: Sequence[Any] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    special: Sequence[str] = field(default_factory=tuple)
    doc: str = ""

    def allowed(self) -> str:
        """Human description of the allowed values, used in error messages and docs."""
        parts: list[str] = []
        if self.choices is not None:
            parts.append("one of " + ", ".join(str(c) for c in self.choices))
        elif self.kind == "bool":
            parts.append("true or false")
        else:
            what = {"int": "an integer", "float": "a number", "str": "a string"}[self.kind]
            if self.low is not None or self.high is not None:
                lo = "(" if self.low_open else "["
                hi = ")" if self.high_open else "]"
                lo_v = "-inf" if self.low is None else _fmt(self.low)
                hi_v = "inf" if self.high is None else _fmt(self.high)
                what += f" in {lo}{lo_v}, {hi_v}{hi}"
            parts.append(what)
        if self.special:
            parts.append("or " + " / ".join(repr(s) for s in self.special))
        return " ".join(parts)

    def convert(self, raw: Any) -> Any:
        """Parse one raw value (string as SageMaker passes it, or a Python value)."""
        text = raw.strip() if isinstance(raw, str) else raw
        if isinstance(text, str) and text in self.special:
            return text
        try:
            value = self._coerce(text)
        except (TypeError, ValueError):
            raise LocalFMError(
                f"hyperparameter '{self.name}': expected {self.allowed()}, got {raw!r}"
            ) from None
        if self.choices is not None and value not in self.choices:
            raise LocalFMError(
                f"hyperparameter '{self.name}': expected {self.allowed()}, got {raw!r}"
            )
        if self.kind in ("int", "float"):
            bad = (
                (self.low is not None and (value < self.low or (self.low_open and value == self.low)))
                or (self.high is not None and (value > self.high or (self.high_open and value == self.high)))
            )
            if bad:
                raise LocalFMError(
                    f"hyperparameter '{self.name}': expected {self.allowed()}, got {raw!r}"
                )
        return value

    def _coerce(self, text: Any) -> Any:
        if self.kind == "bool":
            if isinstance(text, bool):
                return text
            low = str(text).lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(text)
        if self.kind == "int":
            if isinstance(text, bool):
                raise ValueError(text)
            if isinstance(text, float):
                if not text.is_integer():
                    raise ValueError(text)
                return int(text)
            return int(str(text), 10)
        if self.kind == "float":
            if isinstance(text, bool):
                raise ValueError(text)
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            return value
        if self.kind == "str":
            return str(text)
        raise AssertionError(f"unknown hyperparameter kind {self.kind!r}")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def parse(
    table: Iterable[HP],
    given: Mapping[str, Any],
    *,
    algorithm: str,
    ignore: Iterable[str] = (),
) -> dict[str, Any]:
    """Validate ``given`` against ``table``; return every declared name with its value.

    Unknown names are an error (SageMaker rejects them too), with the closest known
    name as a hint, except those in ``ignore`` and SageMaker's own underscore-prefixed
    internals (``_kvstore`` ...), which real ``hyperparameters.json`` files carry and
    which have no local meaning. ``_local_*`` is localfm's namespace, so an unknown
    name there is a typo and an error too.
    """
    rows = {hp.name: hp for hp in table}
    skip = set(ignore)
    out: dict[str, Any] = {}
    for name, raw in given.items():
        if name in skip or (name.startswith("_") and not name.startswith(LOCAL_PREFIX) and name not in rows):
            continue
        if name not in rows:
            raise LocalFMError(f"unknown {algorithm} hyperparameter '{name}'; {_suggest(name, rows)}")
        out[name] = rows[name].convert(raw)
    for name, hp in rows.items():
        if name in out:
            continue
        if hp.required:
            raise LocalFMError(
                f"missing required {algorithm} hyperparameter '{name}' (expected {hp.allowed()})"
            )
        out[name] = hp.default
    return out


def _suggest(name: str, known: Iterable[str]) -> str:
    """"did you mean X?" (the closest name) for a near miss, else the public names.

    Underscore names (container internals, ``_local_*`` extensions) are named only when
    the misspelling is close to one of them: listing all of them buries the 20 names
    people actually set.
    """
    public = sorted(n for n in known if not n.startswith("_"))
    private = sorted(n for n in known if n.startswith("_"))
    close = difflib.get_close_matches(name, public, n=1) or difflib.get_close_matches(name, private, n=1)
    if close:
        return f"did you mean {close[0]}?"
    hidden = f" (and {len(private)} underscore-prefixed local/internal ones)" if private else ""
    return f"known: {', '.join(public)}{hidden}"


def parse_assignments(pairs: Sequence[str]) -> dict[str, str]:
    """``["num_factors=64", ...]`` → ``{"num_factors": "64"}`` (how the CLI's repeated flag arrives)."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise LocalFMError(f"hyperparameter assignment {pair!r}: expected name=value")
        out[name.strip()] = value.strip()
    return out


def load_json(path: str | Path) -> dict[str, str]:
    """Read a SageMaker ``hyperparameters.json`` (all values strings, but numbers accepted)."""
    from .io.jsonfile import read_json

    data = read_json(path, what="hyperparameters file")
    if not isinstance(data, dict):
        raise LocalFMError(f"{path}: expected a JSON object of name -> value")
    return {str(k): v if isinstance(v, str) else json.dumps(v) if not isinstance(v, (int, float)) else str(v) for k, v in data.items()}


def collect(hp_file: str | Path | None, pairs: Sequence[str] | None) -> dict[str, str]:
    """Merge a hyperparameters file with ``name=value`` overrides (overrides win), like SageMaker's merge."""
    merged: dict[str, str] = {}
    if hp_file:
        merged.update(load_json(hp_file))
    merged.update(parse_assignments(pairs or []))
    return merged


def table_markdown(table: Iterable[HP]) -> str:
    """A Markdown table of the declared hyperparameters, for docs (kept in sync by a test)."""
    lines = ["| name | default | allowed | required | meaning |", "|---|---|---|---|---|"]
    for hp in table:
        default = "" if hp.default is None else str(hp.default).lower() if isinstance(hp.default, bool) else str(hp.default)
        lines.append(f"| `{hp.name}` | {default} | {hp.allowed()} | {'yes' if hp.required else ''} | {hp.doc} |")
    return "\n".join(lines)


def get_estimator_params(estimator: Any, keywords: Sequence[str]) -> dict[str, Any]:
    """scikit-learn's ``get_params`` for an estimator built as ``Cls(*, <keywords>, **hyperparameters)``.

    Both estimators (FM and k-NN) take their SageMaker hyperparameters as keyword
    arguments and keep them, as given, in ``estimator.hyperparameters``; so
    ``Cls(**get_estimator_params(est, ...))`` builds an equal, untrained estimator.
    """
    return {**{name: getattr(estimator, name) for name in keywords}, **copy.deepcopy(estimator.hyperparameters)}


def set_estimator_params(estimator: Any, keywords: Sequence[str], params: Mapping[str, Any]) -> None:
    """scikit-learn's ``set_params`` for the same estimators: nothing is checked until ``fit``."""
    for name, value in params.items():
        if name in keywords:
            setattr(estimator, name, value)
        else:
            estimator.hyperparameters[name] = value
