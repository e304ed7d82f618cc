"""``localfm recommend`` end to end: prepare → model → recommend → stored rows == brute force."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from localfm.errors import LocalFMError
from localfm.recommend.recommend import recommend_all
from localfm.recommend.sinks import read_results
from tests.cli.conftest import random_fm


def _model(path: Path, feature_dim: int, factors: int = 8, seed: int = 0, ptype: str = "binary_classifier") -> Path:
    return random_fm(path, feature_dim, factors=factors, seed=seed, predictor_type=ptype)


@pytest.fixture(scope="module")
def demo(synthetic_side, tmp_path_factory):
    """The embedded synthetic MovieLens, prepared with side features, plus a random-weight FM."""
    root, space = synthetic_side
    model = _model(tmp_path_factory.mktemp("recommend-model") / "model.tar.gz", space.feature_dim)
    return root, space, model


def _brute_force(model: Path, space, users=None):
    from localfm.io.artifacts import load_fm

    weights = load_fm(model)
    users = space.user_ids if users is None else np.asarray(users)
    n_items = len(space.item_ids)
    X = space.encode(np.repeat(users, n_items), np.tile(space.item_ids, len(users)))
    return users, weights.raw_scores(X).reshape(len(users), n_items)


def _sqlite_rows(db: Path, table: str = "recommendations"):
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"select user_id, rank, item_id, score from {table} order by user_id, rank").fetchall()
    finally:
        conn.close()


def _assert_matches(rows, users, S, space, k, banned=None):
    by_user = {}
    for u, r, i, s in rows:
        by_user.setdefault(u, []).append((r, i, s))
    assert sorted(by_user) == sorted(users.tolist())
    item_pos = {v: n for n, v in enumerate(space.item_ids.tolist())}
    for row, u in enumerate(users.tolist()):
        scores = S[row].copy()
        if banned is not None:
            scores[banned[row]] = -np.inf
        got = by_user[u]
        assert [r for r, _, _ in got] == list(range(1, k + 1))
        np.testing.assert_allclose([s for _, _, s in got], np.sort(scores)[::-1][:k], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose([scores[item_pos[i]] for _, i, _ in got], [s for _, _, s in got], rtol=1e-5, atol=1e-5)


def test_default_sqlite_exact_equals_brute_force_with_side_features(cli, demo, tmp_path):
    root, space, model = demo
    db = tmp_path / "recs.sqlite"
    code, out, err = cli("--quiet", "recommend", "--model", model, "--features", root / "data" / "features.json",
                         "-k", 20, "--out", db)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["rows"] == 20 * len(space.user_ids) and summary["index"] == "exact"
    users, S = _brute_force(model, space)
    _assert_matches(_sqlite_rows(db), users, S, space, 20)


def test_exclude_seen_uses_train_interactions(cli, demo, tmp_path):
    import pyarrow.parquet as pq

    root, space, model = demo
    db = tmp_path / "recs.sqlite"
    code, _, err = cli("--quiet", "recommend", "--model", model, "--features", root / "data" / "features.json",
                       "-k", 10, "--exclude-seen", "--out", db)
    assert code == 0, err
    t = pq.read_table(root / "data" / "train_interactions.parquet")
    users, S = _brute_force(model, space)
    upos = {v: n for n, v in enumerate(users.tolist())}
    ipos = {v: n for n, v in enumerate(space.item_ids.tolist())}
    banned = np.zeros_like(S, dtype=bool)
    for u, i in zip(t.column("user_id").to_pylist(), t.column("item_id").to_pylist()):
        banned[upos[u], ipos[i]] = True
    assert banned.sum() > 0
    _assert_matches(_sqlite_rows(db), users, S, space, 10, banned)


def test_users_allow_deny_sigmoid_jsonl(cli, demo, tmp_path):
    root, space, model = demo
    out_file = tmp_path / "r.jsonl"
    users = space.user_ids[:3]
    allow = ",".join(str(i) for i in space.item_ids[:50])
    (tmp_path / "deny.txt").write_text("\n".join(str(i) for i in space.item_ids[:5]))
    code, _, err = cli("--quiet", "recommend", "--model", model, "--features", root / "data" / "features.json",
                       "-k", 4, "--users", ",".join(map(str, users)), "--allow-items", allow,
                       "--deny-items", "@" + str(tmp_path / "deny.txt"), "--sigmoid", "--out", out_file)
    assert code == 0, err
    recs = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert {r["user_id"] for r in recs} == set(users.tolist()) and len(recs) == 12
    allowed = set(space.item_ids[5:50].tolist())
    assert all(r["item_id"] in allowed and 0 < r["score"] < 1 for r in recs)
    _, S = _brute_force(model, space, users)
    best = 1 / (1 + np.exp(-np.sort(S[0, 5:50])[::-1][:4]))
    np.testing.assert_allclose([r["score"] for r in recs if r["user_id"] == users[0]], best, rtol=1e-6)


def test_unknown_users_error_skip_or_cold_start(cli, demo, tmp_path):
    root, space, model = demo
    feats = root / "data" / "features.json"
    code, _, err = cli("recommend", "--model", model, "--features", feats, "--users", "1,987654", "--out",
                       tmp_path / "a.sqlite")
    assert code == 2 and "987654" in err
    assert not (tmp_path / "a.sqlite").exists()
    code, out, _ = cli("--quiet", "recommend", "--model", model, "--features", feats, "--users", "1,987654",
                       "--unknown-users", "skip", "-k", 2, "--out", tmp_path / "b.sqlite")
    assert code == 0 and json.loads(out)["users"] == 1
    code, out, _ = cli("--quiet", "recommend", "--model", model, "--features", feats, "--users", "1,987654",
                       "--unknown-users", "cold-start", "-k", 2, "--out", tmp_path / "c.sqlite")
    assert code == 0 and json.loads(out)["users"] == 2
    rows = _sqlite_rows(tmp_path / "c.sqlite")
    assert [r[0] for r in rows].count(987654) == 2


def test_bad_input_exits_2_and_keeps_previous_results(cli, demo, tmp_path):
    root, space, model = demo
    feats = root / "data" / "features.json"
    db = tmp_path / "keep.sqlite"
    assert cli("--quiet", "recommend", "--model", model, "--features", feats, "-k", 3, "--out", db)[0] == 0
    before = _sqlite_rows(db)
    wrong = _model(tmp_path / "wrong.tar.gz", space.feature_dim + 3)
    cases = [
        (["--model", wrong], "feature_dim"),
        (["-k", "0"], "k: expected a positive integer"),
        (["-k", "-5"], "k: expected a positive integer"),
        (["--index-metric", "MANHATTAN"], "index_metric"),
        (["--index", "faiss.Annoy"], "index_type"),
        (["--out", tmp_path / "r.csv"], "expected a .sqlite"),
    ]
    for extra, msg in cases:
        args = ["recommend", "--model", model, "--features", feats, "--out", db, *extra]
        code, _, err = cli(*args)
        assert code == 2, (extra, err)
        assert msg in err and len(err.strip().splitlines()) == 1, err
    # A locked database: exit 2 after the lock timeout, previous results intact.
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code, _, err = cli("recommend", "--model", model, "--features", feats, "-k", 5, "--out", db,
                           "--lock-timeout", "0.1")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 2 and "locked" in err
    assert _sqlite_rows(db) == before
    # An unwritable target (parent is a file).
    (tmp_path / "f").write_text("x")
    code, _, err = cli("recommend", "--model", model, "--features", feats, "--out", tmp_path / "f" / "r.sqlite")
    assert code == 2 and "cannot" in err


def test_non_utf8_id_file_is_bad_input_not_a_crash(cli, demo, tmp_path):
    """--users-file / --allow-items @FILE with bytes that are not UTF-8 used to exit 1 (UnicodeDecodeError)."""
    root, _, model = demo
    feats = root / "data" / "features.json"
    junk = tmp_path / "ids.txt"
    junk.write_bytes(b"\xff\xfe\x81\n")
    for extra, what in ((["--users-file", junk], "--users-file"), (["--allow-items", f"@{junk}"], "--allow-items")):
        code, _, err = cli("recommend", "--model", model, "--features", feats, "--out", tmp_path / "r.sqlite", *extra)
        assert code == 2, err
        assert what in err and "not UTF-8" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.sqlite").exists()


def test_nonpositive_threads_and_negative_lock_timeout_are_bad_input(cli, demo, tmp_path):
    """--threads -1 used to run silently on one thread; --lock-timeout -1 reached the database."""
    root, _, model = demo
    feats = root / "data" / "features.json"
    for extra, msg in ((["--threads", "0"], "--threads"), (["--threads", "-1"], "--threads"),
                       (["--lock-timeout", "-1"], "--lock-timeout")):
        code, _, err = cli("recommend", "--model", model, "--features", feats, "--out", tmp_path / "r.sqlite", *extra)
        assert code == 2 and msg in err, (extra, err)
    assert not (tmp_path / "r.sqlite").exists()


def test_exclude_seen_with_undecodable_interactions_is_bad_input(cli, demo, tmp_path):
    """A CSV whose id column is not valid UTF-8 used to escape as pyarrow's ArrowInvalid (exit 1)."""
    root, _, model = demo
    bad = tmp_path / "seen.csv"
    bad.write_bytes(b"user_id,item_id\n\xff,\x81\n")
    code, _, err = cli("recommend", "--model", model, "--features", root / "data" / "features.json",
                       "--exclude-seen", "--interactions", bad, "--out", tmp_path / "r.sqlite")
    assert code == 2 and "seen.csv" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.sqlite").exists()


