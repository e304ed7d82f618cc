"""Hostile model archives: refused with one line (exit 2), in bounded memory, writing nothing.

The archives are 4 MB on disk and 4 GiB inside (see ``fuzz/hostile.py``); before the
budgeted reader both died with MemoryError after allocating gigabytes.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from localfm.errors import LocalFMError
from localfm.io import artifacts as art
from localfm.io import ndarray as nd
from tests.fresh_python import run_python

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fuzz.hostile import BLOCK, deflate_with_zeros, tar_gz, tar_gz_claiming_zeros, zip_of_zeros  # noqa: E402

GIB = 1 << 30
#: Run a command in a fresh process and report its peak RSS: RUSAGE_CHILDREN of the
#: test process would include every child any earlier test waited for.
_MEASURE = """
import json, resource, subprocess, sys
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": p.returncode, "stderr": p.stderr,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def test_builders_write_valid_archives() -> None:
    """The shortcut (one deflated block repeated, CRC combined) gives archives any reader accepts."""
    stream, crc, n = deflate_with_zeros(b"head", 3, b"tail")
    whole = b"head" + b"\0" * (3 * BLOCK) + b"tail"
    assert zlib.decompress(stream, -15) == whole and crc == zlib.crc32(whole) and n == len(whole)
    with zipfile.ZipFile(io.BytesIO(zip_of_zeros("params", 2))) as zf:
        assert zf.read("params") == b"\0" * (2 * BLOCK)  # zipfile checks the CRC at the end
    raw = gzip.decompress(tar_gz_claiming_zeros("model_algo-1", 2))  # gzip checks CRC and length
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        ti = tf.next()
        assert ti is not None and ti.size == 2 * BLOCK and tf.extractfile(ti).read() == b"\0" * (2 * BLOCK)


def _hostile(kind: str, tmp_path: Path) -> Path:
    if kind == "params-zip":  # model_algo-1 zip whose params is a 4 GiB run of zeros
        inner = zip_of_zeros("params", 4096)
        with zipfile.ZipFile(io.BytesIO(inner)) as zf:
            assert zf.getinfo("params").file_size == 4 * GIB
        data = tar_gz([("model_algo-1", inner)])
    else:  # a tar member that claims (and holds) 4 GiB
        data = tar_gz_claiming_zeros("model_algo-1", 4096)
    path = tmp_path / "model.tar.gz"
    path.write_bytes(data)
    assert path.stat().st_size < 8 << 20
    return path


@pytest.mark.parametrize("kind", ["params-zip", "tar-member"])
def test_load_fm_refuses_without_inflating(kind: str, tmp_path: Path) -> None:
    path = _hostile(kind, tmp_path)
    with pytest.raises(LocalFMError, match="model_algo-1") as exc:
        art.load_fm(path)
    assert "\n" not in str(exc.value)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["params-zip", "tar-member"])
def test_predict_refuses_hostile_archive_in_bounded_memory(kind: str, tmp_path: Path) -> None:
    model = _hostile(kind, tmp_path)
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"instances": [{"features": [1.0, 0.0]}]}))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "localfm", "predict", "--model", str(model), "--input", str(request),
           "-o", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    report = json.loads(run_python(_MEASURE, *cmd, env=env, timeout=120))
    assert report["rc"] == 2, report["stderr"]
    assert report["stderr"].count("\n") == 1 and "Traceback" not in report["stderr"]
    assert "model_algo-1" in report["stderr"]
    assert report["maxrss_kib"] < (1 << 20), f"peak RSS {report['maxrss_kib']} KiB"
    assert not out.exists()


