"""Quality on MovieLens 100k: how good are localfm's models, next to simple baselines.

For each split (``ua`` — the cloud fixture's — and ``u1``), trained with the cloud
job's configuration (k=64, mini_batch_size=200, SageMaker defaults otherwise;
``quality_epochs`` epochs):

- regressor on the ratings → test RMSE, vs predicting the training mean;
- binary_classifier on rating >= 4 → test accuracy / F1 / cross-entropy, vs always
  predicting the majority class (accuracy) and the base rate (cross-entropy);
- ranking: top-10 per user from the binary model's scores with already-rated items
  excluded, rating >= 4 in the test split as relevant → precision/recall/NDCG@10, vs
  a popularity ranking (items most often rated >= 4 in training);
- ids-only vs ids + side features (user gender, age bucket, occupation; item genres)
  on the first split.

Test rows whose user or item never occurs in training are dropped (as the cloud job
did); feature columns follow scikit-learn's OneHotEncoder fitted on the training
file. The per-epoch training curve of the ua binary run is stored next to the real
SageMaker job's curve (cloud fixture) for the training-curves plot.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import scipy.sparse as sp

from localfm.progress import progress

from .baselines import popularity_scores, ranking_metrics
from .data import SHARED, BenchConfig, Ratings, ml100k_side_features, ml100k_split

NAME = "quality"
CLOUD_RESULTS = SHARED / "fixtures" / "cloud" / "ml100k-fm-binary-30ep" / "cloud-results.json"


def design(r: Ratings, ufeat: sp.csr_matrix | None, ifeat: sp.csr_matrix | None) -> sp.csr_matrix:
    """Rows [one-hot user | one-hot item | user side | item side] for each rating."""
    X = r.onehot()
    if ufeat is None:
        return X
    return sp.hstack([X, ufeat[r.users], ifeat[r.items]], format="csr", dtype=np.float32)


def entity_matrices(n_users: int, n_items: int, ufeat: sp.csr_matrix | None,
                    ifeat: sp.csr_matrix | None) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Each user's / item's own columns in the same layout (for full score matrices)."""
    nu_s = 0 if ufeat is None else ufeat.shape[1]
    ni_s = 0 if ifeat is None else ifeat.shape[1]
    d = n_users + n_items + nu_s + ni_s
    Xu = sp.csr_matrix((np.ones(n_users, np.float32), (np.arange(n_users), np.arange(n_users))), shape=(n_users, d))
    Xi = sp.csr_matrix((np.ones(n_items, np.float32), (np.arange(n_items), n_users + np.arange(n_items))),
                       shape=(n_items, d))
    if ufeat is not None:
        pad_u = sp.csr_matrix((n_users, n_users + n_items))
        Xu = Xu + sp.hstack([pad_u, ufeat, sp.csr_matrix((n_users, ni_s))], format="csr")
        pad_i = sp.csr_matrix((n_items, n_users + n_items + nu_s))
        Xi = Xi + sp.hstack([pad_i, ifeat], format="csr")
    return Xu.tocsr(), Xi.tocsr()