def test_user_named_twice_gets_one_set_of_rows(cli, demo, tmp_path):
    """A user in both --users and --users-file used to be ranked twice: every (user, rank) row stored twice."""
    root, space, model = demo
    u = space.user_ids[:3].tolist()
    (tmp_path / "users.txt").write_text(f"{u[1]}\n{u[2]}\n")
    db = tmp_path / "r.sqlite"
    code, out, err = cli("--quiet", "recommend", "--model", model, "--features", root / "data" / "features.json",
                         "-k", 4, "--users", f"{u[0]},{u[1]}", "--users-file", tmp_path / "users.txt", "--out", db)
    assert code == 0, err
    assert json.loads(out)["users"] == 3
    rows = _sqlite_rows(db)
    assert len(rows) == 12 and len({(r[0], r[1]) for r in rows}) == 12
    users, S = _brute_force(model, space, u)
    _assert_matches(rows, users, S, space, 4)


def test_nan_model_exits_2(cli, demo, tmp_path):
    from localfm.io.artifacts import FMWeights, save_fm

    root, space, _ = demo
    d = space.feature_dim
    V = np.zeros((d, 4), np.float32)
    V[5, 1] = np.nan
    save_fm(tmp_path / "nan.tar.gz", FMWeights(0.0, np.zeros(d), V, "binary_classifier"))
    code, _, err = cli("recommend", "--model", tmp_path / "nan.tar.gz", "--features",
                       root / "data" / "features.json", "--out", tmp_path / "r.sqlite")
    assert code == 2 and "NaN" in err
    assert not (tmp_path / "r.sqlite").exists()


