"""Compare one stage's local output with the recorded cloud output, against tolerances.

Each ``compare_*`` function returns a :class:`Comparison`: a list of :class:`Check`
(one number or statistic each, with its tolerance and verdict), a side-by-side table
for people, summary statistics for the JSON report, and the series the plots draw.
A comparison passes when every check does; the CLI turns a failure into exit code 3.

Tolerances are absolute unless named otherwise. Their defaults come from what an exact
re-implementation achieves on the real fixture (see docs/parity.md for the evidence):
training curves agree to ~0.001 per epoch, so ±0.005 leaves room for seed noise but
catches a wrong learning rate at the first epochs.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import LocalFMError
from ..progress import progress
from .cloudlog import Neighbors, Predictions, RecordedScores, TrainingMetrics


@dataclass
class Check:
    """One compared quantity. ``ok`` is the verdict against ``tolerance``.

    ``kind`` says how the tolerance applies: ``abs`` (|local - cloud| <= tol), ``min``
    (value >= tol), ``max`` (value <= tol) or ``equal`` (must match exactly).
    """

    name: str
    cloud: float | None
    local: float | None
    tolerance: float | None
    ok: bool
    kind: str = "abs"
    detail: str = ""

    @property
    def abs_diff(self) -> float | None:
        if self.cloud is None or self.local is None:
            return None
        return abs(self.local - self.cloud)

    @property
    def rel_diff(self) -> float | None:
        d = self.abs_diff
        if d is None or self.cloud is None:
            return None
        return d / abs(self.cloud) if self.cloud != 0 else (0.0 if d == 0 else math.inf)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cloud": _num(self.cloud),
            "local": _num(self.local),
            "abs_diff": _num(self.abs_diff),
            "rel_diff": _num(self.rel_diff),
            "tolerance": _num(self.tolerance),
            "kind": self.kind,
            "ok": self.ok,
            "detail": self.detail,
        }


def _num(x: float | None) -> float | None | str:
    if x is None:
        return None
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)  # JSON has no NaN/inf; keep them readable instead of invalid
    return x


def abs_check(name: str, cloud: float, local: float, tol: float, detail: str = "") -> Check:
    ok = abs(local - cloud) <= tol and math.isfinite(local)
    return Check(name, float(cloud), float(local), tol, ok, "abs", detail)


def min_check(name: str, value: float, minimum: float, detail: str = "") -> Check:
    ok = (not math.isnan(value)) and value >= minimum
    return Check(name, None, float(value), minimum, ok, "min", detail)


def max_check(name: str, value: float, maximum: float, detail: str = "") -> Check:
    ok = (not math.isnan(value)) and value <= maximum
    return Check(name, None, float(value), maximum, ok, "max", detail)


@dataclass
class Table:
    """Rows for the human-readable side-by-side table (already formatted cells)."""

    title: str
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Comparison:
    """The result of one comparison (training, predictions, knn, models, structure)."""

    kind: str
    title: str
    checks: list[Check] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    worst: list[dict[str, Any]] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failing(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


# --------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainingTolerances:
    """Absolute tolerances on training metrics.

    ``train``: every epoch's train metrics; ``test_accuracy``: test accuracy;
    ``test_cross_entropy``: test cross-entropy; ``test``: every other test metric
    (F1, rmse ...). Defaults are the issue's "test within ±0.01 / ±0.02", read the way
    the FM suite (tests/parity/test_cloud_training.py) reads it.
    """

    train: float = 0.005
    test_accuracy: float = 0.01
    test_cross_entropy: float = 0.01
    test: float = 0.02

    def for_test(self, name: str) -> float:
        if name.endswith("accuracy"):
            return self.test_accuracy
        if name.endswith("cross_entropy"):
            return self.test_cross_entropy
        return self.test


def _fmt(x: float | None, digits: int = 5) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:.{digits}f}"


def _signed(x: float | None, digits: int = 5) -> str:
    if x is None:
        return "-"
    return f"{x:+.{digits}f}"


def compare_training(
    cloud: TrainingMetrics,
    local: TrainingMetrics,
    tol: TrainingTolerances = TrainingTolerances(),
    *,
    metrics: Sequence[str] | None = None,
) -> Comparison:
    """Per-epoch train metrics and final test metrics, cloud vs local.

    Every cloud epoch must exist locally (a missing epoch is a failing check, not a
    silent skip) and every metric the cloud logged for it is compared; metrics only
    one side has are listed in ``notes``.
    """
    comp = Comparison("training", f"training: {cloud.source} vs {local.source}")
    names = list(metrics) if metrics else [n for n in cloud.metric_names]
    if not names and not cloud.test:
        raise LocalFMError(f"{cloud.source}: no training metrics to compare")
    local_names = set(local.metric_names)
    only_cloud = [n for n in names if n not in local_names and local.epochs]
    if only_cloud:
        comp.notes.append(f"metrics logged by the cloud but not locally: {', '.join(only_cloud)}")
    headers = ["epoch"]
    for n in names:
        headers += [f"{_short(n)} cloud", "local", "diff"]
    rows: list[list[str]] = []
    curve: dict[str, dict[str, list[float | None]]] = {n: {"epoch": [], "cloud": [], "local": []} for n in names}
    per_metric_max: dict[str, tuple[float, int]] = {}
    for e in sorted(cloud.epochs):
        c_row, l_row = cloud.epochs[e], local.epochs.get(e)
        row = [str(e)]
        for n in names:
            c = c_row.get(n)
            lv = None if l_row is None else l_row.get(n)
            row += [_fmt(c), _fmt(lv), _signed(None if c is None or lv is None else lv - c)]
            curve[n]["epoch"].append(e)
            curve[n]["cloud"].append(c)
            curve[n]["local"].append(lv)
            if c is None:
                continue
            if lv is None:
                if n not in only_cloud:
                    comp.checks.append(Check(f"train {n} epoch {e}", c, None, tol.train, False, "abs", "missing locally"))
                continue
            check = abs_check(f"train {n} epoch {e}", c, lv, tol.train)
            comp.checks.append(check)
            d = abs(lv - c)
            if n not in per_metric_max or d > per_metric_max[n][0]:
                per_metric_max[n] = (d, e)
        rows.append(row)
    if cloud.epochs:
        comp.tables.append(Table("per-epoch train metrics (cloud vs local)", headers, rows))
    extra = sorted(set(local.epochs) - set(cloud.epochs))
    if extra and cloud.epochs:
        comp.notes.append(f"local run has {len(extra)} epoch(s) the cloud log lacks (from epoch {extra[0]})")

    test_rows: list[list[str]] = []
    for n, c in cloud.test.items():
        lv = local.test.get(n)
        t = tol.for_test(n)
        if lv is None:
            comp.checks.append(Check(f"test {n}", c, None, t, False, "abs", "missing locally"))
            test_rows.append([n, _fmt(c), "-", "-", "-", _fmt(t, 3), "FAIL"])
            continue
        check = abs_check(f"test {n}", c, lv, t)
        comp.checks.append(check)
        test_rows.append([n, _fmt(c), _fmt(lv), _signed(lv - c), _fmt(check.rel_diff, 4), _fmt(t, 3), "ok" if check.ok else "FAIL"])
    if test_rows:
        comp.tables.append(Table("test metrics", ["metric", "cloud", "local", "diff", "rel diff", "tol", "verdict"], test_rows))
    comp.summary = {
        "epochs_cloud": len(cloud.epochs),
        "epochs_local": len(local.epochs),
        "max_abs_diff_per_metric": {n: {"max_abs_diff": d, "epoch": e} for n, (d, e) in per_metric_max.items()},
        "tolerances": {"train": tol.train, "test_accuracy": tol.test_accuracy,
                       "test_cross_entropy": tol.test_cross_entropy, "test": tol.test},
        "cloud": cloud.to_json(),
        "local": local.to_json(),
    }
    comp.series = {"curves": curve, "test": {n: (c, local.test.get(n)) for n, c in cloud.test.items()}}
    return comp


def _short(name: str) -> str:
    return {
        "binary_classification_accuracy": "acc",
        "binary_classification_cross_entropy": "xent",
        "binary_f_1.000": "f1",
    }.get(name, name)


def compare_hyperparameters(cloud: TrainingMetrics, local_defaults: dict[str, Any], *, title: str = "container defaults") -> Comparison:
    """The cloud container's default-conf.json (from the log) against localfm's defaults.

    A local default that differs from the container's silently changes every run that
    does not set it, so each public hyperparameter the log lists is one check.
    """
    comp = Comparison("hyperparameters", title)
    rows = []
    for name, cval in cloud.defaults.items():
        if name.startswith("_") or name not in local_defaults:
            continue
        lval = local_defaults[name]
        same = _same_value(cval, lval)
        comp.checks.append(Check(f"default {name}", None, None, None, same, "equal", f"cloud {cval!r} local {lval!r}"))
        rows.append([name, str(cval), str(lval), "ok" if same else "FAIL"])
    comp.tables.append(Table("container default hyperparameters", ["name", "cloud", "local", "verdict"], rows))
    return comp


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(b, bool) or str(a).lower() in ("true", "false"):
        return str(a).lower() == str(b).lower()
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    except (TypeError, ValueError):
        return str(a) == str(b)


def compare_channels(
    cloud: TrainingMetrics, local: dict[str, tuple[int, int]], mini_batch_size: int
) -> Comparison:
    """Input channels byte for byte: the container logs each pass's bytes and batches.

    ``local[name] = (bytes, rows)`` of the local channel files. Equal byte counts mean
    the local data preparation wrote the same RecordIO-protobuf stream the job read
    (the strongest cheap evidence that both sides trained on the same data); batches
    must be ``ceil(rows / mini_batch_size)`` (the container pads the last batch).
    """
    comp = Comparison("channels", "input channels (RecordIO-protobuf bytes and batches)")
    rows = []
    for name, stats in cloud.channels.items():
        if name not in local:
            continue
        nbytes, nrows = local[name]
        batches = -(-nrows // mini_batch_size)
        ok_b = nbytes == stats["num_bytes"]
        ok_n = batches == stats["num_examples"]
        comp.checks.append(Check(f"{name} channel bytes", float(stats["num_bytes"]), float(nbytes), None, ok_b, "equal",
                                 f"cloud read {stats['num_bytes']} bytes per pass, local channel has {nbytes}"))
        comp.checks.append(Check(f"{name} channel batches", float(stats["num_examples"]), float(batches), None, ok_n,
                                 "equal", f"cloud {stats['num_examples']} batches, local {nrows} rows / "
                                          f"mini_batch_size {mini_batch_size} = {batches}"))
        rows.append([name, str(stats["num_bytes"]), str(nbytes), str(stats["num_examples"]), str(batches),
                     "ok" if ok_b and ok_n else "FAIL"])
    comp.tables.append(Table("channels", ["channel", "cloud bytes", "local bytes", "cloud batches", "local batches", "verdict"], rows))
    return comp


# --------------------------------------------------------------------------- predictions
@dataclass(frozen=True)
class PredictionTolerances:
    """``score``: max |score diff| per row; labels must agree wherever the cloud score is
    further than ``label_band`` from the 0.5 threshold (rows inside the band may flip on
    float noise and are reported, not failed)."""

    score: float = 1e-4
    label_band: float = 1e-4


def compare_predictions(
    cloud: Predictions, local: Predictions, tol: PredictionTolerances = PredictionTolerances(), *, worst_n: int = 5
) -> Comparison:
    """Row-by-row FM inference output (same input file, cloud vs local)."""
    if len(cloud) != len(local):
        raise LocalFMError(
            f"{local.source}: {len(local)} predictions but {cloud.source} has {len(cloud)}; expected outputs of the same input"
        )
    if len(cloud) == 0:
        raise LocalFMError(f"{cloud.source}: no predictions")
    c = np.asarray(cloud.scores, dtype=np.float64)
    lo = np.asarray(local.scores, dtype=np.float64)
    diff = np.abs(lo - c)
    comp = Comparison("predictions", f"predictions: {cloud.source} vs {local.source}")
    worst = np.argsort(-diff, kind="stable")[:worst_n]
    comp.checks.append(max_check("max |score diff|", float(diff.max()), tol.score, f"row {int(worst[0])}"))
    rel = diff / np.maximum(np.abs(c), 1e-12)
    summary: dict[str, Any] = {
        "rows": int(len(c)),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "p99_abs_diff": float(np.quantile(diff, 0.99)),
        "max_rel_diff": float(rel.max()),
        "pearson": _pearson(c, lo),
        "spearman": _spearman(c, lo),
        "cloud_mean": float(c.mean()),
        "local_mean": float(lo.mean()),
    }
    if cloud.fields != local.fields:
        comp.checks.append(
            Check("record fields", None, None, None, False, "equal", f"cloud {cloud.fields} local {local.fields}")
        )
    if cloud.labels is not None and local.labels is not None:
        cl = np.asarray(cloud.labels)
        ll = np.asarray(local.labels)
        mismatch = cl != ll
        in_band = np.abs(c - 0.5) <= tol.label_band
        hard = mismatch & ~in_band
        summary["label_agreement"] = float(1.0 - mismatch.mean())
        summary["label_mismatches_near_threshold"] = int((mismatch & in_band).sum())
        comp.checks.append(
            max_check("predicted_label mismatches", float(hard.sum()), 0.0, f"outside ±{tol.label_band} of 0.5")
        )
    comp.summary = summary
    comp.worst = [
        {"row": int(i), "cloud": float(c[i]), "local": float(lo[i]), "abs_diff": float(diff[i])} for i in worst
    ]
    comp.tables.append(
        Table(
            "scores",
            ["statistic", "value"],
            [[k, _fmt(v, 6) if isinstance(v, float) else str(v)] for k, v in summary.items()],
        )
    )
    comp.series = {"cloud_scores": c, "local_scores": lo}
    return comp


def compare_recorded_scores(
    recorded: RecordedScores,
    local_scores: np.ndarray,
    *,
    tol_row: float = 0.05,
    min_ks_pvalue: float = 0.01,
) -> Comparison:
    """A handful of recorded cloud scores vs the local scores of the whole test set.

    When the cloud kept only a few scores (a notebook's head/tail), the useful parity
    statements are: the label rule holds (``predicted_label == score >= 0.5``), the
    local score of each recorded row is close, and the recorded scores are a plausible
    sample of the local score distribution (two-sample Kolmogorov-Smirnov test).
    """
    from scipy import stats

    local_scores = np.asarray(local_scores, dtype=np.float64)
    n = len(local_scores)
    # Negative rows come from a tail longer than test_records; numpy would wrap them
    # around to the end of the local scores and compare the wrong rows silently.
    bad = [r for r in recorded.rows if not 0 <= r < n]
    if bad:
        raise LocalFMError(f"recorded scores refer to row {bad[0]} but the local test set has rows 0..{n - 1}")
    comp = Comparison("recorded_scores", f"batch-transform scores: {len(recorded.rows)} recorded rows vs {n} local")
    rows = []
    for r, lab, s in zip(recorded.rows, recorded.labels, recorded.scores):
        rule = 1.0 if s >= 0.5 else 0.0
        comp.checks.append(Check(f"cloud label rule row {r}", None, None, None, rule == lab, "equal", f"label {lab} score {s}"))
        ls = float(local_scores[r])
        check = abs_check(f"score row {r}", s, ls, tol_row)
        comp.checks.append(check)
        local_label = 1.0 if ls >= 0.5 else 0.0
        rows.append([str(r), _fmt(lab, 1), _fmt(s, 6), _fmt(ls, 6), _signed(ls - s, 6), _fmt(local_label, 1), "ok" if check.ok else "FAIL"])
    ks = stats.ks_2samp(np.asarray(recorded.scores), local_scores)
    comp.checks.append(min_check("KS p-value (recorded vs local score distribution)", float(ks.pvalue), min_ks_pvalue))
    comp.tables.append(
        Table("recorded batch-transform rows", ["row", "cloud label", "cloud score", "local score", "diff", "local label", "verdict"], rows)
    )
    rec = np.asarray(recorded.scores)
    comp.summary = {
        "recorded_rows": recorded.rows,
        "ks_statistic": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
        "recorded_mean": float(rec.mean()),
        "local_mean": float(local_scores.mean()),
        "local_std": float(local_scores.std()),
        "local_positive_rate": float((local_scores >= 0.5).mean()),
        "max_abs_row_diff": float(max(abs(local_scores[r] - s) for r, s in zip(recorded.rows, recorded.scores))),
    }
    comp.series = {
        "cloud_scores": rec,
        "local_scores": local_scores[np.asarray(recorded.rows)],
        "local_all": local_scores,
    }
    return comp


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


# --------------------------------------------------------------------------- k-NN
@dataclass(frozen=True)
class KNNTolerances:
    """``min_mean_overlap``: mean overlap@k over queries; ``min_overlap``: worst query;
    ``distance``: max |distance diff| by rank, relative to max(1, |cloud distance|);
    ``min_label_agreement``: share of queries with the same predicted_label."""

    min_mean_overlap: float = 0.95
    min_overlap: float = 0.0
    distance: float = 1e-3
    min_label_agreement: float = 0.95


def best_first(labels: list[float], distances: list[float], index_metric: str) -> tuple[list[float], list[float]]:
    """Reorder one verbose k-NN record best match first.

    SageMaker lists distances ascending for every metric: for L2 that is best first,
    for INNER_PRODUCT (and COSINE, a normalised inner product) the best match is last.
    """
    if index_metric.upper() == "L2":
        return labels, distances
    return labels[::-1], distances[::-1]


def overlap_at_k(a: Sequence[float], b: Sequence[float], k: int) -> float:
    """|top-k(a) ∩ top-k(b)| / k, counting repeated labels as a multiset."""
    if k <= 0:
        raise LocalFMError(f"overlap@k: expected k >= 1, got {k}")
    ca, cb = Counter(a[:k]), Counter(b[:k])
    return sum((ca & cb).values()) / k


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman correlation of the ranks of the labels both lists share (None if < 2 or repeats)."""
    if len(set(a)) != len(a) or len(set(b)) != len(b):
        return None
    pos_b = {x: i for i, x in enumerate(b)}
    common = [x for x in a if x in pos_b]
    if len(common) < 2:
        return None
    ra = np.argsort(np.argsort([a.index(x) for x in common]))
    rb = np.argsort(np.argsort([pos_b[x] for x in common]))
    n = len(common)
    d2 = float(((ra - rb) ** 2).sum())
    return 1.0 - 6.0 * d2 / (n * (n * n - 1))


def compare_knn(
    cloud: Neighbors,
    local: Neighbors,
    tol: KNNTolerances = KNNTolerances(),
    *,
    k: int | None = None,
    index_metric: str = "L2",
    worst_n: int = 5,
) -> Comparison:
    """Per-query neighbour lists: overlap@k, rank correlation, distance error, labels."""
    if len(cloud) != len(local):
        raise LocalFMError(f"{local.source}: {len(local)} queries but {cloud.source} has {len(cloud)}; expected the same queries")
    if len(cloud) == 0:
        raise LocalFMError(f"{cloud.source}: no queries")
    if index_metric.upper() not in ("L2", "INNER_PRODUCT", "COSINE"):
        raise LocalFMError(f"index_metric: expected L2, INNER_PRODUCT or COSINE, got {index_metric!r}",
                           param="index_metric")
    kk = k or max(len(x) for x in cloud.labels)
    overlaps, rhos, dist_err, label_same = [], [], [], []
    for q in progress(range(len(cloud)), desc="knn queries", unit="query"):
        cl, cd = best_first(cloud.labels[q], cloud.distances[q], index_metric)
        ll, ld = best_first(local.labels[q], local.distances[q], index_metric)
        kq = min(kk, len(cl)) or 1
        overlaps.append(overlap_at_k(cl, ll, kq))
        rhos.append(rank_correlation(cl[:kq], ll[:kq]))
        m = min(kq, len(cd), len(ld))
        if m:
            c = np.asarray(cd[:m])
            lo = np.asarray(ld[:m])
            dist_err.append(float((np.abs(lo - c) / np.maximum(1.0, np.abs(c))).max()))
        else:
            dist_err.append(0.0)
        a, b = cloud.predicted[q], local.predicted[q]
        label_same.append((math.isnan(a) and math.isnan(b)) or a == b)
    ov = np.asarray(overlaps)
    de = np.asarray(dist_err)
    valid_rho = [r for r in rhos if r is not None]
    comp = Comparison("knn", f"k-NN: {cloud.source} vs {local.source} (overlap@{kk}, {index_metric})")
    comp.checks.append(min_check(f"mean overlap@{kk}", float(ov.mean()), tol.min_mean_overlap))
    comp.checks.append(min_check(f"min overlap@{kk}", float(ov.min()), tol.min_overlap, f"query {int(ov.argmin())}"))
    comp.checks.append(max_check("max distance error (relative)", float(de.max()), tol.distance, f"query {int(de.argmax())}"))
    agreement = float(np.mean(label_same))
    comp.checks.append(min_check("predicted_label agreement", agreement, tol.min_label_agreement))
    comp.summary = {
        "queries": len(cloud),
        "k": kk,
        "index_metric": index_metric.upper(),
        "overlap_mean": float(ov.mean()),
        "overlap_min": float(ov.min()),
        "queries_full_overlap": float((ov == 1.0).mean()),
        "rank_correlation_mean": float(np.mean(valid_rho)) if valid_rho else None,
        "rank_correlation_min": float(np.min(valid_rho)) if valid_rho else None,
        "distance_error_mean": float(de.mean()),
        "distance_error_max": float(de.max()),
        "label_agreement": agreement,
    }
    order = np.lexsort((-de, ov))[:worst_n]
    comp.worst = [
        {"query": int(q), "overlap": float(ov[q]), "rank_correlation": rhos[q], "distance_error": float(de[q])}
        for q in order
    ]
    comp.tables.append(
        Table(
            "neighbours",
            ["statistic", "value"],
            [[key, _fmt(v, 6) if isinstance(v, float) else str(v)] for key, v in comp.summary.items()],
        )
    )
    comp.series = {"overlap": ov, "distance_error": de}
    return comp


# --------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelTolerances:
    """``score``: max |score diff| over sampled pairs; ``min_rank_corr``: Spearman of scores."""

    score: float = 1e-4
    min_rank_corr: float = 0.99


def fm_pair_scores(w0: float, w: np.ndarray, V: np.ndarray, pairs: np.ndarray, binary: bool) -> np.ndarray:
    """FM score of one-hot pairs x = e_i + e_j: w0 + w_i + w_j + <V_i, V_j> (sigmoid if binary).

    With one-hot user/item columns (the recommender layout) a pair *is* a (user, item)
    interaction, so this is exactly what batch transform would return for it.
    """
    i, j = pairs[:, 0], pairs[:, 1]
    z = float(w0) + w[i].astype(np.float64) + w[j] + np.einsum("nk,nk->n", V[i].astype(np.float64), V[j].astype(np.float64))
    return 1.0 / (1.0 + np.exp(-z)) if binary else z


def sample_pairs(feature_dim: int, n: int, seed: int = 0, *, split: int | None = None) -> np.ndarray:
    """``n`` random column pairs (i != j). With ``split`` (the number of user columns),
    i is drawn from [0, split) and j from [split, feature_dim): user-item pairs."""
    rng = np.random.default_rng(seed)
    if feature_dim < 2:
        raise LocalFMError(f"model has feature_dim {feature_dim}; expected at least 2 to sample pairs")
    if split is not None:
        # Out of range used to fall back to random pairs silently: not what was asked.
        if not 0 < split < feature_dim:
            raise LocalFMError(
                f"split {split}: expected 1..{feature_dim - 1} (the model has feature_dim {feature_dim})", param="split"
            )
        return np.stack([rng.integers(0, split, n), rng.integers(split, feature_dim, n)], axis=1)
    i = rng.integers(0, feature_dim, n)
    j = (i + rng.integers(1, feature_dim, n)) % feature_dim
    return np.stack([i, j], axis=1)


def compare_models(
    cloud: Any,
    local: Any,
    tol: ModelTolerances = ModelTolerances(),
    *,
    n_pairs: int = 2000,
    seed: int = 0,
    binary: bool | None = None,
    split: int | None = None,
    cloud_name: str = "cloud",
    local_name: str = "local",
    worst_n: int = 5,
) -> Comparison:
    """Two FM weight sets (:class:`FMWeights`-like): shapes, weights, sampled pair scores.

    Factor matrices are only identified up to rotation, so the verdict rests on shapes
    and on the scores of sampled pairs; raw weight differences are reported as context.
    """
    comp = Comparison("models", f"models: {cloud_name} vs {local_name}")
    cw, lw = np.asarray(cloud.w).reshape(-1), np.asarray(local.w).reshape(-1)
    cV, lV = np.asarray(cloud.V), np.asarray(local.V)
    same_shape = cw.shape == lw.shape and cV.shape == lV.shape
    comp.checks.append(
        Check("shapes", None, None, None, same_shape, "equal", f"cloud w{cw.shape} V{cV.shape}, local w{lw.shape} V{lV.shape}")
    )
    ct, lt = getattr(cloud, "predictor_type", None), getattr(local, "predictor_type", None)
    if ct and lt and ct != lt:
        comp.checks.append(Check("predictor_type", None, None, None, False, "equal", f"cloud {ct} local {lt}"))
    comp.summary = {
        "cloud_shape": {"w": list(cw.shape), "V": list(cV.shape)},
        "local_shape": {"w": list(lw.shape), "V": list(lV.shape)},
        "predictor_type": ct or lt,
    }
    if not same_shape:
        return comp
    if binary is None:
        binary = (ct or lt or "binary_classifier") == "binary_classifier"
    pairs = sample_pairs(cw.shape[0], n_pairs, seed, split=split)
    cs = fm_pair_scores(float(cloud.w0), cw, cV, pairs, binary)
    ls = fm_pair_scores(float(local.w0), lw, lV, pairs, binary)
    diff = np.abs(ls - cs)
    rho = _spearman(cs, ls)
    comp.checks.append(max_check(f"max |score diff| over {n_pairs} pairs", float(diff.max()), tol.score))
    # Constant scores have no ranking; identical constant scores still agree perfectly.
    rho_checked = 1.0 if math.isnan(rho) and float(diff.max()) == 0.0 else rho
    comp.checks.append(min_check("score rank correlation (Spearman)", rho_checked, tol.min_rank_corr))
    comp.summary.update(
        {
            "pairs": n_pairs,
            "seed": seed,
            "score": "sigmoid" if binary else "raw",
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "spearman": rho,
            "pearson": _pearson(cs, ls),
            "w0_diff": float(local.w0) - float(cloud.w0),
            "w_max_abs_diff": float(np.abs(lw - cw).max()),
            "V_max_abs_diff": float(np.abs(lV - cV).max()),
        }
    )
    worst = np.argsort(-diff, kind="stable")[:worst_n]
    comp.worst = [
        {"pair": [int(pairs[q, 0]), int(pairs[q, 1])], "cloud": float(cs[q]), "local": float(ls[q]), "abs_diff": float(diff[q])}
        for q in worst
    ]
    comp.tables.append(
        Table("model weights and pair scores", ["statistic", "value"],
              [[k, _fmt(v, 6) if isinstance(v, float) else str(v)] for k, v in comp.summary.items()])
    )
    comp.series = {"cloud_scores": cs, "local_scores": ls}
    return comp
