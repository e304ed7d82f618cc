"""SageMaker model artifacts: ``model.tar.gz`` → ``model_algo-1`` → arrays, safely.

A SageMaker training job leaves ``model.tar.gz`` whose ``model_algo-1`` is either
a **zip** of an MXNet checkpoint (Factorization Machines: ``symbol.json`` +
``params``, sometimes ``meta.json``) or a raw NDArray list (KMeans, PCA), next to
optional ``state_*`` files. Client code usually unpacks it, renames the FM pair to
``model-symbol.json`` / ``model-0000.params`` and calls MXNet's ``Module.load``; we
accept every one of those stages and write the FM layout real MXNet 1.9.1 loads.

Archives come from S3 and colleagues, so nothing is ever extracted to disk: tar and
zip members are read into memory one by one with the names checked (no absolute
paths, no ``..``), links and device files refused, and every declared and actual
size counted against a byte budget so a tar/zip bomb stops with a
:class:`LocalFMError` before it fills memory.
"""
from __future__ import annotations

import glob
import gzip
import io
import json
import os
import re
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from ..errors import LocalFMError
from . import ndarray as nd
from .recordio import MAGIC as RECORDIO_MAGIC

#: Default cap on the bytes read out of one artifact (all members together).
#: The biggest FM SageMaker trains (feature_dim 1e7 x 64 factors, float32) is ~2.6 GB.
DEFAULT_MAX_BYTES = int(os.environ.get("LOCALFM_MAX_ARTIFACT_BYTES", str(8 << 30)))
#: More members than this is not a model artifact.
MAX_MEMBERS = 10_000

PREDICTOR_TYPES = ("binary_classifier", "regressor")
_OUTPUT_OPS = {
    "LogisticRegressionOutput": "binary_classifier",
    "LinearRegressionOutput": "regressor",
}
#: The FM members whose kinds are known before reading them (see :func:`open_artifact`).
FM_MEMBERS = {"model_algo-1": ("zip", "ndarray-list"), "params": ("ndarray-list",), "symbol.json": ("json",)}
#: Parameter names an FM checkpoint may hold (sparse-input and dense-input naming).
FM_PARAM_NAMES = frozenset({"w0_weight", "w1_weight", "v", "Linear_Plus_Bias_weight",
                            "Linear_Plus_Bias_bias"})


# --------------------------------------------------------------------------- FM weights


@dataclass
class FMWeights:
    """The learned parameters of a factorization machine, SageMaker orientation.

    ``score(x) = w0 + x·w + ½ Σ_f [(x V)_f² − (x² V²)_f]``; for a binary classifier
    SageMaker reports ``sigmoid(score)``.
    """

    w0: float
    w: np.ndarray                 # (feature_dim,) float32
    V: np.ndarray                 # (feature_dim, num_factors) float32
    predictor_type: str | None = None

    def __post_init__(self) -> None:
        if np.size(self.w0) != 1:
            raise LocalFMError(f"FM weights: w0 must be one value, got shape {np.shape(self.w0)}")
        self.w0 = float(np.asarray(self.w0, dtype=np.float64).reshape(-1)[0])
        self.w = np.ascontiguousarray(np.asarray(self.w, dtype=np.float32).reshape(-1))
        self.V = np.ascontiguousarray(np.asarray(self.V, dtype=np.float32))
        if self.V.ndim != 2:
            raise LocalFMError(f"FM weights: V must be 2-D (feature_dim, num_factors), got shape {self.V.shape}")
        if self.w.shape[0] != self.V.shape[0]:
            raise LocalFMError(f"FM weights: w has {self.w.shape[0]} features but V has "
                               f"{self.V.shape[0]} rows")
        if self.predictor_type is not None and self.predictor_type not in PREDICTOR_TYPES:
            raise LocalFMError(f"FM weights: predictor_type must be one of {PREDICTOR_TYPES}, "
                               f"got {self.predictor_type!r}")

    @property
    def feature_dim(self) -> int:
        return int(self.V.shape[0])

    @property
    def num_factors(self) -> int:
        return int(self.V.shape[1])

    def raw_scores(self, X: Any) -> np.ndarray:
        """The FM formula on rows of ``X`` (dense or scipy sparse), float64, shape (n,)."""
        import scipy.sparse as sp

        if sp.issparse(X):
            X = sp.csr_matrix(X, dtype=np.float64)
            X2 = X.multiply(X)
        else:
            X = np.asarray(X, dtype=np.float64)
            X2 = X * X
        if X.ndim != 2 or X.shape[1] != self.feature_dim:
            raise LocalFMError(f"FM scores: input has shape {X.shape}, expected (n, {self.feature_dim})")
        V = self.V.astype(np.float64)
        xv = np.asarray(X @ V)
        inter = 0.5 * (np.square(xv) - np.asarray(X2 @ np.square(V))).sum(axis=1)
        return self.w0 + np.asarray(X @ self.w.astype(np.float64)).reshape(-1) + inter

    def predict(self, X: Any) -> np.ndarray:
        """SageMaker's ``score``: sigmoid of the raw score for a binary classifier."""
        raw = self.raw_scores(X)
        if self.predictor_type == "binary_classifier":
            return 1.0 / (1.0 + np.exp(-raw))
        return raw


