"""localfm side of scripts/mxnet-crosscheck (runs in the main interpreter).

``verify DIR``: read every ``*.params`` file real MXNet wrote into DIR with
localfm, compare with the values MXNet exported to ``*.npz`` (+ ``*.json``
metadata), and check that localfm re-writes the file byte-identically.
``write DIR``: write NDArray lists and an FM ``model.tar.gz`` with localfm, plus
the expected values, for the MXNet side to load. Prints one JSON line per check.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from localfm.io import ndarray as nd
from localfm.io.artifacts import FMWeights, load_fm, save_fm

DTYPES = ["float32", "float64", "float16", "uint8", "int32", "int8", "int64", "bool"]


def report(name: str, ok: bool, detail: str = "") -> bool:
    print(json.dumps({"check": name, "ok": bool(ok), "detail": detail}), flush=True)
    return ok


def _dense(a):
    if isinstance(a, nd.RowSparse) or sp.issparse(a):
        return a.toarray()
    return a


def verify(directory: Path) -> bool:
    all_ok = True
    for meta_path in sorted(directory.glob("*.meta.json")):
        meta = json.loads(meta_path.read_text())
        case = meta_path.name[: -len(".meta.json")]
        params = directory / f"{case}.params"
        try:
            if meta.get("kind") == "fm-checkpoint":
                w = load_fm(directory / f"{case}-symbol.json")
                exp = np.load(directory / f"{case}.npz")
                ok = (np.array_equal(w.V, exp["v"]) and np.array_equal(w.w, exp["w1_weight"].reshape(-1))
                      and w.w0 == float(exp["w0_weight"][0]) and w.predictor_type == meta["predictor_type"])
                all_ok &= report(f"A:{case}:load_fm", ok, f"predictor_type={w.predictor_type}")
                continue
            data = params.read_bytes()
            loaded = nd.load(data)
            exp = np.load(directory / f"{case}.npz")
            names = meta["names"]
            if names is None:
                ok = isinstance(loaded, list) and len(loaded) == len(meta["dtypes"])
                items = list(enumerate(loaded))
            else:
                ok = isinstance(loaded, dict) and list(loaded) == names
                items = list(loaded.items())
            detail = []
            for i, (key, arr) in enumerate(items):
                want = exp[f"a{i}"]
                got = _dense(arr)
                same = got.shape == want.shape and np.array_equal(got, want.astype(got.dtype) if meta["dtypes"][i] == "bfloat16" else want)
                want_dtype = "float32" if meta["dtypes"][i] == "bfloat16" else meta["dtypes"][i]
                same &= str(got.dtype) == want_dtype
                stype = "row_sparse" if isinstance(arr, nd.RowSparse) else "csr" if sp.issparse(arr) else "default"
                same &= stype == meta["stypes"][i]
                if not same:
                    detail.append(f"{key}: got {got.dtype}{got.shape}/{stype}, want {want_dtype}{want.shape}/{meta['stypes'][i]}")
                ok &= same
            # byte-identical re-write
            to_write = loaded
            if "bfloat16" in meta["dtypes"]:
                wrap = [nd.BFloat16(a) if t == "bfloat16" else a for a, t in zip(
                    loaded if isinstance(loaded, list) else loaded.values(), meta["dtypes"])]
                to_write = wrap if names is None else dict(zip(names, wrap))
            again = nd.dumps(to_write, version=meta.get("version", 2))
            if again != data:
                ok = False
                detail.append("re-written bytes differ")
            all_ok &= report(f"A:{case}", ok, "; ".join(detail))
        except Exception as exc:  # report and continue: the summary must list every case
            all_ok &= report(f"A:{case}", False, f"{type(exc).__name__}: {exc}")
    return all_ok


def write(directory: Path) -> bool:
    rng = np.random.default_rng(20240601)
    directory.mkdir(parents=True, exist_ok=True)

    def emit(case: str, arrays, *, version: int = 2, dtypes=None, stypes=None) -> None:
        values = list(arrays.values()) if isinstance(arrays, dict) else list(arrays)
        nd.save(directory / f"{case}.params", arrays, version=version)
        np.savez(directory / f"{case}.npz", **{
            f"a{i}": (v.values if isinstance(v, nd.BFloat16) else _dense(v)) for i, v in enumerate(values)})
        (directory / f"{case}.meta.json").write_text(json.dumps({
            "names": list(arrays) if isinstance(arrays, dict) else None,
            "version": version,
            "dtypes": dtypes or [str(_dense(v).dtype) for v in values],
            "stypes": stypes or ["default"] * len(values)}))

    def rand(shape, dtype):
        if dtype == "bool":
            return rng.random(shape) < 0.5
        if dtype.startswith(("int", "uint")):
            info = np.iinfo(dtype)
            return rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape).astype(dtype)
        return rng.normal(size=shape).astype(dtype)

    for dt in DTYPES:
        emit(f"dense_{dt}_list", [rand((3, 4), dt), rand((5,), dt), rand((2, 1, 3), dt)])
    emit("dense_named", {"arg:weight": rand((4, 3), "float32"), "aux:moving_mean": rand((3,), "float64"),
                         "naïve ✓": rand((1,), "int64")})
    emit("empty_list", [])
    bf = np.array([1.5, -2.25, 3.0, 0.0078125], dtype=np.float32)
    emit("bfloat16", [nd.BFloat16(bf)], dtypes=["bfloat16"])
    csr = sp.random(6, 9, density=0.3, format="csr", dtype=np.float32, random_state=1)
    rs = nd.RowSparse(rand((2, 4), "float32"), np.array([1, 4]), (6, 4))
    emit("sparse", {"csr": csr, "rs": rs, "dense": rand((2, 2), "float32")},
         stypes=["csr", "row_sparse", "default"])
    emit("csr_float64", [sp.csr_matrix(rand((4, 5), "float64") * (rng.random((4, 5)) < 0.4))],
         stypes=["csr"])
    emit("v3", {"scalar": np.array(2.5, dtype=np.float32), "empty": np.zeros((2, 0), np.float32),
                "m": rand((3, 2), "float32")}, version=3)

    # FM model.tar.gz + a csr batch and the scores localfm's numpy formula gives.
    d, k = 12, 4
    ok = True
    for ptype in ("binary_classifier", "regressor"):
        w = FMWeights(float(rng.normal()), rng.normal(scale=0.5, size=d), rng.normal(scale=0.5, size=(d, k)), ptype)
        out = directory / f"fm_{ptype}"
        out.mkdir(exist_ok=True)
        save_fm(out / "model.tar.gz", w)
        X = sp.random(7, d, density=0.3, format="csr", dtype=np.float32, random_state=3)
        X.data[:] = rng.choice([1.0, 0.5, 2.0], size=X.nnz)
        np.savez(out / "expected.npz", data=X.data, indices=X.indices, indptr=X.indptr,
                 shape=np.array(X.shape), scores=w.predict(X), w0=np.array([w.w0]), w=w.w, V=w.V)
        again = load_fm(out / "model.tar.gz")
        ok &= report(f"B:fm_{ptype}:localfm-roundtrip",
                     np.array_equal(again.V, w.V) and again.predictor_type == ptype)
    return ok


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("verify", "write"):
        print("usage: mxnet_crosscheck_localfm.py verify|write DIR", file=sys.stderr)
        return 2
    ok = verify(Path(argv[1])) if argv[0] == "verify" else write(Path(argv[1]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
