import pytest

from localfm.io.atomic import atomic_outputs, atomic_write


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]
    with atomic_write(target) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new"


def test_atomic_outputs_land_together_or_not_at_all(tmp_path):
    a, b = tmp_path / "sub" / "a.txt", tmp_path / "sub" / "b.txt"
    with pytest.raises(ValueError):
        with atomic_outputs() as out:
            out.path(a).write_text("a")
            raise ValueError("second file failed")
    assert not a.exists() and list((tmp_path / "sub").iterdir()) == []
    with atomic_outputs() as out:
        out.path(a).write_text("a")
        out.path(b).write_text("b")
    assert a.read_text() == "a" and b.read_text() == "b"


def test_atomic_outputs_commit_failure_leaves_no_temporaries(tmp_path, monkeypatch):
    # A rename that fails at commit time (e.g. EXDEV, a disk error) used to leave that
    # file's and every later file's temporary behind as hidden .tmp files.
    import os

    import localfm.io.atomic as atomic

    a, b, c = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    real = os.replace
    calls = []

    def flaky(src, dst):  # noqa: ANN001
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("rename failed")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", flaky)
    with pytest.raises(OSError, match="rename failed"):
        with atomic_outputs() as out:
            out.path(a).write_text("a")
            out.path(b).write_text("b")
            out.path(c).write_text("c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_directory_as_output_file_is_bad_input(tmp_path):
    # The final os.replace raised IsADirectoryError (exit 1) after all the work was done.
    from localfm.errors import LocalFMError

    (tmp_path / "out").mkdir()
    with pytest.raises(LocalFMError, match="is a directory"):
        with atomic_write(tmp_path / "out") as fh:
            fh.write(b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_output_under_a_file_is_bad_input(tmp_path):
    # mkdir of the parent raised NotADirectoryError (exit 1) for e.g. --out afile/model.tar.gz.
    from localfm.errors import LocalFMError

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(LocalFMError, match="cannot write here"):
        with atomic_write(blocker / "sub" / "out.bin") as fh:
            fh.write(b"data")
    with pytest.raises(LocalFMError, match="cannot write here"):
        with atomic_outputs() as out:
            out.path(blocker / "a.txt")
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
