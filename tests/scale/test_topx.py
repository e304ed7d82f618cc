"""All-users top-x on a real two-node loopback cluster: identical rows, every sink, faults, resume."""
from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time

import numpy as np
import pytest
from tests.scale.hooks import fail, note_worker

from localfm.errors import LocalFMError
from localfm.recommend.recommend import rank
from localfm.recommend.sinks import read_results, write_results
from localfm.scale import recommend_on_cluster

pytestmark = pytest.mark.slow

BATCH, SHARD = 64, 128  # 943 users: 8 shards of 2 batches


def _single(rep, seen, k, out, **kwargs):
    write_results(str(out), rank(rep, k=k, seen=seen, batch_size=BATCH, **kwargs))
    return read_results(str(out))


def _single_pruning(rep, seen, k):
    """(scores skipped, scores total) of the single process's exact engine."""
    recs = rank(rep, k=k, seen=seen, batch_size=BATCH)
    for _ in recs:
        pass
    assert recs.stats.scores_total == recs.stats.users * recs.stats.items
    return recs.stats.scores_skipped, recs.stats.scores_total


def test_cluster_is_two_nodes_on_loopback_with_state_in_its_temp_dir(ray_cluster):
    import ray

    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 2
    assert {n["NodeManagerAddress"] for n in alive} == {"127.0.0.1"}
    session = ray._private.worker.global_worker.node.get_session_dir_path()
    assert session.startswith(os.environ["RAY_TMPDIR"] + os.sep)


def test_two_nodes_equal_single_process_row_for_row(ray_cluster, ml100k_model, tmp_path):
    rep, seen = ml100k_model["rep"], ml100k_model["seen"]
    expected = _single(rep, seen, 20, tmp_path / "single.parquet")
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "cluster.parquet"
    run = recommend_on_cluster(rep, k=20, target=str(out), cluster=ray_cluster.address, seen=seen, batch_size=BATCH,
                               shard_users=SHARD, batch_hook=functools.partial(note_worker, str(marks), 0.0))
    got = read_results(str(out))
    assert len(got["rank"]) == 943 * 20
    assert got == expected  # every row: user, rank, item, float64 score
    assert (run.stats.users, run.stats.rows, run.shards, run.workers, run.nodes) == (943, 943 * 20, 8, 2, 2)
    summary = run.summary()
    assert summary["rows"] == 943 * 20 and summary["cluster"]["nodes"] == 2 and summary["exclude_seen"] is True
    # The actors report the exact engine's pruning: the same counts as the single process (pruning is per user).
    skipped, total = _single_pruning(rep, seen, 20)
    assert skipped > 0
    assert (run.stats.scores_skipped, run.stats.scores_total) == (skipped, total)
    assert summary["skipped_fraction"] == round(skipped / total, 4)
    # One actor per node did the work, and the staging area is gone after the commit.
    assert len({p.name.split("-", 1)[1] for p in marks.iterdir()}) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.parquet", "marks", "single.parquet"]

    # The nested layout: one row per user, items list<int32>, scores list<float32>, same ranking.
    import pyarrow as pa
    import pyarrow.parquet as pq

    nested = tmp_path / "nested"
    recommend_on_cluster(rep, k=20, target=str(nested), cluster=ray_cluster.address, seen=seen, batch_size=BATCH,
                         shard_users=SHARD, layout="nested")
    t = pq.read_table(nested)
    assert t.schema.field("items").type == pa.list_(pa.int32())
    assert t.schema.field("scores").type == pa.list_(pa.float32())
    t = t.sort_by("user_id")
    assert t.column("user_id").to_pylist() == sorted(set(expected["user_id"]))
    assert [i for row in t.column("items").to_pylist() for i in row] == expected["item_id"]
    np.testing.assert_array_equal(np.concatenate(t.column("scores").to_numpy(zero_copy_only=False)),
                                  np.asarray(expected["score"], dtype=np.float32))