def fm_from_params(params: dict[str, Any], *, predictor_type: str | None = None,
                   where: str = "FM params") -> FMWeights:
    """Build :class:`FMWeights` from checkpoint arrays, with either naming.

    Sparse-input FM (what recommenders train): ``w0_weight`` (1,), ``w1_weight``
    (d, 1), ``v`` (d, k). Dense-input FM: ``Linear_Plus_Bias_weight`` (1, d),
    ``Linear_Plus_Bias_bias`` (1,), ``v`` stored as (k, d). ``arg:``/``aux:``
    checkpoint prefixes are ignored. A missing bias/linear term (``use_bias`` /
    ``use_linear`` false) reads as zeros.
    """
    clean: dict[str, np.ndarray] = {}
    for key, val in params.items():
        name = key.split(":", 1)[1] if key.startswith(("arg:", "aux:")) else key
        if val is None:
            continue
        if hasattr(val, "toarray"):  # RowSparse or scipy csr: the FM formula wants dense weights
            val = val.toarray()
        clean[name] = np.asarray(val)
    unknown = sorted(set(clean) - FM_PARAM_NAMES)
    if unknown:
        raise LocalFMError(f"{where}: not a factorization-machine model: unexpected parameters "
                           f"{', '.join(unknown)} (expected {', '.join(sorted(FM_PARAM_NAMES))})")
    if "v" not in clean:
        raise LocalFMError(f"{where}: no factor matrix 'v' (found: {', '.join(sorted(clean)) or 'nothing'})")
    v = clean["v"]
    if v.ndim != 2:
        raise LocalFMError(f"{where}: 'v' must be 2-D, got shape {v.shape}")
    dense_names = "Linear_Plus_Bias_weight" in clean or "Linear_Plus_Bias_bias" in clean
    if dense_names:
        lin = clean.get("Linear_Plus_Bias_weight")
        bias = clean.get("Linear_Plus_Bias_bias")
        # Dense-input FM stores v as (k, d); d comes from the linear layer when present.
        if lin is not None:
            if lin.ndim > 2 or 1 not in (lin.shape if lin.ndim == 2 else (1,)):
                raise LocalFMError(f"{where}: 'Linear_Plus_Bias_weight' must be (1, d), got {lin.shape}")
            d = lin.size
            if v.shape[1] == d:
                V = v.T
            elif v.shape[0] == d:
                V = v
            else:
                raise LocalFMError(f"{where}: 'v' shape {v.shape} does not match "
                                   f"'Linear_Plus_Bias_weight' with {d} features")
            w = lin.reshape(-1)
        else:
            V = v.T
            w = np.zeros(V.shape[0], dtype=np.float32)
        w0_arr = bias
        w0_name = "Linear_Plus_Bias_bias"
    else:
        V = v
        d = V.shape[0]
        w1 = clean.get("w1_weight")
        if w1 is None:
            w = np.zeros(d, dtype=np.float32)
        else:
            if w1.shape not in ((d, 1), (d,)):
                raise LocalFMError(f"{where}: 'w1_weight' has shape {w1.shape}, expected ({d}, 1) "
                                   f"to match 'v' {v.shape}")
            w = w1.reshape(-1)
        w0_arr = clean.get("w0_weight")
        w0_name = "w0_weight"
    if w0_arr is None:
        w0 = 0.0
    else:
        if w0_arr.size != 1:
            raise LocalFMError(f"{where}: '{w0_name}' must hold one value, got shape {w0_arr.shape}")
        w0 = float(w0_arr.reshape(-1)[0])
    return FMWeights(w0=w0, w=w, V=V, predictor_type=predictor_type)


# --------------------------------------------------------------------------- symbol.json


