"""Smoke tests for benchmarks/: tiny sizes, so the harness keeps working (not speed tests).

The real measurements run with ``python -m benchmarks``; here every benchmark runs at
``--smoke`` size into a temporary folder and the results files are checked for the
fields the docs quote. Helpers whose correctness the numbers depend on (the exact
baselines, the agreement check, the independent FM scorer, the RSS launcher) get
direct checks.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from benchmarks import BENCHMARKS
from benchmarks.__main__ import main
from benchmarks.baselines import (
    agreement,
    ranking_metrics,
    topk_exact64,
    topk_faiss_flat,
    topk_numpy,
    topk_torch,
    train_naive_fm,
)
from benchmarks.data import BenchConfig, Ratings
from benchmarks.machine import run_command
from benchmarks.results import summary_markdown


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = main(["--smoke", "--out", str(out)])
    return code, out


@pytest.mark.slow
def test_smoke_run_writes_every_results_file(smoke_results):
    code, out = smoke_results
    assert code == 0
    for name in BENCHMARKS:
        doc = json.loads((out / f"{name}.json").read_text())
        assert doc["benchmark"] == name
        assert doc["mode"] == "smoke"
        m = doc["machine"]
        assert m["cores"] >= 1 and m["versions"]["numpy"] and m["versions"]["python"]
        assert "date" in doc and isinstance(doc["headline"], list)
        for png in doc.get("plots", []):
            assert (out / png).stat().st_size > 1000


@pytest.mark.slow
def test_smoke_retrieval_engines_agree_with_float64(smoke_results):
    _, out = smoke_results
    doc = json.loads((out / "retrieval.json").read_text())
    assert doc["sgemm_peak"]["peak_gflops"] > 0
    engines = doc["exact"][0]["engines"]
    assert {"faiss_flat_ip", "numpy", "torch"} <= set(engines)
    for name, row in engines.items():
        assert row["agreement_vs_float64"]["exact_up_to_ties"] == 1.0, name
        assert row["gflops"] > 0 and row["median_s"] > 0


@pytest.mark.slow
def test_smoke_end_to_end_stages_succeed(smoke_results):
    _, out = smoke_results
    doc = json.loads((out / "end_to_end.json").read_text())
    assert doc["pipelines"], doc["notes"]
    for p in doc["pipelines"]:
        assert p["ok"], p
        assert p["sqlite_rows"] and p["sqlite_rows"] > 0
        assert all(s["peak_rss_bytes"] > 0 for s in p["stages"])


@pytest.mark.slow
def test_smoke_end_to_end_synthetic_times_each_stage_and_checks_the_goals(smoke_results):
    _, out = smoke_results
    doc = json.loads((out / "end_to_end.json").read_text())
    syn = next(p for p in doc["pipelines"] if p["name"].startswith("synthetic"))
    by = {s["stage_key"]: s for s in syn["stages"]}
    assert {"prepare", "train", "recommend_parquet"} <= set(by)
    for s in syn["stages"]:
        assert s["cpu_s"] > 0 and len(s["load_average_before"]) == len(s["load_average_after"]) == 3
    assert 0 < by["train"]["epoch_s"] < by["train"]["wall_s"]
    rec = by["recommend_parquet"]
    assert rec["rank_s"] > 0 and rec["sink_s"] > 0 and rec["load_s"] + rec["rank_s"] + rec["sink_s"] < rec["wall_s"]
    assert syn["parquet_rows"] == rec["rows"] > 0
    g = syn["goals"]
    assert g["end_to_end_s"]["value"] == pytest.approx(syn["total_wall_s"])
    assert g["epoch_s"]["value"] == by["train"]["epoch_s"] and g["at_full_size"] is False and g["verdict"] is None
    from benchmarks.results import detail_markdown, readme_markdown

    assert "- goals, synthetic" in detail_markdown(out) and "CPU s" in detail_markdown(out)
    assert "→ Parquet" in readme_markdown(out) and "no verdict: not full size" in readme_markdown(out)


@pytest.mark.slow
def test_summary_markdown_quotes_results(smoke_results):
    _, out = smoke_results
    text = summary_markdown(out)
    assert "| measure | measured | target |" in text
    assert "(quick)" in text  # smoke/quick results are marked as such


@pytest.mark.slow
def test_report_readme_and_replot_read_results_files(smoke_results, capsys):
    _, out = smoke_results
    assert main(["--report", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "## Latest results" in report and "retrieval.json" in report
    assert main(["--readme", "--out", str(out)]) == 0
    readme = capsys.readouterr().out
    assert readme.startswith("## Performance") and "retrieval_vs_size.png" in readme
    png = out / "retrieval_vs_size.png"
    png.unlink()
    assert main(["--replot", "--only", "retrieval", "--out", str(out)]) == 0
    assert png.stat().st_size > 1000


def test_report_without_results_says_so(tmp_path, capsys):
    assert main(["--readme", "--out", str(tmp_path)]) == 0
    assert "No results yet" in capsys.readouterr().out


def test_exact_baselines_match_reference():
    rng = np.random.default_rng(1)
    U = rng.standard_normal((70, 9), dtype=np.float32)
    I = rng.standard_normal((300, 9), dtype=np.float32)
    ref_s, ref_i = topk_exact64(U, I, 15)
    for fn in (topk_numpy, topk_torch, topk_faiss_flat):
        s, i = fn(U, I, 15) if fn is topk_faiss_flat else fn(U, I, 15, chunk=16)
        assert i.shape == (70, 15)
        assert np.all(np.diff(s, axis=1) <= 1e-6)  # best first
        agree = agreement(i, ref_s, ref_i, U, I)
        assert agree["exact_up_to_ties"] == 1.0 and agree["recall"] == 1.0


def test_agreement_catches_wrong_results():
    rng = np.random.default_rng(2)
    U = rng.standard_normal((40, 8), dtype=np.float32)
    I = rng.standard_normal((200, 8), dtype=np.float32)
    ref_s, ref_i = topk_exact64(U, I, 10)
    wrong = ref_i.copy()
    worst = np.argmin(U @ I.T, axis=1)
    wrong[:, -1] = worst
    a = agreement(wrong, ref_s, ref_i, U, I)
    assert a["exact_up_to_ties"] == 0.0
    assert a["recall"] == pytest.approx(0.9)


@pytest.mark.slow
def test_naive_fm_learns_and_can_be_cut_short():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 1000)
    items = rng.integers(0, 20, 1000)
    y = ((users % 2) == (items % 2)).astype(np.float32)  # a pure interaction signal
    fields = np.stack([users, 30 + items], 1)
    first = train_naive_fm(fields, y, 50, 4, 50, epochs=1, lr=0.05)
    later = train_naive_fm(fields, y, 50, 4, 50, epochs=10, lr=0.05)
    assert later.final_loss < first.final_loss
    cut = train_naive_fm(fields, y, 50, 4, 10, epochs=100, max_seconds=0.05)
    assert cut.samples < 100_000 and cut.samples_per_s > 0


def test_ranking_metrics_perfect_and_popularity_cases():
    # 3 users, 5 items; user u liked item u+2 in test, items 0/1 seen in train by everyone.
    tu = np.array([0, 0, 1, 1, 2, 2])
    ti = np.array([0, 1, 0, 1, 0, 1])
    su, si, sr = np.array([0, 1, 2]), np.array([2, 3, 4]), np.array([5.0, 4.0, 4.0])
    oracle = np.zeros((3, 5))
    oracle[[0, 1, 2], [2, 3, 4]] = 1.0
    m = ranking_metrics(lambda u: oracle[u], 3, 5, tu, ti, su, si, sr, k=1)
    assert m["precision@1"] == 1.0 and m["ndcg@1"] == 1.0 and m["users_evaluated"] == 3
    # scores that prefer seen items: they are excluded, so the best unseen one still wins
    seen_first = oracle.copy()
    seen_first[:, :2] = 10.0
    assert ranking_metrics(lambda u: seen_first[u], 3, 5, tu, ti, su, si, sr, k=1)["precision@1"] == 1.0
    bad = 1.0 - oracle
    assert ranking_metrics(lambda u: bad[u], 3, 5, tu, ti, su, si, sr, k=1)["recall@1"] == 0.0


@pytest.mark.slow
def test_quality_scorer_matches_fm_decision_function():
    import scipy.sparse as sp

    from benchmarks.quality import design, entity_matrices, score_function
    from localfm.fm.model import FactorizationMachine

    rng = np.random.default_rng(3)
    r = Ratings(rng.integers(0, 12, 400), rng.integers(0, 9, 400), rng.integers(1, 6, 400).astype(np.float32), 12, 9)
    uf = sp.random(12, 4, density=0.5, format="csr", dtype=np.float32, random_state=1)
    itf = sp.random(9, 3, density=0.5, format="csr", dtype=np.float32, random_state=2)
    X = design(r, uf, itf)
    fm = FactorizationMachine(feature_dim=X.shape[1], num_factors=4, predictor_type="regressor", epochs=2,
                              mini_batch_size=50, seed=0).fit(X, r.ratings)
    Xu, Xi = entity_matrices(12, 9, uf, itf)
    S = score_function(fm.w0_, fm.w_, fm.V_, Xu, Xi)(np.arange(12))
    np.testing.assert_allclose(S[r.users, r.items], fm.decision_function(X), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_rss_launcher_measures_the_child_not_the_parent():
    big = run_command([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
    small = run_command([sys.executable, "-c", "pass"])
    assert big["returncode"] == 0 and small["returncode"] == 0
    assert big["peak_rss_bytes"] > 300 * 2**20
    assert small["peak_rss_bytes"] < 150 * 2**20


def test_presets_and_bad_mode():
    from localfm.errors import LocalFMError

    assert BenchConfig.preset("full").synthetic_rows == 5_000_000
    assert BenchConfig.preset("quick", synthetic_rows=7000).synthetic_rows == 7000
    with pytest.raises(LocalFMError):
        BenchConfig.preset("huge")
    with pytest.raises(LocalFMError, match="--rows"):
        BenchConfig.preset("quick", synthetic_rows=5)


def test_cli_rejects_bad_sizes_with_exit_2(capsys):
    assert main(["--smoke", "--rows", "0"]) == 2
    assert "--rows" in capsys.readouterr().err


def test_train_throughput_compares_thread_counts(capsys):
    """``python -m benchmarks.train_throughput --threads 1,2``: one row per count, bytes compared, load recorded."""
    from benchmarks.data import synthetic_ratings
    from benchmarks.train_throughput import compare_threads

    data = synthetic_ratings(3000, 300, 200, seed=0)
    res = compare_threads(data, [1, 2], num_factors=4, batch=1000, repeat=1)
    assert list(res["runs"]) == ["1", "2"] and res["rows"] == 3000
    for run in res["runs"].values():
        assert run["same_bytes_as_1"] is True
        assert run["wall_s_median"] > 0 and run["cpu_s_median"] >= 0 and len(run["wall_s_runs"]) == 1
        # the epoch alone (the training log's time) is part of the fit's wall time
        assert 0 < run["epoch_s_median"] < run["wall_s_median"] and len(run["epoch_s_runs"]) == 1
    assert res["runs"]["1"]["speedup_vs_1"] == 1.0 == res["runs"]["1"]["epoch_speedup_vs_1"]
    assert len(res["load_average_before"]) == len(res["load_average_after"]) == 3


def test_train_throughput_main_prints_cases_and_a_side_by_side_table(capsys):
    """The lead's quick run: chosen cases only, JSON on stdout with a markdown table of 1 vs 2 threads."""
    import json

    from benchmarks.train_throughput import THREAD_CASES, main

    assert ("ml100k", 1000) in THREAD_CASES and ("synthetic", 5000) in THREAD_CASES
    assert main(["--data", "synthetic", "--rows", "3000", "--batch", "500,1000", "--repeat", "1",
                 "--factors", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(c["data"], c["mini_batch_size"]) for c in out["cases"]] == [("synthetic", 500), ("synthetic", 1000)]
    lines = out["table"].splitlines()
    assert "1 thr fit wall (cpu), epoch" in lines[0] and "2 vs 1: fit, epoch" in lines[0] and "load before / after" in lines[0]
    assert len(lines) == 2 + 2 and lines[2].startswith("| synthetic | 3,000 | ") and "| yes |" in lines[2]


def test_link_probe_parts_on_one_thread():
    """The probe's compiled parts, without pinning: a ping of no moves leaves the counter alone,
    and the buffer pass on one thread reads what each round wrote."""
    from benchmarks.thread_scaling import _pass_buffer, _ping

    counter = np.zeros(8, np.int64)
    assert _ping(counter, 0, 0) == 0 and counter[0] == 0
    buf = np.zeros(16, np.float64)
    # one thread in both parts: round r writes r + 1 everywhere, then sums it
    assert _pass_buffer(counter, buf, -1, 3) == 16 * (1 + 2 + 3) and buf[0] == 3


def test_link_probe_on_one_cpu_records_none(tmp_path, monkeypatch):
    """With one usable CPU there is no link to probe: ``core_link`` is None, and ``--link-only``
    still writes its report (a sample of None, no cases) instead of failing."""
    import benchmarks.thread_scaling as ts

    monkeypatch.setattr(ts.os, "sched_getaffinity", lambda pid: {0})
    assert ts.core_link(10, 1) is None
    out = tmp_path / "link.json"
    assert ts.main(["--link-only", "--samples", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["core_link"] == [None] and report["cases"] == []


def test_core_link_hands_the_counter_and_the_buffer_over_between_two_pinned_threads(tmp_path):
    """The link probe: two pinned players finish (each waits for every move of the other), and
    ``--link-only`` writes its samples and no cases. Pinning needs two CPUs; CI's machines have
    two, a one-CPU machine runs the two tests above instead."""
    from benchmarks.thread_scaling import _pinned_pair, _ping, main

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to pin the two players to (the one-CPU path is tested above)")
    cpus = sorted(os.sched_getaffinity(0))[:2]
    assert _pinned_pair(_ping, (cpus[0], cpus[1]), lambda me: (me, 500)) > 0
    out = tmp_path / "link.json"
    # tiny counts: spinning threads crawl when a busy neighbour shares their CPU (CI runs 2 workers)
    assert main(["--link-only", "--samples", "2", "--interval", "0", "--round-trips", "200", "--handoffs", "5",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["cases"] == [] and len(report["core_link"]) == 2
    assert all(x["cpus"] == cpus for x in report["core_link"])


@pytest.mark.parametrize("flag", [["--samples", "0"], ["--interval", "-1"], ["--round-trips", "0"],
                                  ["--handoffs", "0"]])
def test_link_probe_options_are_checked_before_measuring(flag, capsys):
    from benchmarks.thread_scaling import main

    with pytest.raises(SystemExit) as info:
        main(["--link-only", *flag])
    assert info.value.code == 2 and "must be positive" in capsys.readouterr().err


def test_thread_scaling_runs_the_trainers_step_on_disjoint_rows(tmp_path):
    """``python -m benchmarks.thread_scaling``: both cases, 1 and 2 threads, on a cold and a hot table;
    the Adam case really steps the table (with the trainer's own compiled step)."""
    import numpy as np

    from benchmarks.thread_scaling import _adam_rows, main

    out = tmp_path / "ts.json"
    assert main(["--rows", "200000", "--features", "5000", "--repeat", "1", "--round-trips", "200", "--handoffs", "5",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(c["table"], c["case"]) for c in report["cases"]] == [
        ("cold", "adam"), ("cold", "touch"), ("hot", "adam"), ("hot", "touch")]
    for c in report["cases"]:
        assert c["threads_1"]["wall_s"] > 0 and c["threads_2"]["wall_s"] > 0 and c["speedup_2_vs_1"] > 0
    assert len(report["load_average_before"]) == 3
    if len(os.sched_getaffinity(0)) >= 2:  # probed before and after the cases
        assert len(report["core_link"]) == 2
        assert all(x["round_trip_ns"] > 0 and x["handoff_ms"] > 0 and x["same_cpu_ms"] > 0 for x in report["core_link"])
    P = np.zeros((4, 3, 5), np.float32)
    G = np.ones((64, 5), np.float32)
    _adam_rows(P, G, np.array([1, 3]), np.float32(0.1), np.float32(1e-8), np.float32(-1.0), False)
    assert np.all(P[[1, 3], 0] != 0) and np.all(P[[0, 2]] == 0)  # touched rows stepped, others untouched
    assert np.all(P[[1, 3], 2] > 0)  # Adam's second moment