def test_approximate_index_reports_recall(cli, demo, tmp_path):
    root, space, model = demo
    code, out, err = cli("--quiet", "recommend", "--model", model, "--features", root / "data" / "features.json",
                         "-k", 10, "--index", "faiss.IVFFlat", "--exclude-seen", "--out", tmp_path / "r.parquet")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["index"] == "faiss.IVFFlat" and 0.0 < summary["recall"]["recall"] <= 1.0


@pytest.mark.slow
def test_postgresql_output(cli, demo, tmp_path):
    from tests.pgserver import start

    from localfm.recommend.sinks import read_results

    server, reason = start()
    if server is None:
        pytest.skip(reason)
    try:
        root, space, model = demo
        code, out, err = cli("--quiet", "recommend", "--model", model, "--features", root / "data" / "features.json",
                             "-k", 5, "--out", server.url, "--table", "recs")
        assert code == 0, err
        db = tmp_path / "same.sqlite"
        cli("--quiet", "recommend", "--model", model, "--features", root / "data" / "features.json", "-k", 5,
            "--out", db)
        pg_rows = read_results(server.url, table="recs")
        lite = read_results(str(db))
        assert pg_rows["user_id"] == lite["user_id"] and pg_rows["item_id"] == lite["item_id"]
        np.testing.assert_allclose(pg_rows["score"], lite["score"], rtol=1e-12)
    finally:
        server.stop()