def test_postgresql_sqlite_and_a_faiss_index(ray_cluster, ml100k_model, pg_url, tmp_path):
    rep, seen = ml100k_model["rep"], ml100k_model["seen"]
    # PostgreSQL: COPY into a staging table, swapped in one transaction, over an older table.
    write_results(pg_url, rank(rep, k=3, batch_size=BATCH), table="recs_cluster")
    write_results(pg_url, rank(rep, k=10, seen=seen, batch_size=BATCH), table="recs_single")
    recommend_on_cluster(rep, k=10, target=pg_url, table="recs_cluster", cluster=ray_cluster.address, seen=seen,
                         batch_size=BATCH, shard_users=SHARD, work_dir=tmp_path / "pgjob")
    assert read_results(pg_url, table="recs_cluster") == read_results(pg_url, table="recs_single")
    assert not (tmp_path / "pgjob").exists()
    # SQLite with an approximate index: built once, broadcast, the same index the single process builds.
    # nprobe "auto" is tuned on the driver, as the single process tunes it.
    single = rank(rep, k=10, seen=seen, batch_size=BATCH, index="faiss.IVFFlat")
    write_results(str(tmp_path / "single.sqlite"), single)
    run = recommend_on_cluster(rep, k=10, target=str(tmp_path / "cluster.sqlite"), cluster=ray_cluster.address,
                               seen=seen, batch_size=BATCH, shard_users=SHARD, index="faiss.IVFFlat")
    assert run.stats.index == "faiss.IVFFlat"
    assert run.stats.nprobe == single.stats.nprobe and run.stats.nprobe["mode"] == "auto"
    assert run.stats.recall == single.stats.recall
    assert read_results(str(tmp_path / "cluster.sqlite")) == read_results(str(tmp_path / "single.sqlite"))


