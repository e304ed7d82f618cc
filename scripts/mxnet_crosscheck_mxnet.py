"""MXNet side of scripts/mxnet-crosscheck (runs inside the mxnet==1.9.1 venv).

Direction A: real MXNet writes NDArray lists (dense in every dtype 1.9.1 can save,
bfloat16, row_sparse, csr, named and unnamed, an ``npx.save`` V3 file) and a Module
checkpoint; localfm (main interpreter, via subprocess) reads them, compares values
and re-writes them byte-identically. Direction B: localfm writes the same kinds of
files and an FM ``model.tar.gz``; MXNet loads them with ``mx.nd.load`` /
``mx.npx.load`` and the FM with the usual unzip + rename +
``Module.load(prefix, 0, False, label_names=['out_label'])``, binds for csr input and
runs a forward pass compared with localfm's numpy FM scores.

Prints PASS/FAIL per check and a summary; exit status 1 on any failure.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
DTYPES = ["float32", "float64", "float16", "uint8", "int32", "int8", "int64", "bool"]
BF16 = np.dtype([("bfloat16", np.uint16)])
results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, bool(ok), detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}{'  ' + detail if detail else ''}", flush=True)


def dense(a):
    if a.stype != "default":
        a = a.tostype("default")
    return a.asnumpy()


def rand(rng, shape, dtype):
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


def emit(directory: Path, case: str, arrays, *, version=2, dtypes=None):
    """Save with MXNet and export the values + metadata for the localfm side."""
    values = list(arrays.values()) if isinstance(arrays, dict) else list(arrays)
    path = str(directory / f"{case}.params")
    if version == 3:
        mx.npx.save(path, arrays)
        exported = {f"a{i}": v.asnumpy() for i, v in enumerate(values)}
        stypes = ["default"] * len(values)
    else:
        mx.nd.save(path, arrays)
        exported = {f"a{i}": (dense(v.astype("float32")) if dtypes and dtypes[i] == "bfloat16" else dense(v))
                    for i, v in enumerate(values)}
        stypes = [v.stype for v in values]
    np.savez(directory / f"{case}.npz", **exported)
    (directory / f"{case}.meta.json").write_text(json.dumps({
        "names": list(arrays) if isinstance(arrays, dict) else None, "version": version,
        "dtypes": dtypes or [str(exported[f"a{i}"].dtype) for i in range(len(values))],
        "stypes": stypes}))


def fm_symbol(d: int, k: int, ptype: str):
    # A fresh NameManager so auto-names (dot0, square0, ...) do not depend on what
    # this process built before.
    with mx.name.NameManager():
        return _fm_symbol(d, k, ptype)


def _fm_symbol(d: int, k: int, ptype: str):
    data = mx.sym.Variable("data", stype="csr")
    w0 = mx.sym.Variable("w0_weight", shape=(1,))
    w1 = mx.sym.Variable("w1_weight", shape=(d, 1))
    v = mx.sym.Variable("v", shape=(d, k))
    linear = mx.sym.broadcast_add(mx.sym.dot(data, w1), w0)
    xv = mx.sym.dot(data, v)
    inter = 0.5 * mx.sym.sum(mx.sym.square(xv) - mx.sym.dot(mx.sym.square(data), mx.sym.square(v)),
                             axis=1, keepdims=True)
    out = (mx.sym.LogisticRegressionOutput if ptype == "binary_classifier"
           else mx.sym.LinearRegressionOutput)(linear + inter, name="out")
    return out


def mxnet_writes(directory: Path) -> None:
    rng = np.random.default_rng(7)
    for dt in DTYPES:
        emit(directory, f"dense_{dt}_list",
             [mx.nd.array(rand(rng, s, dt), dtype=dt) for s in [(3, 4), (5,), (2, 1, 3)]])
    emit(directory, "dense_named", {
        "arg:weight": mx.nd.array(rand(rng, (4, 3), "float32")),
        "aux:moving_var": mx.nd.array(rand(rng, (3,), "float64"), dtype="float64"),
        "naïve ✓": mx.nd.array(rand(rng, (1,), "int64"), dtype="int64")})
    emit(directory, "empty_list", [])
    emit(directory, "bfloat16", [mx.nd.amp_cast(mx.nd.array(rand(rng, (2, 5), "float32")), dtype=BF16)],
         dtypes=["bfloat16"])
    csr = mx.nd.array(rand(rng, (5, 8), "float32") * (rng.random((5, 8)) < 0.3)).tostype("csr")
    rsp = mx.nd.sparse.row_sparse_array((rand(rng, (2, 3), "float32"), [0, 3]), shape=(5, 3))
    emit(directory, "sparse", {"csr": csr, "rsp": rsp, "dense": mx.nd.ones((2, 2))})
    emit(directory, "sparse_list_float64",
         [mx.nd.array(rand(rng, (4, 6), "float64") * (rng.random((4, 6)) < 0.5), dtype="float64").tostype("csr"),
          mx.nd.sparse.row_sparse_array((rand(rng, (1, 2), "float64"), [2]), shape=(3, 2), dtype="float64")])
    emit(directory, "empty_sparse", [mx.nd.sparse.zeros("csr", (3, 4)), mx.nd.sparse.zeros("row_sparse", (3, 4))])
    mx.npx.set_np()
    try:
        emit(directory, "v3_npx", {"scalar": mx.np.array(2.5), "zero_size": mx.np.zeros((2, 0)),
                                    "m": mx.np.array(rand(rng, (3, 2), "float32"))}, version=3)
    finally:
        mx.npx.reset_np()
    # A Module checkpoint of the FM graph, read back by localfm.load_fm.
    d, k = 9, 3
    for ptype in ("binary_classifier", "regressor"):
        args = {"w0_weight": mx.nd.array(rand(rng, (1,), "float32")),
                "w1_weight": mx.nd.array(rand(rng, (d, 1), "float32")),
                "v": mx.nd.array(rand(rng, (d, k), "float32"))}
        case = f"ckpt_{ptype}"
        mx.model.save_checkpoint(str(directory / case), 0, fm_symbol(d, k, ptype), args, {})
        np.savez(directory / f"{case}.npz", **{n: a.asnumpy() for n, a in args.items()})
        (directory / f"{case}.meta.json").write_text(json.dumps({"kind": "fm-checkpoint", "predictor_type": ptype}))


def run_localfm(python: str, *args: str) -> list[dict]:
    proc = subprocess.run([python, str(HERE / "mxnet_crosscheck_localfm.py"), *args],
                          capture_output=True, text=True)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode not in (0, 1) or not lines:
        check(f"localfm {args[0]}", False, f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return lines


def mxnet_reads(directory: Path) -> None:
    for meta_path in sorted(directory.glob("*.meta.json")):
        case = meta_path.name[: -len(".meta.json")]
        meta = json.loads(meta_path.read_text())
        try:
            exp = np.load(directory / f"{case}.npz")
            path = str(directory / f"{case}.params")
            if meta["version"] == 3:
                mx.npx.set_np()
                try:
                    loaded = mx.npx.load(path)
                    loaded = {k: v.asnumpy() for k, v in loaded.items()} if isinstance(loaded, dict) \
                        else [v.asnumpy() for v in loaded]
                finally:
                    mx.npx.reset_np()
                stypes = ["default"] * len(loaded)
            else:
                raw = mx.nd.load(path)
                items = raw.values() if isinstance(raw, dict) else raw
                stypes = [a.stype for a in items]
                conv = [dense(a.astype("float32")) if t == "bfloat16" else dense(a)
                        for a, t in zip(items, meta["dtypes"])]
                loaded = dict(zip(raw.keys(), conv)) if isinstance(raw, dict) else conv
            if meta["names"] is None:
                ok = isinstance(loaded, list) and len(loaded) == len(meta["dtypes"])
                values = loaded
            else:
                ok = isinstance(loaded, dict) and list(loaded) == meta["names"]
                values = list(loaded.values())
            bad = []
            for i, got in enumerate(values):
                want = exp[f"a{i}"]
                want_dtype = "float32" if meta["dtypes"][i] == "bfloat16" else meta["dtypes"][i]
                same = (got.shape == want.shape and str(got.dtype) == want_dtype
                        and np.array_equal(got, want) and stypes[i] == meta["stypes"][i])
                if not same:
                    bad.append(f"#{i}: got {got.dtype}{got.shape}/{stypes[i]} want {want_dtype}{want.shape}")
                ok &= same
            check(f"B:{case}", ok, "; ".join(bad))
        except Exception as exc:
            check(f"B:{case}", False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")
    for fm_dir in sorted(directory.glob("fm_*")):
        name = f"B:{fm_dir.name}:Module.load+forward"
        try:
            work = fm_dir / "unpacked"
            work.mkdir()
            with tarfile.open(fm_dir / "model.tar.gz") as tf:
                tf.extractall(work, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(work)
            with zipfile.ZipFile(work / "model_algo-1") as zf:
                zf.extractall(work)
            os.rename(work / "symbol.json", work / "model-symbol.json")
            os.rename(work / "params", work / "model-0000.params")
            exp = np.load(fm_dir / "expected.npz")
            n, d = (int(x) for x in exp["shape"])
            mod = mx.module.Module.load(str(work / "model"), 0, False, label_names=["out_label"])
            X = mx.nd.sparse.csr_matrix((exp["data"], exp["indices"], exp["indptr"]), shape=(n, d))
            # csr input comes from the symbol's __storage_type__ attribute on "data".
            mod.bind(data_shapes=[("data", (n, d))], label_shapes=[("out_label", (n,))],
                     for_training=False)
            mod.forward(mx.io.DataBatch(data=[X], label=[mx.nd.zeros((n,))]), is_train=False)
            scores = mod.get_outputs()[0].asnumpy().reshape(-1)
            args, _ = mod.get_params()
            same_params = (np.array_equal(args["v"].asnumpy(), exp["V"])
                           and np.array_equal(args["w1_weight"].asnumpy().reshape(-1), exp["w"])
                           and np.allclose(args["w0_weight"].asnumpy(), exp["w0"]))
            close = np.allclose(scores, exp["scores"], rtol=1e-5, atol=1e-5)
            ptype = fm_dir.name[len("fm_"):]
            ours = json.loads(mx.sym.load(str(work / "model-symbol.json")).tojson())
            theirs = json.loads(fm_symbol(d, exp["V"].shape[1], ptype).tojson())
            check(f"B:{fm_dir.name}:symbol.json == MXNet's own FM graph", ours == theirs)
            check(name, close and same_params,
                  f"max |mxnet - localfm| = {np.max(np.abs(scores - exp['scores'])):.2e}"
                  + ("" if same_params else "; params differ"))
        except Exception as exc:
            check(name, False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--localfm-python", required=True, help="interpreter with localfm installed")
    ap.add_argument("--keep", help="write the files here instead of a temp dir (kept)")
    args = ap.parse_args()
    print(f"mxnet {mx.__version__} (numpy {np.__version__}); localfm via {args.localfm_python}")
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mxnet-crosscheck-"))
    try:
        a_dir, b_dir = tmp / "mxnet-wrote", tmp / "localfm-wrote"
        a_dir.mkdir(parents=True, exist_ok=True)
        mxnet_writes(a_dir)
        for r in run_localfm(args.localfm_python, "verify", str(a_dir)):
            check(r["check"], r["ok"], r["detail"])
        for r in run_localfm(args.localfm_python, "write", str(b_dir)):
            check(r["check"], r["ok"], r.get("detail", ""))
        mxnet_reads(b_dir)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    failed = [r for r in results if not r[1]]
    print(f"\nmxnet-crosscheck: {len(results) - len(failed)} passed, {len(failed)} failed -> "
          f"{'PASS' if not failed and results else 'FAIL'}")
    return 0 if results and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