@pytest.mark.slow
def test_ml100k_top100_all_users_equals_brute_force(cli, ml100k_dir, tmp_path):
    """Done-when: top-100 for all 943 users with the cloud fixture's data setup (random-weight stand-in)."""
    from localfm.data.features import FeatureSpace

    data = tmp_path / "ml100k"
    code, _, err = cli("--quiet", "prepare", "movielens", str(ml100k_dir), "--split", "ua", "--label", "binary:4",
                       "--columns", "train", "--drop-unseen", "--order", "file", "--out", data)
    assert code == 0, err
    space = FeatureSpace.load(data / "features.json")
    assert space.feature_dim == 2623
    model = _model(tmp_path / "model.tar.gz", 2623, factors=64, seed=3)
    db = tmp_path / "recs.sqlite"
    code, out, err = cli("--quiet", "recommend", "--model", model, "--features", data / "features.json",
                         "-k", 100, "--out", db)
    assert code == 0, err
    assert json.loads(out)["rows"] == 94300
    # Brute force on every (user, item) pair. For one-hot rows the FM formula reduces to
    # w0 + w_u + w_i + <v_u, v_i>; that dense form is checked against the general
    # FMWeights.raw_scores on a sample of pairs, then used for all 1.58M pairs.
    from localfm.io.artifacts import load_fm

    w = load_fm(model)
    uc = space.user_offset + np.arange(len(space.user_ids))
    ic = space.item_offset + np.arange(len(space.item_ids))
    V = w.V.astype(np.float64)
    S = w.w0 + w.w[uc].astype(np.float64)[:, None] + w.w[ic].astype(np.float64)[None, :] + V[uc] @ V[ic].T
    rng = np.random.default_rng(0)
    su, si = rng.integers(0, len(uc), 2000), rng.integers(0, len(ic), 2000)
    np.testing.assert_allclose(S[su, si], w.raw_scores(space.encode(space.user_ids[su], space.item_ids[si])),
                               rtol=1e-9, atol=1e-9)
    _assert_matches(_sqlite_rows(db), space.user_ids, S, space, 100)


