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
