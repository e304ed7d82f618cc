"""A short run of the fuzz harness (the long >=100k-input runs are in docs/recordio.md).

Each available parser gets a few thousand mutated inputs; anything other than
LocalFMError, or a call past the time limit, fails the test with the saved input.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fuzz.mutate import (  # noqa: E402
    mutate_bytes,
    mutate_in_archive,
    mutate_inside_gzip,
    mutate_recordio_payload,
    mutate_zip_member,
)
from fuzz.runner import run_target  # noqa: E402
from fuzz.targets import BUILDERS, load_target  # noqa: E402

ITERATIONS = {"recordio": 1500, "ndarray": 3000, "artifacts": 1500}


@pytest.mark.slow  # 10-20 s per parser
@pytest.mark.parametrize("name", list(BUILDERS))
def test_fuzz_smoke(name, tmp_path):
    target, reason = load_target(name)
    assert target is not None, f"{name} parser not importable: {reason}"
    assert target.seeds, "every target needs seed inputs"
    stats = run_target(target, ITERATIONS[name], seed=12345, time_limit=10.0, findings_dir=tmp_path)
    assert stats.iterations == ITERATIONS[name]
    # The run must reach past the first checks: some inputs parse, and many distinct errors occur.
    assert stats.accepted > 0 and stats.rejected > 0 and stats.outcomes >= 10
    assert not stats.findings, "\n".join(
        f"{f.call}: {f.kind} at {f.where}: {f.message} (input saved to {f.path})" for f in stats.findings)


def test_mutations_are_deterministic_and_structure_aware():
    import random

    from localfm.io import recordio as rio

    seed = rio.frame_payload(b"\x0a\x10\x0a\x06values\x12\x06\x12\x04\x0a\x02\x00\x00") * 3
    a = [mutate_bytes(seed, random.Random(7), [seed]) for _ in range(5)]
    b = [mutate_bytes(seed, random.Random(7), [seed]) for _ in range(5)]
    assert a == b
    reframed = mutate_recordio_payload(seed, random.Random(3), [])
    assert reframed is not None and reframed[:4] == rio.MAGIC.to_bytes(4, "little")
    assert len(list(rio.iter_payloads(reframed))) == 3  # framing stays valid, payloads change
    import gzip

    plain = bytes(range(256)) * 2
    outs = [mutate_inside_gzip(gzip.compress(plain), random.Random(i), []) for i in range(5)]
    assert all(o is not None and o[:2] == b"\x1f\x8b" for o in outs)
    assert any(gzip.decompress(o) != plain for o in outs)


def test_archive_in_archive_mutations_keep_the_outer_layers_valid():
    """model.tar.gz -> model_algo-1 zip -> params/symbol.json: mutations reach the inner members."""
    import io
    import random
    import tarfile
    import zipfile
    import zlib

    import numpy as np

    from localfm.io import artifacts as art

    w = art.FMWeights(0.5, np.ones(3, np.float32), np.ones((3, 2), np.float32), "regressor")
    seed = art.fm_artifact_bytes(w, mtime=0)

    def inner_members(tgz: bytes) -> dict[str, bytes]:
        with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tf:
            ti = tf.next()
            assert ti is not None
            zdata = tf.extractfile(ti).read()  # the tar layer is intact: sizes right
        with zipfile.ZipFile(io.BytesIO(zdata)) as zf:
            return {n: zf.read(n) for n in zf.namelist()}  # the zip layer is intact: CRCs right

    original = inner_members(seed)
    outs = [mutate_in_archive(seed, random.Random(i), []) for i in range(40)]
    assert all(o is not None and o[:2] == b"\x1f\x8b" for o in outs)
    assert outs == [mutate_in_archive(seed, random.Random(i), []) for i in range(40)]  # deterministic
    changed = set()
    for o in outs:
        try:
            members = inner_members(o)
        except (zipfile.BadZipFile, KeyError, zlib.error, EOFError):
            continue  # the raw-zip branch: the zip itself was mutated
        changed |= {n for n in original if members.get(n) != original[n]}
    assert changed == {"params", "symbol.json"}
    zipped = mutate_zip_member(_zip_of(original), random.Random(1), [])
    assert zipped is not None and zipped[:2] == b"PK"


def _zip_of(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    return buf.getvalue()


def test_zip_mutator_skips_a_member_named_nothing():
    """A mutated archive can name a member "": the mutator must not crash on it (it did in CI)."""
    import io
    import zipfile

    from fuzz.mutate import _zip_members

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo(""), b"abc")
        zf.writestr(zipfile.ZipInfo("params"), b"p")
    assert _zip_members(buf.getvalue()) == [("params", b"p")]
