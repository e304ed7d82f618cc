"""``localfm evaluate``: every input kind judged the same way, baselines, outputs, bad input → exit 2."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from localfm.data.features import FeatureSpace
from localfm.experiments.protocol import load_protocol, rank_model, rank_popularity
from localfm.experiments.report import ranking_from_knn, ranking_from_table

from .conftest import random_fm


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    """Embedded synthetic MovieLens prepared with implicit labels, plus a random FM of the right shape."""
    from localfm.cli import main

    root = tmp_path_factory.mktemp("evaluate")
    assert main(["--quiet", "prepare", "movielens", "--split", "ua", "--label", "implicit", "--negatives", "2",
                 "--out", str(root / "data")]) == 0
    dim = FeatureSpace.load(root / "data" / "features.json").feature_dim
    return root / "data", random_fm(root / "model.tar.gz", dim, factors=6, seed=4)


def _eval(cli, data: Path, *args) -> tuple[int, str, str]:
    return cli("--quiet", "evaluate", "--features", data / "features.json",
               "--test", data / "test_interactions.parquet", *args)


def _metrics(path: Path) -> dict:
    return json.loads(path.read_text())["systems"]


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".sqlite", ".parquet", ".jsonl"])
def test_each_sink_scores_like_the_model_itself(cli, prepared, tmp_path: Path, suffix: str) -> None:
    data, model = prepared
    recs = tmp_path / f"recs{suffix}"
    code, _, err = cli("--quiet", "recommend", "--model", model, "--features", data / "features.json",
                       "-k", "20", "--exclude-seen", "--out", recs)
    assert code == 0, err
    out = tmp_path / "e.json"
    code, stdout, err = _eval(cli, data, "--model", f"fm={model}", "--recommendations", f"stored={recs}",
                              "-k", "5", "20", "--json", out)
    assert code == 0, err
    systems = _metrics(out)
    assert set(systems) == {"fm", "stored", "popularity"}
    assert systems["stored"]["metrics"] == systems["fm"]["metrics"]
    assert systems["fm"]["metrics"]["20"]["ndcg"]["low"] <= systems["fm"]["metrics"]["20"]["ndcg"]["value"]
    assert "ndcg@5" in stdout and "ndcg@20" in stdout and "stored" in stdout


def test_knn_out_is_judged_on_the_same_candidates(cli, prepared, tmp_path: Path) -> None:
    """A cloud k-NN list does not exclude rated items: evaluate drops them before cutting to k."""
    data, model = prepared
    protocol = load_protocol(data / "features.json", data / "train_interactions.parquet",
                             data / "test_interactions.parquet")
    space = protocol.space
    ranked = rank_model(model, protocol, 10)
    by_user = {u: r for u, r in zip(protocol.user_ids.tolist(), ranked)}
    lines = []
    for u in space.user_ids.tolist():
        row = by_user.get(u)
        items = [] if row is None else [int(space.item_ids[i]) for i in row if i >= 0]
        pos = int(np.searchsorted(protocol.user_ids, u))
        if row is not None and protocol.seen[pos].nnz:  # a rated item first, as the cloud would list it
            items = [int(space.item_ids[protocol.seen[pos].indices[0]])] + items
        lines.append(json.dumps({"predicted_label": 0.0, "labels": [float(i) for i in items],
                                 "distances": [float(-n) for n in range(len(items))]}))
    knn = tmp_path / "users.protobuf.out"
    knn.write_text("\n".join(lines) + "\n")
    rec, info = ranking_from_knn(protocol, knn, 10)
    np.testing.assert_array_equal(rec, ranked)
    assert info["rows_seen_dropped"] > 0
    out = tmp_path / "e.json"
    code, _, err = _eval(cli, data, "--model", f"fm={model}", "--knn-out", f"cloud={knn}", "--json", out,
                         "--baselines", "none")
    assert code == 0, err
    systems = _metrics(out)
    assert systems["cloud"]["metrics"] == systems["fm"]["metrics"]


def test_table_reader_keeps_unknown_items_as_misses(prepared, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data, _ = prepared
    protocol = load_protocol(data / "features.json", data / "train_interactions.parquet",
                             data / "test_interactions.parquet")
    u = int(protocol.user_ids[0])
    good = int(protocol.space.item_ids[protocol.relevant[0][0]])
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"user_id": [u, u], "rank": [1, 2], "item_id": [999_999, good],
                             "score": [1.0, 0.5]}), path)
    rec, info = ranking_from_table(protocol, str(path), 3)
    assert rec[0].tolist() == [-2, protocol.relevant[0][0], -1]  # unknown item keeps rank 1, never a hit
    assert (rec[1:] == -1).all() and info["rows_unknown_item"] == 1


@pytest.mark.slow
def test_popularity_and_als_baselines_plot_and_json(cli, prepared, tmp_path: Path) -> None:
    pytest.importorskip("implicit")
    data, _ = prepared
    out, out2, plots = tmp_path / "e.json", tmp_path / "e2.json", tmp_path / "plots"
    code, _, err = _eval(cli, data, "--baselines", "popularity,als", "--als-factors", "8", "--json", out,
                         "--plot", plots, "--bootstrap", "50")
    assert code == 0, err
    code, _, err = _eval(cli, data, "--baselines", "popularity,als", "--als-factors", "8", "--json", out2,
                         "--bootstrap", "50")
    assert code == 0, err
    assert _metrics(out) == _metrics(out2)  # seeded: ALS and the bootstrap
    assert (plots / "evaluate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(out.read_text())
    protocol = load_protocol(data / "features.json", data / "train_interactions.parquet",
                             data / "test_interactions.parquet")
    assert doc["protocol"]["test_users"] == protocol.n_users
    pop = rank_popularity(protocol, 10)
    # popularity never recommends a training item and follows the training counts
    assert not protocol.seen.toarray()[np.arange(protocol.n_users)[:, None], pop].any()
    c = protocol.train_counts[pop]
    assert (np.diff(c, axis=1) <= 0).all()


def test_ml100k_popularity_reproduces_the_issue(cli, ml100k_dir: Path, tmp_path: Path) -> None:
    """Issue 11: popularity NDCG@10 on ua (count of all training ratings) is 0.133 +/- 0.003."""
    code, _, err = cli("--quiet", "prepare", "movielens", ml100k_dir, "--split", "ua", "--label", "binary:4",
                       "--columns", "train", "--drop-unseen", "--out", tmp_path / "ua")
    assert code == 0, err
    out = tmp_path / "e.json"
    code, _, err = cli("--quiet", "evaluate", "--features", tmp_path / "ua" / "features.json",
                       "--test", ml100k_dir / "ua.test", "--json", out, "--bootstrap", "100")
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert doc["protocol"]["test_users"] == 934
    assert abs(doc["systems"]["popularity"]["metrics"]["10"]["ndcg"]["value"] - 0.133) <= 0.003


@pytest.mark.parametrize("args, needle", [
    (["--baselines", "none"], "nothing to evaluate"),
    (["--baselines", "popularity,bpr"], "'bpr'"),
    (["-k", "0"], "--k"),
    (["--bootstrap", "-1"], "--bootstrap"),
    (["--recommendations", "{tmp}/recs.csv"], ".csv"),
    (["--recommendations", "{tmp}/missing.parquet"], "missing.parquet"),
    (["--knn-out", "{tmp}/short.out"], "k-NN records"),
    (["--model", "a={model}", "--model", "a={model}"], "used twice"),
    (["--json", "{tmp}"], "is a directory"),
    (["--model", "{tmp}/wrong.tar.gz"], "feature_dim"),
    (["--test", "{tmp}/none.parquet"], "none.parquet"),
    (["--relevant-min-rating", "9"], "nothing to evaluate"),
])
def test_bad_input_exits_2(cli, prepared, tmp_path: Path, args, needle) -> None:
    data, model = prepared
    (tmp_path / "short.out").write_text('{"labels": [1.0], "distances": [0.5]}\n')
    random_fm(tmp_path / "wrong.tar.gz", 7)
    args = [a.format(tmp=tmp_path, model=model) for a in args]
    code, _, err = _eval(cli, data, *args)
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1
