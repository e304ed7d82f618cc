"""Reading user-supplied JSON files with one kind of error.

Every JSON input (hyperparameters.json, features.json, request files, recorded
metrics) fails the same way: a one-line LocalFMError naming the file and what was
wrong, never a raw JSONDecodeError or FileNotFoundError.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import LocalFMError


def read_json(path: str | os.PathLike[str], *, what: str = "file", expect_object: bool = False) -> Any:
    """Parse ``path`` as UTF-8 JSON; ``expect_object`` also requires a top-level object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LocalFMError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise LocalFMError(f"{path}: expected a {what}, found a directory") from None
    except OSError as exc:  # permission denied, name too long, I/O error: still the user's file
        raise LocalFMError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LocalFMError(f"{path}: not valid JSON ({exc})") from None
    if expect_object and not isinstance(data, dict):
        raise LocalFMError(f"{path}: expected a JSON object")
    return data