@pytest.mark.slow
def test_ml100k_trained_model_exact_excluding_seen_and_approximate_recall(cli, ml100k_dir, cloud_fixture, tmp_path):
    """A model trained here with the cloud job's hyperparameters (3 epochs instead of 30 to stay fast)."""
    from localfm.data.features import FeatureSpace
    from localfm.io.artifacts import load_fm

    data = tmp_path / "ml100k"
    assert cli("--quiet", "prepare", "movielens", str(ml100k_dir), "--split", "ua", "--label", "binary:4",
               "--columns", "train", "--drop-unseen", "--order", "file", "--out", data)[0] == 0
    hps = json.loads((cloud_fixture / "cloud-results.json").read_text())["hyperparameters_final"]
    given = {name: hps[name] for name in ("feature_dim", "num_factors", "predictor_type", "mini_batch_size")}
    given["epochs"] = "3"
    args = ["--quiet", "train", "--train", data / "train.protobuf", "--model-dir", tmp_path / "model", "--quiet-log",
            "--seed", "1"]
    for name, value in given.items():
        args += ["--hp", f"{name}={value}"]
    code, _, err = cli(*args)
    assert code == 0, f"localfm train failed: {err.strip()[-200:]}"
    model = tmp_path / "model" / "model.tar.gz"
    space = FeatureSpace.load(data / "features.json")
    db = tmp_path / "recs.sqlite"
    code, out, err = cli("--quiet", "recommend", "--model", model, "--features", data / "features.json", "-k", 100,
                         "--exclude-seen", "--out", db)
    assert code == 0, err
    w = load_fm(model)
    uc = space.user_offset + np.arange(len(space.user_ids))
    ic = space.item_offset + np.arange(len(space.item_ids))
    V = w.V.astype(np.float64)
    S = w.w0 + w.w[uc].astype(np.float64)[:, None] + w.w[ic].astype(np.float64)[None, :] + V[uc] @ V[ic].T
    import pyarrow.parquet as pq

    t = pq.read_table(data / "train_interactions.parquet")
    banned = np.zeros_like(S, dtype=bool)
    banned[np.searchsorted(space.user_ids, t.column("user_id").to_numpy()),
           np.searchsorted(space.item_ids, t.column("item_id").to_numpy())] = True
    _assert_matches(_sqlite_rows(db), space.user_ids, S, space, 100, banned)
    code, out, err = cli("--quiet", "recommend", "--model", model, "--features", data / "features.json", "-k", 100,
                         "--exclude-seen", "--index", "faiss.IVFFlat", "--out", tmp_path / "ivf.parquet")
    assert code == 0, err
    recall = json.loads(out)["recall"]
    assert recall["k"] == 100 and recall["users"] == 943 and 0.0 < recall["recall"] <= 1.0


def test_python_recommend_all_equals_the_cli(cli, demo, tmp_path):
    """The CLI is parse -> recommend_all -> print: the same call from Python stores the same rows,
    with duplicate users named once and unknown ones skipped by the library."""
    root, space, model = demo
    feats = root / "data" / "features.json"
    u = space.user_ids[:4].tolist()
    code, out, err = cli("--quiet", "recommend", "--model", model, "--features", feats, "-k", 6, "--exclude-seen",
                         "--users", ",".join(map(str, [u[0], u[1], 987654, u[1], u[2]])), "--unknown-users", "skip",
                         "--deny-items", ",".join(map(str, space.item_ids[:3])), "--out", tmp_path / "cli.jsonl")
    assert code == 0, err
    recs = recommend_all(str(model), str(feats), k=6, exclude_seen=True,
                         users=[str(u[0]), u[1], 987654, float(u[1]), u[2]], unknown_users="skip",
                         deny_items=space.item_ids[:3])
    summary = recs.write(str(tmp_path / "py.jsonl"))
    cli_summary = json.loads(out)
    assert summary["users"] == cli_summary["users"] == 3 and summary["rows"] == cli_summary["rows"] == 18
    assert {k: v for k, v in cli_summary.items() if k not in ("out", "seconds")} == \
        {k: v for k, v in summary.items() if k != "seconds"}
    a, b = read_results(str(tmp_path / "cli.jsonl")), read_results(str(tmp_path / "py.jsonl"))
    assert a["user_id"] == b["user_id"] and a["item_id"] == b["item_id"]
    with pytest.raises(LocalFMError, match="^users: none of the given users") as info:
        recommend_all(str(model), str(feats), users=[987654], unknown_users="skip")
    assert info.value.param == "users"


def test_k_above_item_count_warns_once_and_strict_exits_2(cli, demo, tmp_path):
    root, space, model = demo
    feats = root / "data" / "features.json"
    n_items = len(space.item_ids)
    k = n_items + 100
    code, out, err = cli("--quiet", "recommend", "--model", model, "--features", feats, "-k", k,
                         "--users", str(space.user_ids[0]), "--batch-size", 1, "--out", tmp_path / "r.jsonl")
    assert code == 0, err
    assert json.loads(out)["rows"] == n_items
    lines = [line for line in err.splitlines() if "warning" in line]
    assert lines == [f"localfm recommend: warning: --k: {k} is more than the {n_items} candidate items; "
                     f"each user gets at most {n_items}"], err
    code, _, err = cli("recommend", "--model", model, "--features", feats, "-k", k, "--strict",
                       "--out", tmp_path / "strict.jsonl")
    assert code == 2 and err.startswith(f"localfm recommend: error: --k: {k} is more than") and "(strict)" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "strict.jsonl").exists()


