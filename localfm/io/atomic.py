"""Write-then-rename, so a failed command never leaves a half-written output.

Every file localfm produces goes through :func:`atomic_write` (one file) or
:func:`atomic_outputs` (several files that must appear together or not at all):
the data is written to a temporary sibling and renamed into place only when the
whole block succeeded. On any exception the temporaries are removed and existing
files at the target paths are left untouched.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import LocalFMError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _tmp_sibling(path: Path) -> Path:
    if path.is_dir():  # the final rename would fail with IsADirectoryError after all the work
        raise LocalFMError(f"{path}: is a directory, expected a file path to write")
    # An output path the user named that cannot exist (a parent is a file, no permission,
    # read-only file system) is bad input: one LocalFMError naming it, exit 2, not a traceback.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except (NotADirectoryError, FileExistsError, PermissionError, IsADirectoryError) as exc:
        raise LocalFMError(f"{path}: cannot write here ({exc.strerror or exc})") from None
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.ENAMETOOLONG):
            raise
        raise LocalFMError(f"{path}: cannot write here ({exc.strerror or exc})") from None
    os.close(fd)
    # mkstemp creates 0600; outputs should get the permissions a plain open() would give.
    os.chmod(name, 0o666 & ~_UMASK)
    return Path(name)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    target = Path(path)
    tmp = _tmp_sibling(target)
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class OutputSet:
    """Temporary paths for a group of outputs; see :func:`atomic_outputs`."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def path(self, target: str | os.PathLike[str]) -> Path:
        """Return a temporary path to write instead of ``target``."""
        target = Path(target)
        tmp = _tmp_sibling(target)
        self._pending.append((tmp, target))
        return tmp

    def _commit(self) -> None:
        for done, (tmp, target) in enumerate(self._pending):
            try:
                os.replace(tmp, target)
            except BaseException:
                # e.g. a target that became a directory: the temporaries not yet renamed
                # would otherwise stay behind as hidden .tmp files.
                for rest, _ in self._pending[done:]:
                    rest.unlink(missing_ok=True)
                raise

    def _discard(self) -> None:
        for tmp, _ in self._pending:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_outputs() -> Iterator[OutputSet]:
    """Write several files that should land together: all renamed at the end, or none.

    >>> with atomic_outputs() as out:
    ...     np.save(out.path(d / "a.npy"), a)      # doctest: +SKIP
    ...     write_json(out.path(d / "b.json"), b)  # doctest: +SKIP
    """
    outs = OutputSet()
    try:
        yield outs
    except BaseException:
        outs._discard()
        raise
    outs._commit()