def test_params_budget_comes_from_the_declared_shapes(tmp_path: Path) -> None:
    """A params whose headers declare less than the member holds stops at the headers' end."""
    params = nd.dumps({"arg:v": np.ones((3, 2), np.float32)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("params", params + b"\0" * (4 << 20))  # 4 MB of zeros after a valid list
    p = tmp_path / "model.tar.gz"
    p.write_bytes(tar_gz([("model_algo-1", buf.getvalue())]))
    with pytest.raises(LocalFMError, match="trailing bytes|more than its declared"):
        art.open_artifact(p)
    # and one whose first array declares more data than the member holds is refused at that header
    buf = io.BytesIO()
    lying = bytearray(params)
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("params", bytes(lying[:-40]))
    with pytest.raises(LocalFMError, match="truncated NDArray file"):
        art.open_artifact(io.BytesIO(buf.getvalue()))


def test_global_cap_counts_declared_sizes(tmp_path: Path) -> None:
    w = art.FMWeights(0.1, np.ones(4, np.float32), np.ones((4, 2), np.float32), "regressor")
    p = art.save_fm(tmp_path / "model.tar.gz", w)
    with pytest.raises(LocalFMError, match="over the 100-byte limit"):
        art.load_fm(p, max_bytes=100)
    assert art.load_fm(p, max_bytes=1 << 20).feature_dim == 4


def test_unrecognised_member_nobody_asked_for_is_listed_not_read(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 8192  # 2 MiB that is no known format
    p = tmp_path / "model.tar.gz"
    p.write_bytes(tar_gz([("state_blob", blob), ("model_algo-1", nd.dumps([np.ones(3, np.float32)]))]))
    found = art.open_artifact(p)
    state = found.find("state_blob")
    assert state is not None and state.size == len(blob) and not state.read and state.data == b""
    # a caller that names it gets its bytes
    assert art.read_members(p, ["state_blob"])["state_blob"] == blob


def _fm_zip(symbol: bytes) -> bytes:
    w = art.FMWeights(0.1, np.ones(4, np.float32), np.ones((4, 2), np.float32), "binary_classifier")
    params = nd.dumps({"arg:w0_weight": np.array([w.w0], np.float32), "arg:w1_weight": w.w.reshape(4, 1),
                       "arg:v": w.V})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("symbol.json", symbol)
        zf.writestr("params", params)
    return buf.getvalue()


@pytest.mark.parametrize(
    "symbol, needle",
    [
        (b"{this is not json", "symbol.json: not valid JSON"),
        (b"not json at all", "symbol.json' is not JSON"),
        (json.dumps({"nodes": [{"op": "null", "name": "data", "inputs": []}], "heads": [[0, 0, 0]]}).encode(),
         "not this model's factorization-machine graph: no input node for v, w0_weight, w1_weight"),
        (json.dumps({"hello": 1}).encode(), "not an MXNet symbol graph"),
    ],
)
def test_symbol_that_mxnet_would_refuse_is_refused(tmp_path: Path, symbol: bytes, needle: str) -> None:
    p = tmp_path / "model.tar.gz"
    p.write_bytes(tar_gz([("model_algo-1", _fm_zip(symbol))]))
    with pytest.raises(LocalFMError, match=needle.replace("(", r"\(")):
        art.load_fm(p)


def test_valid_fm_symbol_still_gives_the_predictor_type(tmp_path: Path) -> None:
    p = tmp_path / "model.tar.gz"
    p.write_bytes(tar_gz([("model_algo-1", _fm_zip(art.fm_symbol_json(4, 2, "regressor").encode()))]))
    assert art.load_fm(p).predictor_type == "regressor"


def test_bad_symbol_exits_2_from_predict(tmp_path: Path, cli) -> None:
    p = tmp_path / "model.tar.gz"
    p.write_bytes(tar_gz([("model_algo-1", _fm_zip(b"{oops"))]))
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"instances": [{"features": [1, 0, 0, 0]}]}))
    code, out, err = cli("predict", "--model", p, "--input", req, "--predictor-type", "regressor")
    assert code == 2 and "not valid JSON" in err and err.count("\n") == 1 and out == ""


def test_non_seekable_streams_are_read_under_the_cap(tmp_path: Path) -> None:
    w = art.FMWeights(0.1, np.ones(4, np.float32), np.ones((4, 2), np.float32), "regressor")
    data = art.fm_artifact_bytes(w, mtime=0)

    class Pipe(io.RawIOBase):  # a pipe or socket: no seek
        def __init__(self) -> None:
            self.inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            return self.inner.read(n)

    assert art.load_fm(Pipe()).feature_dim == 4
    with pytest.raises(LocalFMError, match="over the 100-byte limit|more than the 100-byte limit"):
        art.load_fm(Pipe(), max_bytes=100)
