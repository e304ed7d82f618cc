"""benchmarks.gpu: the harness that measures the torch engines on a GPU.

There is no GPU here, so it runs with ``--device cpu`` (a dry run of every step: the figures
mean nothing, the file's fields and the tables built from them are what is checked).
"""
from __future__ import annotations

import json

import pytest

from benchmarks import gpu
from benchmarks.results import detail_markdown, readme_markdown, summary_markdown


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    code = gpu.main(["--device", "cpu", "--rows", "60000", "--users", "3000", "--items", "900", "--subset", "20000",
                     "--batches", "512", "1024", "--repeats", "2", "--sample", "100", "--profile-rows", "20000", "--big-items", "20000",
                     "--out", str(out)])
    return code, out, json.loads((out / "gpu.json").read_text())


@pytest.mark.slow
def test_dry_run_records_what_the_docs_quote(dry_run):
    code, _, doc = dry_run
    assert code == 0
    tr, rk = doc["training"], doc["ranking"]
    assert tr["rows"] == 60_000 and len(tr["first"]["epoch_s"]) == 2 and tr["same_bytes_twice"] is True
    assert tr["same_bytes_eager"] is True and tr["eager"]["epoch_s"]
    assert tr["first"]["cuda_graph"] is False  # no GPU: no graph, and the file says so
    sub = tr["subset_vs_cpu_torch_engine"]
    assert sub["rows"] == 20_000 and sub["max_abs_metric_diff"] < 1e-6
    assert set(rk["by_batch"]) == {"512", "1024"} and all(len(r["runs_s"]) == 2 for r in rk["by_batch"].values())
    assert rk["vs_cpu_engine"]["identical_id_lists"] == 1.0  # the same CPU engine on both sides
    assert rk["excluded_pairs"] > 0 and doc["ceilings"]["copy_gb_per_s"] > 0
    assert [r["target"] for r in doc["headline"]] == ["≤ 1 s", "≤ 2 s"]
    lc = doc["large_catalogue"]
    assert (lc["items"], lc["identical_id_lists_vs_cpu"]) == (20_000, 1.0) and lc["seconds"] > 0


@pytest.mark.slow
def test_gpu_rows_join_the_readme_and_docs_tables_only_with_a_results_file(dry_run, tmp_path):
    _, out, doc = dry_run
    assert "lent" not in readme_markdown(tmp_path)  # no gpu.json: no row
    (tmp_path / "gpu.json").write_text(json.dumps(doc))
    readme = readme_markdown(tmp_path)
    rows = [line for line in readme.splitlines() if line.startswith("|") and "on a lent" in line]
    assert len(rows) == 2 and "| ≤ 1 s |" in rows[0] and "| ≤ 2 s |" in rows[1]
    assert "no CUDA graph" in rows[1]
    assert "### gpu" in detail_markdown(tmp_path) and "identical id lists vs the CPU engine" in detail_markdown(tmp_path)
    assert "on a GPU (cpu)" in summary_markdown(tmp_path)