def score_function(w0: float, w: np.ndarray, V: np.ndarray, Xu: sp.csr_matrix, Xi: sp.csr_matrix):
    """Exact FM score of every (user, item) pair, written independently of localfm.recommend.

    With disjoint user/item columns, FM(x_u + x_i) = w0 + [w·x_u + pairs(x_u)] +
    [w·x_i + pairs(x_i)] + (Vᵀx_u)·(Vᵀx_i), where pairs(x) = ½(‖Vᵀx‖² − Σ x_j²‖v_j‖²).
    """
    V64 = V.astype(np.float64)
    vsq = (V64 ** 2).sum(1)

    def parts(X: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        P = np.asarray(X @ V64)
        const = X @ w.astype(np.float64) + 0.5 * ((P ** 2).sum(1) - X.multiply(X) @ vsq)
        return P, np.asarray(const).ravel()

    Pu, cu = parts(Xu)
    Pi, ci = parts(Xi)

    def fn(users: np.ndarray) -> np.ndarray:
        return Pu[users] @ Pi.T + ci[None, :] + cu[users, None] + w0

    return fn


def _binary_metrics(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, F1 (positive class) and mean cross-entropy of probabilities p."""
    pred = p >= 0.5
    pos = y >= 0.5
    tp = float((pred & pos).sum())
    prec = tp / max(1.0, float(pred.sum()))
    rec = tp / max(1.0, float(pos.sum()))
    pc = np.clip(p, 1e-12, 1 - 1e-12)
    return {
        "accuracy": float((pred == pos).mean()),
        "f1": 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec),
        "cross_entropy": float(-(y * np.log(pc) + (1 - y) * np.log(1 - pc)).mean()),
    }


def _fit(cfg: BenchConfig, ptype: str, X: sp.csr_matrix, y: np.ndarray) -> Any:
    from localfm.fm.model import FactorizationMachine

    return FactorizationMachine(feature_dim=X.shape[1], num_factors=64, predictor_type=ptype,
                                epochs=cfg.quality_epochs, mini_batch_size=200, seed=cfg.seed).fit(X, y)


def evaluate_split(cfg: BenchConfig, split: str, side: bool) -> dict[str, Any]:
    train, test = ml100k_split(cfg, split)
    ufeat = ifeat = None
    if side:
        ufeat, ifeat = ml100k_side_features(cfg, split)
    Xtr, Xte = design(train, ufeat, ifeat), design(test, ufeat, ifeat)
    out: dict[str, Any] = {"split": split, "features": "ids+side" if side else "ids",
                           "feature_dim": int(Xtr.shape[1]), "train_rows": len(train), "test_rows": len(test)}
    # regressor
    reg = _fit(cfg, "regressor", Xtr, train.ratings)
    pred = reg.decision_function(Xte)
    out["regressor"] = {"rmse": float(np.sqrt(np.mean((pred - test.ratings) ** 2)))}
    # binary classifier
    ytr, yte = train.binary(), test.binary()
    clf = _fit(cfg, "binary_classifier", Xtr, ytr)
    logits = clf.decision_function(Xte)
    out["binary"] = _binary_metrics(1.0 / (1.0 + np.exp(-logits.astype(np.float64))), yte)
    hist = getattr(clf, "history_", None)
    if hist is not None:
        out["train_metrics_per_epoch"] = list(getattr(hist, "train_metrics_per_epoch", []))
    # ranking from the binary model's scores
    Xu, Xi = entity_matrices(train.n_users, train.n_items, ufeat, ifeat)
    fn = score_function(clf.w0_, clf.w_, clf.V_, Xu, Xi)
    out["ranking_fm_binary"] = ranking_metrics(fn, train.n_users, train.n_items, train.users, train.items,
                                               test.users, test.items, test.ratings, k=10)
    reg_fn = score_function(reg.w0_, reg.w_, reg.V_, Xu, Xi)
    out["ranking_fm_regressor"] = ranking_metrics(reg_fn, train.n_users, train.n_items, train.users,
                                                  train.items, test.users, test.items, test.ratings, k=10)
    return out


def baselines(cfg: BenchConfig, split: str) -> dict[str, Any]:
    train, test = ml100k_split(cfg, split)
    mean = float(train.ratings.mean())
    base_rate = float(train.binary().mean())
    yte = test.binary()
    pop = popularity_scores(train.items, train.n_items, train.ratings)
    return {
        "split": split,
        "regressor_global_mean": {"rmse": float(np.sqrt(np.mean((test.ratings - mean) ** 2)))},
        "binary_base_rate": _binary_metrics(np.full(len(yte), base_rate), yte),
        "ranking_popularity": ranking_metrics(lambda u: np.broadcast_to(pop, (len(u), len(pop))).copy(),
                                              train.n_users, train.n_items, train.users, train.items,
                                              test.users, test.items, test.ratings, k=10),
    }


def cloud_curve() -> dict[str, Any] | None:
    if not CLOUD_RESULTS.is_file():
        return None
    doc = json.loads(CLOUD_RESULTS.read_text())
    per = doc.get("train_metrics_per_epoch", [])
    return {
        "binary_classification_accuracy": [e["binary_classification_accuracy"] for e in per],
        "binary_classification_cross_entropy": [e["binary_classification_cross_entropy"] for e in per],
    }


def run(cfg: BenchConfig) -> dict[str, Any]:
    payload: dict[str, Any] = {"quick": cfg.quick, "mode": cfg.mode, "epochs": cfg.quality_epochs,
                               "notes": [], "models": [], "baselines": []}
    if not cfg.has_ml100k:
        payload["notes"].append(f"MovieLens 100k not found at {cfg.ml100k_dir}: quality skipped")
        payload["headline"] = []
        return payload
    jobs = [(s, False) for s in cfg.quality_splits] + [(cfg.quality_splits[0], True)]
    for split, side in progress(jobs, desc="quality", disable=False):
        payload["models"].append(evaluate_split(cfg, split, side))
    payload["baselines"] = [baselines(cfg, s) for s in cfg.quality_splits]
    curves: dict[str, Any] = {}
    first = payload["models"][0]
    if first.get("train_metrics_per_epoch"):
        per = first["train_metrics_per_epoch"]
        curves[f"localfm {first['split']} (train)"] = {"metrics": {
            m: [e.get(m) for e in per] for m in ("binary_classification_accuracy",
                                                 "binary_classification_cross_entropy")}}
    cc = cloud_curve()
    if cc:
        curves["SageMaker cloud job ua (train)"] = {"metrics": cc}
    payload["training_curves"] = curves
    if len(curves) == 2:
        local, remote = (c["metrics"] for c in curves.values())
        payload["train_curve_max_abs_diff_vs_cloud"] = {
            m: max(abs(a - b) for a, b in zip(local[m], remote[m])) for m in local if local[m] and remote.get(m)}
    if CLOUD_RESULTS.is_file():
        payload["cloud_test_metrics"] = json.loads(CLOUD_RESULTS.read_text()).get("test_metrics")
    payload["headline"] = headline(payload)
    return payload


def headline(payload: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    base = {b["split"]: b for b in payload.get("baselines", [])}
    for m in payload.get("models", []):
        b = base.get(m["split"])
        tag = f"{m['split']} {m['features']}, {payload['epochs']} epochs"
        out.append({"what": f"RMSE regressor {tag} (global mean: {b['regressor_global_mean']['rmse']:.3f})",
                    "value": m["regressor"]["rmse"], "unit": "", "target": "", "digits": 3})
        out.append({"what": f"accuracy binary {tag} (F1 {m['binary']['f1']:.3f}, cross-entropy "
                    f"{m['binary']['cross_entropy']:.3f}; base rate acc {b['binary_base_rate']['accuracy']:.3f})",
                    "value": m["binary"]["accuracy"], "unit": "", "target": "", "digits": 3})
        r, p = m["ranking_fm_binary"], b["ranking_popularity"]
        out.append({"what": f"NDCG@10 FM binary {tag} (P@10 {r['precision@10']:.3f}, R@10 {r['recall@10']:.3f}; "
                    f"popularity NDCG@10 {p['ndcg@10']:.3f}, P@10 {p['precision@10']:.3f})",
                    "value": r["ndcg@10"], "unit": "", "target": "", "digits": 3})
    cloud = payload.get("cloud_test_metrics")
    ua = next((m for m in payload.get("models", []) if m["split"] == "ua" and m["features"] == "ids"), None)
    if cloud and ua and payload.get("epochs") == 30:
        out.append({"what": "ua binary test accuracy, localfm − real SageMaker job (same data and hyperparameters; "
                    f"cloud {cloud['binary_classification_accuracy']:.4f}, F1 {cloud['binary_f_1.000']:.4f} vs "
                    f"local {ua['binary']['f1']:.4f}, cross-entropy {cloud['binary_classification_cross_entropy']:.4f}"
                    f" vs local {ua['binary']['cross_entropy']:.4f})",
                    "value": ua["binary"]["accuracy"] - cloud["binary_classification_accuracy"], "unit": "",
                    "target": "", "digits": 4})
    return [o for o in out if not (isinstance(o["value"], float) and math.isnan(o["value"]))]


def plot(payload: dict[str, Any], out_dir: Any) -> list[str]:
    from .plots import training_curves

    return [training_curves(payload, out_dir)] if payload.get("training_curves") else []


def tables(payload: dict[str, Any]) -> str:
    """Markdown: the quality metrics per split/features next to the baselines."""
    base = {b["split"]: b for b in payload.get("baselines", [])}
    lines = ["| split | model | RMSE | accuracy | F1 | cross-entropy | P@10 | R@10 | NDCG@10 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in payload.get("models", []):
        r, b = m["ranking_fm_binary"], m["binary"]
        rr = m["ranking_fm_regressor"]
        lines.append(f"| {m['split']} | FM, {m['features']} | {m['regressor']['rmse']:.4f} | {b['accuracy']:.4f} | "
                     f"{b['f1']:.4f} | {b['cross_entropy']:.4f} | {r['precision@10']:.4f} | {r['recall@10']:.4f} | "
                     f"{r['ndcg@10']:.4f} |")
        lines.append(f"| {m['split']} | FM regressor scores for ranking, {m['features']} | | | | | "
                     f"{rr['precision@10']:.4f} | {rr['recall@10']:.4f} | {rr['ndcg@10']:.4f} |")
    for split, b in base.items():
        p = b["ranking_popularity"]
        bb = b["binary_base_rate"]
        lines.append(f"| {split} | baselines: global mean / base rate / popularity | {b['regressor_global_mean']['rmse']:.4f} | "
                     f"{bb['accuracy']:.4f} | {bb['f1']:.4f} | {bb['cross_entropy']:.4f} | {p['precision@10']:.4f} | "
                     f"{p['recall@10']:.4f} | {p['ndcg@10']:.4f} |")
    cloud = payload.get("cloud_test_metrics")
    if cloud:
        lines.append(f"| ua | real SageMaker job (cloud fixture, 30 epochs) | | {cloud['binary_classification_accuracy']:.4f} | "
                     f"{cloud['binary_f_1.000']:.4f} | {cloud['binary_classification_cross_entropy']:.4f} | | | |")
    return "\n".join(lines) + "\n"
