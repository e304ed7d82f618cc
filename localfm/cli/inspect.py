"""``localfm inspect PATH``: what is inside a model artifact or data file.

One command answers "what did SageMaker (or localfm) just give me?" for every file
the workflow handles: ``model.tar.gz`` (FM zip layout, KMeans/PCA NDArray lists,
``state_*`` files), an unpacked ``model_algo-1``, a ``prefix-symbol.json`` +
``prefix-NNNN.params`` checkpoint, a bare ``.params`` NDArray list, or
RecordIO-protobuf data. ``--json`` prints a stable machine-readable document
(see docs/artifacts.md); ``--values`` adds the array values.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from ..errors import LocalFMError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="show what a model.tar.gz / model_algo-1 / .params / RecordIO file holds",
        description="Describe a SageMaker or localfm artifact: layout, members, array names, "
                    "shapes, dtypes, storage types, FM feature_dim/num_factors/predictor_type, "
                    "RecordIO record counts. Local paths or s3:// URIs.",
    )
    p.add_argument("path", help="model.tar.gz, model_algo-1, *-symbol.json, *.params, "
                                "a directory, a RecordIO-protobuf file, or an s3:// URI")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--values", action="store_true", help="include array values (can be large)")
    p.set_defaults(func=handler)


def _array_values(arr: Any) -> Any:
    import numpy as np
    import scipy.sparse as sp

    from ..io.ndarray import RowSparse

    if arr is None:
        return None
    if isinstance(arr, RowSparse):
        return {"indices": arr.indices.tolist(), "data": arr.data.tolist()}
    if sp.issparse(arr):
        return {"indptr": arr.indptr.tolist(), "indices": arr.indices.tolist(),
                "data": arr.data.tolist()}
    return np.asarray(arr).tolist()


def _describe_ndarray(data: bytes, where: str, values: bool) -> dict[str, Any]:
    from ..io import ndarray as nd

    arrays, names, infos = nd.parse(data, where)
    out = []
    for i, (arr, info) in enumerate(zip(arrays, infos)):
        entry: dict[str, Any] = {
            "name": names[i] if names else None,
            "shape": list(info.shape) if info.shape is not None else None,
            "dtype": info.dtype,
            "stype": info.stype,
            "version": info.version,
        }
        if info.stype == "csr":
            entry["nnz"] = int(arr.nnz)
        elif info.stype == "row_sparse":
            entry["stored_rows"] = int(len(arr.indices))
        if values:
            entry["values"] = _array_values(arr)
        out.append(entry)
    return {"named": names is not None, "count": len(arrays), "arrays": out}


def _describe_symbol(data: bytes, where: str) -> dict[str, Any]:
    """Summary of an MXNet symbol graph.

    ``_classify`` only checks that ``nodes`` is a list and ``heads`` exists, so a
    hand-edited or damaged graph (indices past the node list, nodes that are not
    objects) reaches here; it is bad input (exit 2), not a crash.
    """
    from ..io.artifacts import predictor_type_from_symbol

    graph = json.loads(data)
    try:
        nodes = graph["nodes"]
        args = [nodes[i]["name"] for i in graph.get("arg_nodes", [])]
        heads = [nodes[h[0]].get("op") for h in graph.get("heads", [])]
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise LocalFMError(f"{where}: malformed MXNet symbol graph ({type(exc).__name__}: {exc}); "
                           "expected arg_nodes/heads indexing objects in 'nodes'") from None
    return {"nodes": len(nodes), "arguments": args, "output_ops": heads,
            "predictor_type": predictor_type_from_symbol(graph)}


def _describe_member(m: Any, where: str, values: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": m.name, "kind": m.kind, "size": m.size}
    if m.kind == "ndarray-list":
        entry["ndarray"] = _describe_ndarray(m.data, f"{where}:{m.name}", values)
    elif m.kind == "mxnet-symbol":
        entry["symbol"] = _describe_symbol(m.data, f"{where}:{m.name}")
    elif m.kind == "json" and m.size <= 1 << 20:
        entry["json"] = json.loads(m.data)
    elif m.kind == "recordio-protobuf":
        from ..io.recordio import describe

        entry["recordio"] = describe(m.data)
    if m.children:
        entry["members"] = [_describe_member(c, where, values) for c in m.children]
    return entry


def inspect_path(path: str, *, values: bool = False) -> dict[str, Any]:
    """The document ``localfm inspect --json`` prints (also usable from Python)."""
    from ..io.artifacts import FM_PARAM_NAMES, fm_parts, fm_from_artifact, open_artifact

    if _is_local_recordio(path):
        # Training data can be many GB: stream it through the RecordIO reader instead
        # of loading it as an artifact.
        from pathlib import Path

        from ..io.recordio import describe

        return {"path": str(path), "kind": "recordio-protobuf",
                "members": [{"name": Path(path).name, "kind": "recordio-protobuf",
                             "size": Path(path).stat().st_size, "recordio": describe(path)}]}
    art = open_artifact(path)
    doc: dict[str, Any] = {"path": str(path), "kind": art.layout,
                           "members": [_describe_member(m, art.source, values) for m in art.members]}
    # An FM model? Say so with its dimensions, like SageMaker's feature_dim/num_factors.
    # Other layouts (KMeans, PCA, a tar without model_algo-1) are simply described;
    # an FM whose parameters are inconsistent is an error.
    try:
        params, _, _ = fm_parts(art)
    except LocalFMError:
        return doc
    if params.kind == "ndarray-list":
        names = _describe_ndarray(params.data, params.name, False)["arrays"]
        bare = {(a["name"] or "").split(":", 1)[-1] for a in names}
        if "v" in bare and bare <= FM_PARAM_NAMES:
            w = fm_from_artifact(art)
            doc["fm"] = {"feature_dim": w.feature_dim, "num_factors": w.num_factors,
                         "predictor_type": w.predictor_type, "w0": w.w0}
    return doc


def _is_local_recordio(path: str) -> bool:
    import struct
    from pathlib import Path

    from ..io.artifacts import RECORDIO_MAGIC
    from ..io.uri import is_s3

    if is_s3(path) or not Path(path).is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(4)
    return len(head) == 4 and struct.unpack("<I", head)[0] == RECORDIO_MAGIC


def _fmt_shape(shape: list[int] | None) -> str:
    return "none" if shape is None else "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _print_text(doc: dict[str, Any], out: Any) -> None:
    print(f"{doc['path']}: {doc['kind']}", file=out)

    def member(entry: dict[str, Any], indent: str) -> None:
        print(f"{indent}{entry['name']}  [{entry['kind']}, {entry['size']} bytes]", file=out)
        nda = entry.get("ndarray")
        if nda:
            print(f"{indent}  {nda['count']} array(s), {'named' if nda['named'] else 'unnamed list'}",
                  file=out)
            for i, a in enumerate(nda["arrays"]):
                label = repr(a["name"]) if a["name"] is not None else f"[{i}]"
                extra = f"  nnz={a['nnz']}" if "nnz" in a else (
                    f"  stored_rows={a['stored_rows']}" if "stored_rows" in a else "")
                print(f"{indent}    {label}  {_fmt_shape(a['shape'])}  {a['dtype'] or '-'}  "
                      f"{a['stype']}  {a['version']}{extra}", file=out)
                if "values" in a:
                    print(f"{indent}      {json.dumps(a['values'])}", file=out)
        sym = entry.get("symbol")
        if sym:
            print(f"{indent}  symbol: {sym['nodes']} nodes, arguments {', '.join(sym['arguments'])}; "
                  f"output {', '.join(map(str, sym['output_ops']))}", file=out)
        if "json" in entry:
            print(f"{indent}  {json.dumps(entry['json'])[:500]}", file=out)
        rec = entry.get("recordio")
        if rec:
            print(f"{indent}  {json.dumps(rec)[:500]}", file=out)
        for child in entry.get("members", []):
            member(child, indent + "  ")

    for m in doc["members"]:
        member(m, "  ")
    fm = doc.get("fm")
    if fm:
        print(f"FM: feature_dim={fm['feature_dim']} num_factors={fm['num_factors']} "
              f"predictor_type={fm['predictor_type']} w0={fm['w0']:.6g}", file=out)


def _json_safe(obj: Any) -> Any:
    """Non-finite floats as strings ("nan", "inf", "-inf"), as parity's JSON does.

    A diverged model (w0 NaN) or ``--values`` of such arrays would otherwise print the
    bare ``NaN`` token, which is not JSON: jq and most parsers reject the whole document.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def handler(args: argparse.Namespace) -> int:
    doc = inspect_path(args.path, values=args.values)
    if args.json:
        json.dump(_json_safe(doc), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        _print_text(doc, sys.stdout)
    return 0