def test_library_parameter_errors_are_shown_as_flags(cli, demo, tmp_path):
    """recommend_all says `batch_size`; the CLI user reads `--batch-size` (and `--out` for `target`)."""
    root, _, model = demo
    feats = root / "data" / "features.json"
    for extra, flag in ((["--batch-size", "0"], "--batch-size"),
                        (["--nprobe", "x", "--index", "faiss.IVFFlat"], "--nprobe"),
                        (["--recall-users", "-1"], "--recall-users"), (["--out", tmp_path / "r.txt"], "--out"),
                        (["--device", "gpu"], "--device"), (["--device", "cuda", "--index", "faiss.Flat"], "--device")):
        code, _, err = cli("recommend", "--model", model, "--features", feats, *extra)
        assert code == 2, (extra, err)
        assert err.startswith(f"localfm recommend: error: {flag}"), err
    with pytest.raises(LocalFMError, match="^batch_size: expected a positive integer"):
        recommend_all(str(model), str(feats), batch_size=0)


def test_precision_flag_and_hidden_engine_mode_alias(cli, demo, tmp_path, capsys):
    """--engine-mode is the old name of --precision: still accepted, no longer in --help."""
    from localfm.cli import build_parser

    root, space, model = demo
    feats = root / "data" / "features.json"
    results = []
    for flag, value in (("--precision", "fp32"), ("--engine-mode", "fp32"), ("--precision", "bf16")):
        out = tmp_path / f"{flag[2:]}-{value}.jsonl"
        code, _, err = cli("--quiet", "recommend", "--model", model, "--features", feats, "-k", 5, flag, value,
                           "--out", out)
        assert code == 0, err
        results.append(read_results(str(out)))
    assert results[0]["item_id"] == results[1]["item_id"] == results[2]["item_id"]
    args = build_parser().parse_args(["recommend", "--model", "m", "--features", "f", "--engine-mode", "bf16"])
    assert args.precision == "bf16"
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["recommend"]
    text = sub.format_help()
    assert "--precision" in text and "--engine-mode" not in text


def test_device_flag_ranks_on_the_device_or_exits_2(cli, demo, tmp_path):
    """``--device cpu`` is the default engine; a GPU that is not there is one line and exit 2, with
    nothing written; where there is one (the GPU machine), it gives the CPU's ranking."""
    import torch

    root, _, model = demo
    feats = root / "data" / "features.json"
    base = ("--quiet", "recommend", "--model", model, "--features", feats, "-k", 10, "--exclude-seen")
    code, cpu_out, err = cli(*base, "--device", "cpu", "--out", tmp_path / "cpu.jsonl")
    assert code == 0, err
    cpu = read_results(str(tmp_path / "cpu.jsonl"))
    assert '"device"' not in cpu_out  # the summary names a device only when it is not the CPU
    code, _, err = cli(*base, "--device", "CUDA", "--out", tmp_path / "gpu.jsonl")
    if not torch.cuda.is_available():
        assert code == 2 and not (tmp_path / "gpu.jsonl").exists()
        assert err.startswith("localfm recommend: error: --device: 'cuda' asked for, but torch sees no CUDA device")
        assert len(err.strip().splitlines()) == 1, err
        return
    assert code == 0, err
    assert '"device": "cuda"' in _
    gpu = read_results(str(tmp_path / "gpu.jsonl"))
    assert list(gpu["user_id"]) == list(cpu["user_id"])
    same = np.mean(np.asarray(gpu["item_id"]) == np.asarray(cpu["item_id"]))
    assert same > 0.99, same  # only near-ties (float32 rounding of another summation order) may swap
    np.testing.assert_allclose(gpu["score"], cpu["score"], rtol=1e-5, atol=1e-5)
