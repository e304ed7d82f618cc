"""What gets fuzzed: each binary parser, its entry points, its seed inputs and its invariants.

A target whose module does not import (another engineer's parser not written yet)
is reported as skipped with the import error, never silently dropped.
"""
from __future__ import annotations

import importlib
import io
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .hostile import tar_gz, tar_gz_claiming_zeros, zip_of_zeros
from .mutate import mutate_in_archive, mutate_inside_gzip, mutate_recordio_payload, mutate_zip_member

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOCALFM_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "sagemaker"


@dataclass
class Target:
    """One parser: named entry points fed the same bytes, seeds, and structure-aware mutators."""

    name: str
    calls: list[tuple[str, Callable[[bytes], Any]]]
    seeds: list[bytes]
    mutators: list[Callable[..., bytes | None]] = field(default_factory=list)


def _fixture(name: str) -> bytes | None:
    path = FIXTURES / name
    return path.read_bytes() if path.is_file() else None


def _tar_members(data: bytes) -> list[bytes]:
    """Member bytes of a trusted fixture tarball, read in memory (never extracted to disk)."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        for m in tf.getmembers():
            if m.isfile() and m.size < (1 << 20):
                fh = tf.extractfile(m)
                if fh is not None:
                    out.append(fh.read())
    return out


def _gunzip(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data)


# ----------------------------------------------------------------------------- recordio

def _recordio_target() -> Target:
    from localfm.io import recordio as rio
    from localfm.io._protobuf import BytesValue, Record, Tensor

    fields = ("offsets", "feat_code", "nval", "values", "nkey", "keys", "nshape", "shape", "label_code", "nlab",
              "labels")

    def read_matrix(data: bytes) -> None:
        # Differential check first: the vectorised decoder must agree with the exact one
        # on every block (read_matrix itself skips the fast path for tiny blocks).
        for fr in rio._iter_frames(data):
            exact = rio._exact_columns(fr, "<bytes>")
            fast = rio._fast_then_exact(fr, "<bytes>")
            for f in fields:
                if not np.array_equal(getattr(fast, f), getattr(exact, f), equal_nan=True):
                    raise AssertionError(f"fast and exact decoders disagree on {f}")
        rio.read_matrix(data)

    def iter_records(data: bytes) -> None:
        for r in rio.iter_records(data):
            again = rio.decode_record(rio.encode_record(r))
            if again != r:
                raise AssertionError("decode(encode(record)) != record")

    def iter_batches(data: bytes) -> None:
        for _ in rio.iter_batches(io.BytesIO(data), 3):
            pass

    rng = np.random.default_rng(0)
    import scipy.sparse as sp

    seeds: list[bytes] = []

    def dump(fn: Callable[..., Any], *args: Any) -> None:
        buf = io.BytesIO()
        fn(buf, *args)
        seeds.append(buf.getvalue())

    X = sp.random(6, 300, density=0.02, random_state=1, format="csr", dtype=np.float32)
    dump(rio.write_sparse, X, np.arange(6, dtype=np.float32))
    dump(rio.write_sparse, X.astype(np.float64), np.arange(6, dtype=np.int64))
    dump(rio.write_sparse, (X * 10).astype(np.int64))
    dump(rio.write_dense, rng.normal(size=(4, 5)).astype(np.float32), np.ones(4, np.float32))
    dump(rio.write_dense, rng.integers(-9, 9, (3, 3)))
    magic_f32 = np.frombuffer(rio.MAGIC.to_bytes(4, "little"), np.float32)[0]
    recs = [
        Record({"values": Tensor("float32", [magic_f32] * 4, [0, 4, 8, 12], [16])},
               {"values": Tensor("float32", [1])}, uid="u1", metadata="{}", configuration="c"),
        Record({"values": BytesValue([b"\x89PNG", b""], "image/png"), "other": None}, {}),
        Record({"values": Tensor("int32", [-1, 5], [], [2])}, {"values": Tensor("float64", [0.5])}),
        Record({"values": Tensor("float64", [1e300, -0.0], [2**64 - 1, 0], [2**63 + 1])}),
    ]
    buf = io.BytesIO()
    rio.write_records(buf, recs, split=True)
    seeds.append(buf.getvalue())
    seeds.append(b"")
    ufo = _fixture("ufo-train.recordio-protobuf")
    if ufo is not None:
        # The first records only: the whole 1.9 MB file would make each iteration slow.
        frames = list(rio._iter_frames(ufo))[0]
        for k in (1, 3, 12):
            end = int(frames.offsets[k]) if k < len(frames) else len(ufo)
            seeds.append(ufo[:end])
    calls = [("read_matrix", read_matrix), ("iter_records", iter_records), ("describe", rio.describe),
             ("iter_batches", iter_batches)]
    return Target("recordio", calls, seeds, [mutate_recordio_payload])


# ----------------------------------------------------------------------------- ndarray

def _ndarray_target() -> Target:
    nd = importlib.import_module("localfm.io.ndarray")
    import scipy.sparse as sp

    seeds: list[bytes] = []
    for name in ("pca-model.tar.gz", "kmeans-model.tar.gz"):
        data = _fixture(name)
        if data is not None:
            seeds.extend(m for m in _tar_members(data) if nd.looks_like_ndarray_list(m[:8]))
    rng = np.random.default_rng(0)
    candidates: list[Any] = [
        [rng.normal(size=(3, 2)).astype(np.float32)],
        {"arg:v": rng.normal(size=(4, 2)).astype(np.float32), "arg:w0_weight": np.zeros(1, np.float32),
         "aux:x": np.arange(3, dtype=np.int64)},
        [np.arange(4, dtype=np.float64), np.array([True, False]), np.arange(3, dtype=np.uint8),
         np.arange(2, dtype=np.int32), np.ones(2, np.float16), np.arange(3, dtype=np.int8)],
        [sp.csr_matrix(np.array([[0, 1.0], [2.0, 0]], np.float32))],
        [],
        {},
        [nd.RowSparse(np.ones((1, 2), np.float32), np.array([1]), (3, 2))],
    ]
    # Every seed must be writable: a writer regression should fail here, not quietly
    # shrink the corpus (and with it what the fuzz run reaches).
    seeds += [nd.dumps(arrays) for arrays in candidates]
    seeds.append(nd.dumps([np.float32(3.5) * np.ones(())], version=3))
    calls = [("load", nd.load), ("describe", nd.describe)]
    return Target("ndarray", calls, seeds)


# ----------------------------------------------------------------------------- artifacts

def _artifacts_target() -> Target:
    art = importlib.import_module("localfm.io.artifacts")

    def open_artifact(data: bytes) -> None:
        art.open_artifact(io.BytesIO(data))

    def load_fm(data: bytes) -> None:
        art.load_fm(io.BytesIO(data))

    def inspect(data: bytes) -> None:
        # ``localfm inspect`` describes every member (symbol graphs, NDArray lists,
        # embedded RecordIO) with code of its own; it must fail only with LocalFMError.
        from localfm.cli.inspect import _describe_member

        opened = art.open_artifact(io.BytesIO(data))
        for m in opened.members:
            _describe_member(m, opened.source, values=False)

    seeds: list[bytes] = []
    for name in ("pca-model.tar.gz", "kmeans-model.tar.gz"):
        data = _fixture(name)
        if data is not None:
            seeds += [data, _gunzip(data)]
    rng = np.random.default_rng(0)
    w = art.FMWeights(0.25, rng.normal(size=5).astype(np.float32), rng.normal(size=(5, 2)).astype(np.float32),
                      "binary_classifier")
    fm = art.fm_artifact_bytes(w, mtime=0)
    seeds += [fm, _gunzip(fm)]
    seeds += [m for m in _tar_members(fm) if m[:2] == b"PK"]
    seeds.append(art.fm_symbol_json(5, 2).encode())  # a bare symbol graph: inspect's own describer
    # Small inside-out bombs (4 MiB of zeros in a few KB: past the unread-member size,
    # so they take the bounded paths); their mutations must stay bounded too.
    bomb_zip = zip_of_zeros("params", 4)
    seeds += [bomb_zip, tar_gz([("model_algo-1", bomb_zip)]), tar_gz_claiming_zeros("model_algo-1", 4)]
    calls = [("open_artifact", open_artifact), ("load_fm", load_fm), ("inspect", inspect)]
    return Target("artifacts", calls, seeds, [mutate_inside_gzip, mutate_in_archive, mutate_zip_member])


BUILDERS: dict[str, Callable[[], Target]] = {
    "recordio": _recordio_target,
    "ndarray": _ndarray_target,
    "artifacts": _artifacts_target,
}


def load_target(name: str) -> tuple[Target | None, str | None]:
    """Build a target, or return the reason it is skipped (its module does not import)."""
    try:
        return BUILDERS[name](), None
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    except AttributeError as exc:  # the module exists but lacks an entry point from docs/internals.md
        return None, f"{type(exc).__name__}: {exc}"