def fm_symbol_json(feature_dim: int, num_factors: int, predictor_type: str = "binary_classifier") -> str:
    """An MXNet 1.x symbol graph for a sparse-input FM, as ``Symbol.tojson()`` writes it.

    Same graph as MXNet's sparse factorization-machine example: csr ``data``, dense
    ``w1_weight`` / ``w0_weight`` / ``v`` (so ``Module.load`` + ``set_params`` take
    the saved dense arrays as they are), output named ``out`` so its label is
    ``out_label``. The output op says the predictor type:
    ``LogisticRegressionOutput`` (sigmoid) or ``LinearRegressionOutput``.
    """
    if predictor_type not in _OUTPUT_OPS.values():
        raise LocalFMError(f"predictor_type must be one of {PREDICTOR_TYPES}, got {predictor_type!r}")
    out_op = next(op for op, p in _OUTPUT_OPS.items() if p == predictor_type)
    d, k = int(feature_dim), int(num_factors)

    def var(name: str, **attrs: str) -> dict[str, Any]:
        node: dict[str, Any] = {"op": "null", "name": name}
        if attrs:
            node["attrs"] = attrs
        node["inputs"] = []
        return node

    def op(name: str, opname: str, inputs: list[int], **attrs: str) -> dict[str, Any]:
        node: dict[str, Any] = {"op": opname, "name": name}
        if attrs:
            node["attrs"] = attrs
        node["inputs"] = [[i, 0, 0] for i in inputs]
        return node

    nodes = [
        var("data", __storage_type__="2"),                   # 0  csr input
        var("w1_weight", __shape__=f"({d}, 1)"),             # 1
        op("dot0", "dot", [0, 1]),                           # 2  x·w
        var("w0_weight", __shape__="(1,)"),                  # 3
        op("broadcast_add0", "broadcast_add", [2, 3]),       # 4  + w0
        var("v", __shape__=f"({d}, {k})"),                   # 5
        op("dot1", "dot", [0, 5]),                           # 6  xV
        op("square0", "square", [6]),                        # 7  (xV)²
        op("square1", "square", [0]),                        # 8  x²
        op("square2", "square", [5]),                        # 9  V²
        op("dot2", "dot", [8, 9]),                           # 10 x²V²
        op("_minus0", "elemwise_sub", [7, 10]),              # 11
        op("sum0", "sum", [11], axis="1", keepdims="True"),  # 12
        op("_mulscalar0", "_mul_scalar", [12], scalar="0.5"),  # 13
        op("_plus0", "elemwise_add", [4, 13]),               # 14 score
        var("out_label"),                                    # 15
        op("out", out_op, [14, 15]),                         # 16
    ]
    graph = {
        "nodes": nodes,
        "arg_nodes": [0, 1, 3, 5, 15],
        "node_row_ptr": list(range(len(nodes) + 1)),
        "heads": [[len(nodes) - 1, 0, 0]],
        "attrs": {"mxnet_version": ["int", 10901]},
    }
    return json.dumps(graph, indent=2)


def predictor_type_from_symbol(symbol: Any) -> str | None:
    """binary_classifier / regressor from the output op of a symbol graph, else None."""
    try:
        graph = json.loads(symbol) if isinstance(symbol, (str, bytes, bytearray)) else symbol
        nodes = graph["nodes"]
        heads = graph.get("heads") or [[len(nodes) - 1, 0, 0]]
        ops = [nodes[h[0]].get("op") for h in heads]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
    for opname in ops:
        if opname in _OUTPUT_OPS:
            return _OUTPUT_OPS[opname]
    return None


def _fm_symbol_output(data: bytes, param_names: list[str], where: str) -> str | None:
    """The predictor type a checkpoint's symbol graph says, after checking it is this model's graph.

    MXNet's ``Module.load`` refuses a symbol file that is not JSON, and ``set_params``
    one whose graph has no argument for a saved parameter; so must we, rather than
    guess the output op. A valid graph whose output op is neither FM output gives
    None (``meta.json`` or the caller then decides).
    """
    try:
        graph = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise LocalFMError(f"{where}: not valid JSON ({exc}); MXNet cannot load this symbol") from None
    if not _is_symbol_graph(graph):
        raise LocalFMError(f"{where}: not an MXNet symbol graph (expected 'nodes' and 'heads')")
    args = {n.get("name") for n in graph["nodes"] if isinstance(n, dict) and n.get("op") == "null"}
    bare = [n.split(":", 1)[1] if n.startswith(("arg:", "aux:")) else n for n in param_names]
    missing = sorted(set(bare) - args)
    if missing or "v" not in args:
        raise LocalFMError(f"{where}: not this model's factorization-machine graph: no input node for "
                           f"{', '.join(missing or ['v'])}")
    return predictor_type_from_symbol(graph)


def _is_symbol_graph(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("nodes"), list) and "heads" in obj


# --------------------------------------------------------------------------- safe archives


@dataclass
class Member:
    """One file inside an artifact; zip members carry their own ``children``.

    A member whose content localfm cannot recognise and nobody asked for is listed
    with its declared ``size`` but not read (``data`` empty, ``read`` False): it
    cannot be parsed anyway, and reading it would let any big blob fill memory.
    """

    name: str                 # path from the artifact root, e.g. "model_algo-1/params"
    data: bytes
    kind: str                 # zip | ndarray-list | mxnet-symbol | json | recordio-protobuf | gzip | bytes
    children: list[Member] = field(default_factory=list)
    declared: int | None = None  # the size of a member that was not read

    @property
    def size(self) -> int:
        return len(self.data) if self.declared is None else self.declared

    @property
    def read(self) -> bool:
        return self.declared is None

    @property
    def basename(self) -> str:
        return self.name.rsplit("/", 1)[-1]