def _wait_for(predicate, timeout=240.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_killed_actor_fails_cleanly_keeps_previous_output_and_resume_finishes(ray_cluster, ml100k_model, tmp_path):
    rep, seen = ml100k_model["rep"], ml100k_model["seen"]
    out = tmp_path / "recs.parquet"
    previous = _single(rep, seen, 5, out)  # an older result that must survive a failed job whole
    expected = _single(rep, seen, 20, tmp_path / "single.parquet")
    marks, work = tmp_path / "marks", tmp_path / "job"
    marks.mkdir()
    common = {"target": str(out), "cluster": ray_cluster.address, "seen": seen, "batch_size": BATCH,
              "shard_users": SHARD, "work_dir": work}
    failure: list[BaseException] = []

    def job() -> None:
        try:
            recommend_on_cluster(rep, k=20, max_retries=0, batch_hook=functools.partial(note_worker, str(marks), 0.5),
                                 **common)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failure.append(exc)

    thread = threading.Thread(target=job)
    thread.start()

    def finished_shards() -> int:
        try:
            return len(json.loads((work / "manifest.json").read_text())["done"])
        except (OSError, ValueError):
            return 0

    _wait_for(lambda: finished_shards() >= 1, what="a finished shard")
    victim = int(next(iter(marks.iterdir())).name.split("-", 1)[0])
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert len(failure) == 1 and isinstance(failure[0], LocalFMError), failure
    message = str(failure[0])
    assert "cluster job failed" in message and "rerun with resume=True" in message and "\n" not in message
    assert read_results(str(out)) == previous  # the old result, whole: nothing of the new one
    done = finished_shards()
    assert 1 <= done < 8

    run = recommend_on_cluster(rep, k=20, resume=True, **common)
    assert run.skipped_shards == done
    assert read_results(str(out)) == expected
    # Pruning counts of the shards finished before the kill come from the manifest: the totals are whole.
    assert (run.stats.scores_skipped, run.stats.scores_total) == _single_pruning(rep, seen, 20)
    assert not work.exists()


def test_killed_actor_is_restarted_and_the_job_completes(ray_cluster, ml100k_model, tmp_path):
    rep, seen = ml100k_model["rep"], ml100k_model["seen"]
    expected = _single(rep, seen, 20, tmp_path / "single.parquet")
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "recs.parquet"
    result: list[object] = []
    # One actor: the rest of the job can only be done by its restart. (With two, Ray may hand the
    # killed actor's batch to the other one and finish before the restarted actor takes any work.)
    thread = threading.Thread(target=lambda: result.append(recommend_on_cluster(
        rep, k=20, target=str(out), cluster=ray_cluster.address, seen=seen, batch_size=BATCH, shard_users=SHARD,
        workers=1, max_retries=2, batch_hook=functools.partial(note_worker, str(marks), 0.3))))
    thread.start()
    _wait_for(lambda: any(marks.iterdir()), what="a started batch")
    killed = next(iter(marks.iterdir())).name.split("-", 1)[0]
    os.kill(int(killed), signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and len(result) == 1
    assert read_results(str(out)) == expected
    # The restarted actor is a new process, and it ranked batches.
    assert {p.name.split("-", 1)[0] for p in marks.iterdir()} - {killed}


def test_an_actor_that_cannot_start_fails_the_job_at_once(ray_cluster, ml100k_model, tmp_path):
    """A broadcast the actors cannot load (here: the staged index of a job to resume, damaged) fails the
    job with one line naming the cause, where Ray Data would restart the failing actor forever."""
    rep, seen = ml100k_model["rep"], ml100k_model["seen"]
    out = tmp_path / "recs.parquet"
    previous = _single(rep, seen, 5, out)
    work = tmp_path / "job"
    common = {"target": str(out), "cluster": ray_cluster.address, "seen": seen, "batch_size": BATCH,
              "shard_users": SHARD, "work_dir": work, "index": "faiss.Flat"}
    with pytest.raises(LocalFMError, match="cluster job failed"):
        recommend_on_cluster(rep, k=10, batch_hook=fail, max_retries=0, **common)
    assert (work / "index.bin").is_file()  # staged for resume, with the manifest
    (work / "index.bin").write_bytes(b"not an index")

    outcome: list[BaseException | object] = []

    def job() -> None:
        try:
            outcome.append(recommend_on_cluster(rep, k=10, resume=True, max_retries=3, **common))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the job hangs on an actor that cannot start"
    assert len(outcome) == 1 and isinstance(outcome[0], LocalFMError), outcome
    message = str(outcome[0])
    assert "a top-x actor could not start" in message and "not a FAISS index" in message, message
    assert "\n" not in message
    assert read_results(str(out)) == previous


def test_cli_ray_flags(ray_cluster, ml100k_model, cli, tmp_path):
    """``localfm recommend --ray ADDRESS`` stores what the single-process command stores."""
    base = ["--quiet", "recommend", "--model", ml100k_model["model"], "--features",
            ml100k_model["data"] / "features.json", "-k", 10, "--exclude-seen", "--batch-size", BATCH]
    code, _, err = cli(*base, "--out", tmp_path / "single.parquet")
    assert code == 0, err
    code, out, err = cli(*base, "--out", tmp_path / "cluster.parquet", "--ray", ray_cluster.address, "--workers", 2)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["rows"] == 9430 and summary["cluster"] == {"layout": "flat", "shards": 1, "skipped_shards": 0,
                                                                "workers": 2, "nodes": 2}
    assert read_results(str(tmp_path / "cluster.parquet")) == read_results(str(tmp_path / "single.parquet"))
    # Library errors come back in the command's vocabulary: the parameter as its flag, exit 2.
    code, _, err = cli(*base, "--out", tmp_path / "x.parquet", "--ray", ray_cluster.address, "--workers", 3)
    assert code == 2 and "--workers: expected 1..2 (actors of `threads` CPUs the nodes can hold), got 3" in err
    code, _, err = cli(*base, "--out", tmp_path / "x.parquet", "--ray", ray_cluster.address, "--threads", 2)
    assert code == 2 and "--threads: 2 per actor, but no node of the cluster has that many CPUs" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.parquet", "single.parquet"]