@dataclass
class Artifact:
    """What :func:`open_artifact` found: the layout and every member, in memory."""

    source: str
    layout: str               # model.tar.gz | zip | ndarray-list | checkpoint | directory | recordio-protobuf | json
    members: list[Member]

    def walk(self) -> Iterator[Member]:
        stack = list(reversed(self.members))
        while stack:
            m = stack.pop()
            yield m
            stack.extend(reversed(m.children))

    def find(self, name: str) -> Member | None:
        """The member whose path or basename is ``name`` (top level first)."""
        for m in self.walk():
            if m.name == name:
                return m
        for m in self.walk():
            if m.basename == name:
                return m
        return None


#: What the caller expects of members, by base name: the kinds each may be (None: any).
#: Members named here are read whatever their content (under the global cap); a named
#: member of another kind is refused as soon as its first bytes say so.
Expect = Mapping[str, "Collection[str] | None"]


@dataclass
class _Reading:
    """One artifact read: where it is, the byte budget left, what the caller expects."""

    where: str
    limit: int
    left: int
    expect: Expect | None = None
    only_expected: bool = False

    def reserve(self, n: int, name: str) -> None:
        """Count ``n`` declared bytes against the cap, before any of them is read."""
        if n < 0:
            raise LocalFMError(f"{self.where}: member {name!r} declares a negative size {n}")
        if n > self.left:
            raise LocalFMError(f"{self.where}: member {name!r} declares {n} bytes, over the "
                               f"{self.limit}-byte limit for one artifact (zip/tar bomb? raise "
                               "max_bytes or LOCALFM_MAX_ARTIFACT_BYTES if the model is really this big)")
        self.left -= n

    def kinds(self, name: str) -> Collection[str] | None:
        return None if self.expect is None else self.expect.get(name.rsplit("/", 1)[-1])

    def expected(self, name: str) -> bool:
        return self.expect is not None and name.rsplit("/", 1)[-1] in self.expect


def _check_member_name(name: str, where: str) -> str:
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise LocalFMError(f"{where}: member {name!r} has an absolute path")
    parts = [p for p in PurePosixPath(clean).parts if p not in ("", ".")]
    if ".." in parts:
        raise LocalFMError(f"{where}: member {name!r} escapes the archive ('..' in its path)")
    if not parts:
        raise LocalFMError(f"{where}: member with an empty name")
    return "/".join(parts)


def _wanted(raw_name: str, where: str, rd: _Reading) -> str | None:
    """The clean member name, or None for a member the caller did not ask for (skipped unread)."""
    if rd.only_expected:
        try:
            name = _check_member_name(raw_name, where)
        except LocalFMError:
            return None  # never read, never written: an unsafe name we were not asked for is ignored
        return name if rd.expected(name) else None
    return _check_member_name(raw_name, where)


def _read_exactly(fh: IO[bytes], size: int, name: str, where: str, head: bytes = b"") -> bytes:
    """``head`` plus the rest of a member of ``size`` declared bytes; more or less is an error."""
    chunks = [head]
    got = len(head)
    while got < size:
        chunk = fh.read(min(1 << 20, size - got))
        if not chunk:
            raise LocalFMError(f"{where}: member {name!r} is truncated ({got} of {size} bytes)")
        chunks.append(chunk)
        got += len(chunk)
    if fh.read(1):
        raise LocalFMError(f"{where}: member {name!r} holds more than its declared {size} bytes")
    return b"".join(chunks)


class _Prefixed(io.RawIOBase):
    """``head`` (already read to sniff the member) followed by the rest of ``fh``."""

    def __init__(self, head: bytes, fh: IO[bytes]) -> None:
        self.head = head
        self.fh = fh

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.head:
            out, self.head = (self.head, b"") if n < 0 or n >= len(self.head) else \
                (self.head[:n], self.head[n:])
            return out
        return self.fh.read(n)


#: Bytes read from a member to tell what it is before deciding its budget.
HEAD_BYTES = 512
#: JSON members (symbol.json, meta.json, model_algo-1.json) are kilobytes; more is not a model.
MAX_JSON_BYTES = 64 << 20
#: Unrecognised members nobody asked for are read only up to this size (else listed unread).
MAX_UNREAD_BYTES = 1 << 20


_KIND_WORDS = {"zip": "a zip archive", "ndarray-list": "an MXNet NDArray list", "json": "JSON",
               "json-text": "JSON", "recordio-protobuf": "RecordIO-protobuf", "gzip": "gzip data"}


def _sniff(head: bytes) -> str:
    """A member's kind from its first bytes: json-text stands for json / mxnet-symbol."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if nd.looks_like_ndarray_list(head):
        return "ndarray-list"
    if len(head) >= 4 and struct.unpack("<I", head[:4])[0] == RECORDIO_MAGIC:
        return "recordio-protobuf"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.lstrip()[:1] in (b"{", b"["):
        return "json-text"
    return "bytes"


def _json_kind(data: bytes) -> str:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "bytes"
    return "mxnet-symbol" if _is_symbol_graph(obj) else "json"


def _classify(data: bytes) -> str:
    kind = _sniff(data[:HEAD_BYTES])
    return _json_kind(data) if kind == "json-text" else kind


def _read_member(fh: IO[bytes], size: int, name: str, where: str, rd: _Reading, depth: int = 0) -> Member:
    """Read one member of ``size`` declared bytes under the budget its kind allows.

    The declared size counts against the global cap first. Then the first bytes say
    the kind: an NDArray list is read as its record headers declare (the shapes are
    the budget), JSON up to :data:`MAX_JSON_BYTES`, an unrecognised blob only when
    the caller asked for it by name (or it is small). A member the caller expects to
    be of other kinds is refused right there, before its body is inflated.
    """
    rd.reserve(size, name)
    head = _read_head(fh, min(size, HEAD_BYTES), name, where)
    kind = _sniff(head)
    allowed = rd.kinds(name)
    if allowed is not None and kind not in allowed and not (kind == "json-text" and "json" in allowed):
        wanted = " or ".join(_KIND_WORDS.get(k, k) for k in sorted(allowed))
        raise LocalFMError(f"{where}: member {name!r} is not {wanted} (its first bytes are "
                           f"{_KIND_WORDS.get(kind, 'of no known format') if kind != 'bytes' else 'of no known format'})")
    if kind == "ndarray-list":
        data = nd.read_stream(_Prefixed(head, fh), size, f"{where}:{name}")  # type: ignore[arg-type]
    elif kind == "json-text":
        if size > MAX_JSON_BYTES:
            raise LocalFMError(f"{where}: member {name!r} is {size} bytes of JSON, over the "
                               f"{MAX_JSON_BYTES}-byte limit for model metadata")
        data = _read_exactly(fh, size, name, where, head)
        kind = _json_kind(data)
    elif kind == "bytes" and size > MAX_UNREAD_BYTES and not rd.expected(name):
        return Member(name, b"", "bytes", declared=size)
    else:
        data = _read_exactly(fh, size, name, where, head)
    m = Member(name, data, kind)
    if kind == "zip" and depth < MAX_ZIP_DEPTH:
        m.children = _read_zip(data, f"{where}:{name}", rd, name, depth + 1)
    return m


def _read_head(fh: IO[bytes], n: int, name: str, where: str) -> bytes:
    head = b""
    while len(head) < n:
        chunk = fh.read(n - len(head))
        if not chunk:
            raise LocalFMError(f"{where}: member {name!r} is truncated ({len(head)} bytes)")
        head += chunk
    return head


def _read_tar(fileobj: IO[bytes], where: str, rd: _Reading) -> list[Member]:
    out: list[Member] = []
    try:
        with tarfile.open(fileobj=fileobj, mode="r:*") as tf:
            for count, ti in enumerate(tf, 1):
                if count > MAX_MEMBERS:
                    raise LocalFMError(f"{where}: more than {MAX_MEMBERS} members")
                name = _wanted(ti.name, where, rd)
                if name is None:
                    continue
                if ti.issym() or ti.islnk():
                    raise LocalFMError(f"{where}: member {ti.name!r} is a link (refused)")
                if ti.isdir():
                    continue
                if not ti.isreg():
                    raise LocalFMError(f"{where}: member {ti.name!r} is not a regular file (refused)")
                fh = tf.extractfile(ti)
                assert fh is not None
                out.append(_read_member(fh, ti.size, name, where, rd))
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as exc:
        # ValueError: tarfile seeking to a negative offset from a corrupt size field.
        raise LocalFMError(f"{where}: corrupt or truncated tar archive ({exc})") from None
    return out


def _read_zip(data: bytes, where: str, rd: _Reading, prefix: str = "", depth: int = 0) -> list[Member]:
    out: list[Member] = []
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise LocalFMError(f"{where}: more than {MAX_MEMBERS} members")
            for zi in infos:
                name = _check_member_name(zi.filename, where)
                mode = zi.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise LocalFMError(f"{where}: member {zi.filename!r} is a link (refused)")
                if zi.is_dir():
                    continue
                if zi.flag_bits & 0x1:
                    raise LocalFMError(f"{where}: member {zi.filename!r} is encrypted")
                with zf.open(zi) as fh:
                    out.append(_read_member(fh, zi.file_size, f"{prefix}/{name}" if prefix else name,
                                            where, rd, depth))
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
            ValueError, OSError) as exc:
        raise LocalFMError(f"{where}: corrupt zip archive ({exc})") from None
    return out


#: Zips inside zips are opened this deep (model_algo-1 is one level); deeper ones are
#: listed as plain zip members, so a nested-zip bomb cannot recurse without end.
MAX_ZIP_DEPTH = 2


def _is_tar(data_head: bytes) -> bool:
    if data_head.startswith(b"\x1f\x8b"):
        return True
    return len(data_head) >= 262 and data_head[257:262] == b"ustar"


_CKPT_PARAMS = re.compile(r"^(?P<prefix>.*)-(?P<epoch>\d{4})\.params$")


def _checkpoint_pair(path: Path) -> tuple[Path, Path] | None:
    """(symbol, params) for a ``prefix-symbol.json`` / ``prefix-NNNN.params`` path."""
    name = path.name
    if name.endswith("-symbol.json"):
        prefix = name[: -len("-symbol.json")]
        candidates = sorted(path.parent.glob(f"{glob.escape(prefix)}-[0-9][0-9][0-9][0-9].params"))
        if not candidates:
            raise LocalFMError(f"{path}: no matching {prefix}-NNNN.params next to it")
        return path, candidates[-1]
    m = _CKPT_PARAMS.match(name)
    if m:
        sym = path.parent / f"{m.group('prefix')}-symbol.json"
        if sym.is_file():
            return sym, path
    return None


def _file_member(path: Path, name: str, where: str, rd: _Reading) -> Member:
    with open(path, "rb") as fh:
        return _read_member(fh, os.fstat(fh.fileno()).st_size, name, where, rd)


def open_artifact(uri: str | os.PathLike[str] | IO[bytes], *, max_bytes: int | None = None,
                  expect: Expect | None = None, only_expected: bool = False) -> Artifact:
    """Read a model artifact of any supported layout into memory, safely.

    ``uri``: a ``model.tar.gz`` (local or ``s3://``), a ``model_algo-1`` (zip or
    NDArray list), a ``prefix-symbol.json`` / ``prefix-NNNN.params`` checkpoint
    path, a directory holding any of those, or a binary file object.

    This is the one budgeted archive reader: tar and zip members are streamed, each
    declared size counts against ``max_bytes`` (default :data:`DEFAULT_MAX_BYTES`)
    before it is read, and each member is read under the budget of its kind (see
    :func:`_read_member`). ``expect`` names the members the caller needs, by base
    name, with the kinds each may be (None: any); with ``only_expected`` the other
    members of a tar are skipped unread. The algorithm-specific names live with the
    caller (``knn/model.py`` passes its three), so io/ knows no algorithm.
    """
    limit = DEFAULT_MAX_BYTES if max_bytes is None else int(max_bytes)
    if hasattr(uri, "read"):
        where = str(getattr(uri, "name", "<file>"))
        rd = _Reading(where, limit, limit, expect, only_expected)
        return _open_stream(uri, where, rd)  # type: ignore[arg-type]
    from .uri import is_s3, local_path

    where = str(uri)
    rd = _Reading(where, limit, limit, expect, only_expected)
    if not is_s3(uri) and Path(uri).is_dir():
        return _open_directory(Path(uri), rd)
    with local_path(uri) as path:
        if not is_s3(uri):
            pair = _checkpoint_pair(path)
            if pair is not None:
                return Artifact(where, "checkpoint", [_file_member(p, p.name, where, rd) for p in pair])
        with open(path, "rb") as fh:
            return _open_stream(fh, where, rd, name=Path(path).name if not is_s3(uri) else
                                str(uri).rsplit("/", 1)[-1])


def _open_stream(fh: IO[bytes], where: str, rd: _Reading, name: str = "model_algo-1") -> Artifact:
    if not fh.seekable():
        fh = io.BytesIO(_read_all(fh, rd, where))
    head = fh.read(512)
    fh.seek(0)
    if _is_tar(head):
        return Artifact(where, "model.tar.gz", _read_tar(fh, where, rd))
    size = fh.seek(0, os.SEEK_END)
    fh.seek(0)
    m = _read_member(fh, size, name, where, rd)
    layout = {"zip": "zip", "ndarray-list": "ndarray-list", "recordio-protobuf": "recordio-protobuf",
              "mxnet-symbol": "json", "json": "json"}.get(m.kind)
    if layout is None:
        raise LocalFMError(f"{where}: not a model artifact (expected model.tar.gz, a model_algo-1 "
                           "zip or NDArray list, or a checkpoint pair)")
    return Artifact(where, layout, [m])


def _read_all(fh: IO[bytes], rd: _Reading, where: str) -> bytes:
    """A non-seekable stream, read whole (never past the cap) so its members can be walked."""
    chunks, got = [], 0
    while chunk := fh.read(1 << 20):
        got += len(chunk)
        if got > rd.limit:
            raise LocalFMError(f"{where}: more than the {rd.limit}-byte limit for one artifact (raise "
                               "max_bytes or LOCALFM_MAX_ARTIFACT_BYTES if the model is really this big)")
        chunks.append(chunk)
    return b"".join(chunks)


def _open_directory(path: Path, rd: _Reading) -> Artifact:
    """A training-job output dir (holds model.tar.gz) or an unpacked artifact."""
    tgz = path / "model.tar.gz"
    if tgz.is_file() and not (path / "model_algo-1").exists():
        rd.where = str(tgz)
        with open(tgz, "rb") as fh:
            return _open_stream(fh, str(tgz), rd)
    members = []
    for p in sorted(path.iterdir()):
        if p.is_symlink() or not p.is_file():
            continue
        if len(members) >= MAX_MEMBERS:
            raise LocalFMError(f"{path}: more than {MAX_MEMBERS} files")
        members.append(_file_member(p, p.name, str(path), rd))
    if not members:
        raise LocalFMError(f"{path}: empty directory (expected model.tar.gz contents)")
    return Artifact(str(path), "directory", members)


def read_members(uri: str | os.PathLike[str], names: Collection[str], *,
                 max_bytes: int | None = None) -> dict[str, bytes]:
    """The members called ``names`` (base names) of a tar(.gz) artifact, read under the budget.

    Other members are skipped unread; which of ``names`` are missing is for the caller
    to judge (it knows what its algorithm needs).
    """
    art = open_artifact(uri, max_bytes=max_bytes, expect={n: None for n in names}, only_expected=True)
    if art.layout != "model.tar.gz":
        raise LocalFMError(f"{art.source}: expected a model.tar.gz (tar archive), found {art.layout}")
    return {m.basename: m.data for m in art.members if m.basename in names}


# --------------------------------------------------------------------------- FM load / save


def fm_parts(art: Artifact) -> tuple[Member, Member | None, Member | None]:
    """(params, symbol, meta) members of an FM artifact, whatever the layout."""
    if art.layout == "checkpoint":
        sym, params = art.members
        return params, sym, None
    if art.layout in ("model.tar.gz", "directory"):
        tops = {m.name: m for m in art.members}
        root = tops.get("model_algo-1")
        if root is None:
            pair = _renamed_pair(art.members)
            if pair is not None:
                return pair[1], pair[0], None
            names = ", ".join(tops) or "nothing"
            raise LocalFMError(f"{art.source}: no model_algo-1 member (found: {names})")
    else:
        root = art.members[0]
    if root.kind == "zip":
        kids = {c.basename: c for c in root.children}
        params = kids.get("params") or next((c for c in root.children if c.kind == "ndarray-list"), None)
        if params is None:
            raise LocalFMError(f"{art.source}: {root.name} zip has no 'params' "
                               f"(found: {', '.join(kids) or 'nothing'})")
        sym = kids.get("symbol.json") or next((c for c in root.children if c.kind == "mxnet-symbol"), None)
        return params, sym, kids.get("meta.json")
    if root.kind == "ndarray-list":
        return root, None, None
    raise LocalFMError(f"{art.source}: {root.name} is neither a zip nor an NDArray list ({root.kind})")


def _renamed_pair(members: list[Member]) -> tuple[Member, Member] | None:
    """(symbol, latest params) when a directory holds an unzipped, renamed checkpoint."""
    for sym in members:
        if sym.name.endswith("-symbol.json"):
            prefix = sym.name[: -len("-symbol.json")]
            params = sorted((m for m in members if (mt := _CKPT_PARAMS.match(m.name))
                             and mt.group("prefix") == prefix), key=lambda m: m.name)
            if params:
                return sym, params[-1]
    return None


def load_fm(uri_or_file: str | os.PathLike[str] | IO[bytes], *, max_bytes: int | None = None) -> FMWeights:
    """Read FM weights from a SageMaker FM artifact in any of its stages.

    Accepts ``model.tar.gz`` (local, ``s3://`` or a file object), the unpacked
    ``model_algo-1`` zip, a directory, or a ``model-symbol.json`` +
    ``model-0000.params`` pair. ``predictor_type`` comes from the symbol's output op
    (or ``meta.json``), None when neither says.
    """
    return fm_from_artifact(open_artifact(uri_or_file, max_bytes=max_bytes, expect=FM_MEMBERS))


def fm_from_artifact(art: Artifact) -> FMWeights:
    """:class:`FMWeights` from an already opened :class:`Artifact` (see :func:`load_fm`)."""
    params_m, sym_m, meta_m = fm_parts(art)
    where = f"{art.source}:{params_m.name}"
    if params_m.kind != "ndarray-list":
        raise LocalFMError(f"{where}: not an MXNet NDArray file")
    arrays, names, _ = nd.parse(params_m.data, where)
    if names is None:
        raise LocalFMError(f"{where}: parameters have no names (expected w0_weight, w1_weight, v)")
    params = dict(zip(names, arrays))
    ptype = None
    if sym_m is not None:
        ptype = _fm_symbol_output(sym_m.data, names, f"{art.source}:{sym_m.name}")
    if ptype is None and meta_m is not None and meta_m.kind == "json":
        meta = json.loads(meta_m.data)
        if isinstance(meta, dict) and meta.get("predictor_type") in PREDICTOR_TYPES:
            ptype = meta["predictor_type"]
    return fm_from_params(params, predictor_type=ptype, where=where)


def _zip_bytes(files: list[tuple[str, bytes]], mtime: float) -> bytes:
    """A zip of ``files``, stored rather than deflated.

    Why stored: the archive is gzipped as a whole right after (``model.tar.gz``), so
    deflating here too compressed the bytes twice for nothing: float32 factors barely
    compress (about 7%), and the two passes cost ~4.5 s on a 200k x 64 model where one
    costs ~2.5 s. The outer gzip still gets the same final size.
    """
    buf = io.BytesIO()
    date = time.gmtime(max(mtime, 315532800))[:6]  # zip dates start in 1980
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files:
            zi = zipfile.ZipInfo(name, date_time=date)
            zi.compress_type = zipfile.ZIP_STORED
            zi.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(zi, data)
    return buf.getvalue()


def fm_artifact_bytes(weights: FMWeights, *, mtime: float | None = None) -> bytes:
    """The bytes of a SageMaker-layout FM ``model.tar.gz`` for ``weights``.

    ``mtime`` defaults to ``SOURCE_DATE_EPOCH`` when set (reproducible builds), else now.
    """
    if mtime is None:
        mtime = float(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    d, k = weights.feature_dim, weights.num_factors
    if d < 1 or k < 1:
        raise LocalFMError(f"FM weights: feature_dim and num_factors must be >= 1, got {d}, {k}")
    ptype = weights.predictor_type or "regressor"
    params = nd.dumps({
        "arg:w0_weight": np.array([weights.w0], dtype=np.float32),
        "arg:w1_weight": weights.w.astype(np.float32).reshape(d, 1),
        "arg:v": weights.V.astype(np.float32),
    })
    symbol = fm_symbol_json(d, k, ptype).encode("utf-8")
    inner = _zip_bytes([("symbol.json", symbol), ("params", params)], mtime)
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        ti = tarfile.TarInfo("model_algo-1")
        ti.size = len(inner)
        ti.mtime = int(mtime)
        ti.mode = 0o644
        tf.addfile(ti, io.BytesIO(inner))
    out = io.BytesIO()
    # Level 6, zlib's default: the level real SageMaker archives carry (gzip header XFL 0;
    # Python's own default of 9 is ~40% slower here for a fraction of a percent).
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=int(mtime), filename="") as gz:
        gz.write(tar_buf.getvalue())
    return out.getvalue()


def save_fm(path: str | os.PathLike[str], weights: FMWeights) -> Path | str:
    """Write ``weights`` as a SageMaker FM ``model.tar.gz`` (atomically; ``s3://`` ok).

    The ``model_algo-1`` member is a zip of ``symbol.json`` + ``params`` (names
    ``arg:w0_weight`` (1,), ``arg:w1_weight`` (d, 1), ``arg:v`` (d, k), float32),
    which real MXNet 1.9.1 loads with ``Module.load(prefix, 0, False,
    label_names=['out_label'])`` after the usual renames. A ``predictor_type`` of
    None is written as a regressor (the output is then the raw FM score). When
    ``path`` is an existing directory, ``model.tar.gz`` is written inside it.
    """
    from .atomic import atomic_write
    from .uri import is_s3, upload

    if not isinstance(weights, FMWeights):
        raise LocalFMError(f"save_fm: expected FMWeights, got {type(weights).__name__}")
    data = fm_artifact_bytes(weights)
    if is_s3(path):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="localfm-") as tmp:
            local = Path(tmp) / "model.tar.gz"
            local.write_bytes(data)
            upload(local, str(path))
        return str(path)
    target = Path(path)
    if target.is_dir():
        target = target / "model.tar.gz"
    with atomic_write(target, "wb") as fh:
        fh.write(data)
    return target
