"""`localfm parity` end to end: the real cloud fixture, drift, bad input, S3, plots."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from localfm.errors import LocalFMError
from localfm.parity.compare import TrainingTolerances
from localfm.parity.fixture import LocalTraining, compare_fixture, compare_training_run


def run_cli(*args: object) -> tuple[int, str, str]:
    """``localfm ARGS`` in-process, stdout/stderr captured (same helper as conftest's)."""
    import contextlib
    import io

    from localfm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()

ACC, XENT, F1 = "binary_classification_accuracy", "binary_classification_cross_entropy", "binary_f_1.000"


def _png_ok(path: Path) -> None:
    """The PNG exists, decodes, has a sensible size and is not a blank canvas."""
    import matplotlib.image as mpimg

    assert path.is_file(), path
    assert path.stat().st_size > 10_000, f"{path} is suspiciously small"
    img = mpimg.imread(path)
    assert img.shape[0] >= 300 and img.shape[1] >= 300
    assert float(np.asarray(img[..., :3]).std()) > 0.05, f"{path} looks blank"


# ------------------------------------------------------------------ the real fixture
@pytest.mark.slow
@pytest.mark.parity
def test_fixture_within_tolerance_prints_per_epoch_table(fixture_report) -> None:
    r = fixture_report
    assert r.code == 0, r.stdout[-3000:] + r.stderr
    out = r.stdout
    assert "per-epoch train metrics (cloud vs local)" in out
    header = next(line for line in out.splitlines() if line.startswith("epoch  acc cloud"))
    assert header.split() == ["epoch", "acc", "cloud", "local", "diff", "xent", "cloud", "local", "diff",
                              "f1", "cloud", "local", "diff"]
    lines = out.splitlines()
    start = lines.index(header) + 2
    epochs = [int(line.split()[0]) for line in lines[start:start + 30]]
    assert epochs == list(range(30))
    assert lines[start].split()[1] == "0.55139"  # cloud epoch-0 accuracy, from the real log
    assert "test metrics" in out and "parity: OK" in out.splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parity
def test_fixture_json_report(fixture_report) -> None:
    doc = json.loads(fixture_report.json_path.read_text())
    assert doc["ok"] is True and doc["failing"] == [] and doc["version"] == 1
    kinds = [c["kind"] for c in doc["comparisons"]]
    assert kinds == ["hyperparameters", "channels", "training", "recorded_scores"]
    training = doc["comparisons"][2]
    names = {c["name"] for c in training["checks"]}
    assert {f"train {m} epoch {e}" for m in (ACC, XENT, F1) for e in range(30)} <= names
    assert {f"test {m}" for m in (ACC, XENT, F1)} <= names
    for c in training["checks"]:
        assert c["abs_diff"] <= c["tolerance"]
        assert c["rel_diff"] == pytest.approx(c["abs_diff"] / abs(c["cloud"]))
    # the data preparation reproduces the job's input bytes exactly
    channels = {c["name"]: c for c in doc["comparisons"][1]["checks"]}
    assert channels["train channel bytes"]["local"] == 5796480.0
    assert channels["test channel batches"]["local"] == 48.0
    rec = doc["comparisons"][3]
    assert rec["summary"]["recorded_rows"] == [0, 1, 2, 3, 4, 9423, 9424, 9425, 9426, 9427]
    assert rec["summary"]["max_abs_row_diff"] < 0.05


@pytest.mark.slow
@pytest.mark.parity
def test_fixture_plots_render(fixture_report) -> None:
    assert sorted(p.name for p in fixture_report.plot_dir.iterdir()) == [
        "recorded_scores_score_scatter.png", "training_curves.png"]
    for p in fixture_report.plot_dir.iterdir():
        _png_ok(p)


@pytest.mark.parity
def test_perturbed_factors_lr_drifts_exit_3(byo_run: Path) -> None:
    """factors_lr x10 (0.0001 -> 0.001): the curve leaves the cloud's by epoch 2-3."""
    code, out, _ = run_cli("--quiet", "parity", "fixture", byo_run, "--hp", "factors_lr=0.001", "--epochs", "4")
    assert code == 3, out[-2000:]
    last = out.splitlines()[-1]
    assert last.startswith("parity: DRIFT")
    assert f"train {ACC} epoch 3" in last or f"train {XENT} epoch 3" in last
    assert f"  FAIL train {XENT} epoch 3: cloud 0.655519" in out


@pytest.mark.parity
def test_training_subcommand_runs_locally(cloud_fixture: Path, ml100k_channels: Path, tmp_path: Path) -> None:
    code, out, err = run_cli(
        "--quiet", "parity", "training", "--cloud-log", cloud_fixture / "training-log.txt",
        "--train", ml100k_channels / "train.protobuf", "--epochs", "2", "--json", tmp_path / "r.json",
    )
    assert code == 0, out + err
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [c["kind"] for c in doc["comparisons"]] == ["channels", "training"]
    assert [c["name"] for c in doc["comparisons"][0]["checks"]] == ["train channel bytes", "train channel batches"]
    assert len(doc["comparisons"][1]["checks"]) == 6  # 2 epochs x 3 metrics; --epochs skips test metrics


@pytest.mark.slow
@pytest.mark.parity
def test_prepare_json_rebuilds_channels(cloud_fixture: Path, ml100k_dir: Path, tmp_path: Path) -> None:
    """A run folder may record how its channels were made instead of holding them;
    relative paths in prepare.json are relative to the run folder."""
    import os
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(cloud_fixture / "training-log.txt", run / "training-log.txt")
    args = ["movielens", os.path.relpath(ml100k_dir, run), "--split", "ua", "--label", "binary:4",
            "--columns", "train", "--drop-unseen", "--order", "file"]
    (run / "prepare.json").write_text(json.dumps({"prepare": args}))
    code, out, err = run_cli("--quiet", "parity", "fixture", run, "--epochs", "2", "--json", tmp_path / "r.json")
    assert code == 0, out + err
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [c["kind"] for c in doc["comparisons"]] == ["hyperparameters", "channels", "training"]
    assert all(c["ok"] for c in doc["comparisons"][1]["checks"])
    (run / "prepare.json").write_text(json.dumps({"prepare": args[:3] + ["--split", "u9"]}))
    code, _, err = run_cli("--quiet", "parity", "fixture", run, "--epochs", "2")
    assert code == 2 and "localfm prepare failed" in err
    (run / "prepare.json").write_text(json.dumps({"prepare": "movielens"}))
    code, _, err = run_cli("--quiet", "parity", "fixture", run)
    assert code == 2 and "prepare.json: expected" in err


# ------------------------------------------------------------------ finished local runs
def _local_metrics(cloud_fixture: Path, path: Path, bump: float = 0.0, epoch: int = 5) -> Path:
    res = json.loads((cloud_fixture / "cloud-results.json").read_text())
    rows = res["train_metrics_per_epoch"]
    rows[epoch][F1] += bump
    doc = {"train_metrics_per_epoch": rows, "test_metrics": res["test_metrics"], "predictor_type": "binary_classifier"}
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.slow
@pytest.mark.parity
def test_training_against_finished_local_run(cloud_fixture: Path, tmp_path: Path) -> None:
    good = _local_metrics(cloud_fixture, tmp_path / "good.json", bump=0.004)
    code, out, _ = run_cli("parity", "training", "--cloud-log", cloud_fixture / "training-log.txt",
                           "--local-metrics", good)
    assert code == 0 and "parity: OK" in out
    bad = _local_metrics(cloud_fixture, tmp_path / "bad.json", bump=0.006, epoch=7)
    code, out, _ = run_cli("parity", "training", "--cloud-metrics", cloud_fixture / "cloud-results.json",
                           "--local-metrics", bad, "--plot", tmp_path / "plots")
    assert code == 3
    assert f"parity: DRIFT (1 failing: train {F1} epoch 7)" in out
    _png_ok(tmp_path / "plots" / "training_curves.png")
    # a looser tolerance flag turns the same run green
    code, _, _ = run_cli("parity", "training", "--cloud-log", cloud_fixture / "training-log.txt",
                         "--local-metrics", bad, "--tol-train", "0.01")
    assert code == 0


@pytest.mark.parametrize("sub", ["training", "predictions", "knn", "models", "fixture"])
def test_help(sub: str, capsys: pytest.CaptureFixture[str]) -> None:
    from localfm.cli import main

    with pytest.raises(SystemExit) as info:
        main(["parity", sub, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"localfm parity {sub}" in out and "--json" in out and "--plot" in out


# ------------------------------------------------------------------ bad input: exit 2
@pytest.mark.parametrize("args, message", [
    (["training", "--local-metrics", "x.json"], "give --cloud-log and/or --cloud-metrics"),
    (["training", "--cloud-log", "LOG"], "either --local-metrics"),
    (["training", "--cloud-log", "missing.log", "--local-metrics", "x.json"], "missing.log: file not found"),
    (["training", "--cloud-log", "GARBAGE", "--local-metrics", "GARBAGE"], "no '#quality_metric'"),
    (["training", "--cloud-log", "LOG", "--train", "x", "--hp", "factors_lr=-1"], "factors_lr"),
    (["training", "--cloud-log", "LOG", "--local-metrics", "LOG", "--tol-train", "-1"], "--tol-train"),
    (["fixture", "EMPTY"], "no training log"),
    (["predictions", "--cloud", "GARBAGE"], "line 1 is not JSON"),
    (["knn", "--cloud", "GARBAGE", "--local", "GARBAGE"], "line 1 is not JSON"),
    (["models", "--cloud", "missing.tar.gz", "--local", "missing.tar.gz"], "missing.tar.gz"),
])
def test_bad_input_exit_2(cloud_fixture: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "garbage.txt").write_text("this is not a log\n")
    (tmp_path / "empty").mkdir()
    subst = {"LOG": str(cloud_fixture / "training-log.txt"), "GARBAGE": str(tmp_path / "garbage.txt"),
             "EMPTY": str(tmp_path / "empty")}
    argv = [subst.get(a, a if not a.startswith("missing") else str(tmp_path / a)) for a in args]
    code, out, err = run_cli("parity", *argv)
    assert code == 2, out + err
    assert message in err and err.startswith("localfm parity: error:") and err.count("\n") == 1


def test_fixture_folder_without_channels_is_bad_input(cloud_fixture: Path) -> None:
    code, _, err = run_cli("parity", "fixture", cloud_fixture)
    assert code == 2 and "no training channel" in err


def test_failed_run_keeps_previous_json_report(cloud_fixture: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text('{"previous": true}')
    code, _, _ = run_cli("parity", "training", "--cloud-log", cloud_fixture / "training-log.txt",
                         "--local-metrics", tmp_path / "missing.json", "--json", report)
    assert code == 2
    assert json.loads(report.read_text()) == {"previous": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


# ------------------------------------------------------------------ predictions / models
def _model_and_input(tmp_path: Path, d: int = 30, n: int = 40):  # noqa: ANN202
    import scipy.sparse as sp

    from localfm.io.artifacts import FMWeights, save_fm
    from localfm.io.recordio import write_sparse

    rng = np.random.default_rng(7)
    weights = FMWeights(w0=0.05, w=rng.normal(0, 0.3, d).astype(np.float32),
                        V=rng.normal(0, 0.3, (d, 4)).astype(np.float32), predictor_type="binary_classifier")
    save_fm(tmp_path / "model.tar.gz", weights)
    X = sp.csr_matrix((np.ones(2 * n, np.float32), (np.repeat(np.arange(n), 2), rng.integers(0, d, 2 * n))),
                      shape=(n, d))
    write_sparse(tmp_path / "input.protobuf", X)
    return weights, X


def _write_out(path: Path, scores: np.ndarray, digits: int | None = None) -> Path:
    with open(path, "w") as fh:
        for s in scores:
            s = float(s) if digits is None else round(float(s), digits)
            fh.write(json.dumps({"score": s, "predicted_label": 1.0 if s >= 0.5 else 0.0}) + "\n")
    return path


@pytest.mark.slow
def test_predictions_with_model_and_input(tmp_path: Path) -> None:
    from localfm.fm.model import FactorizationMachine

    weights, X = _model_and_input(tmp_path)
    scores = FactorizationMachine.from_weights(weights).predict(X)
    cloud = _write_out(tmp_path / "input.protobuf.out", scores, digits=6)
    code, out, err = run_cli("parity", "predictions", "--cloud", cloud, "--model", tmp_path / "model.tar.gz",
                             "--input", tmp_path / "input.protobuf", "--plot", tmp_path / "plots")
    assert code == 0, out + err
    _png_ok(tmp_path / "plots" / "predictions_score_scatter.png")
    drift = scores.copy()
    drift[3] += 0.01
    local = _write_out(tmp_path / "local.out", drift)
    code, out, _ = run_cli("parity", "predictions", "--cloud", cloud, "--local", local)
    assert code == 3 and "FAIL max |score diff|" in out and "row 3" in out


@pytest.mark.slow
def test_models_same_and_perturbed(tmp_path: Path) -> None:
    from localfm.io.artifacts import FMWeights, save_fm

    weights, _ = _model_and_input(tmp_path)
    (tmp_path / "other").mkdir()
    save_fm(tmp_path / "other" / "model.tar.gz", weights)
    code, out, _ = run_cli("parity", "models", "--cloud", tmp_path / "model.tar.gz",
                           "--local", tmp_path / "other" / "model.tar.gz", "--json", tmp_path / "m.json")
    assert code == 0, out
    assert json.loads((tmp_path / "m.json").read_text())["comparisons"][0]["summary"]["max_abs_diff"] == 0.0
    V = weights.V.copy()
    V[:, 0] *= 1.5
    save_fm(tmp_path / "other" / "model.tar.gz", FMWeights(weights.w0, weights.w, V, weights.predictor_type))
    code, out, _ = run_cli("parity", "models", "--cloud", tmp_path / "model.tar.gz",
                           "--local", tmp_path / "other" / "model.tar.gz", "--user-columns", "10",
                           "--plot", tmp_path / "plots")
    assert code == 3 and "FAIL max |score diff| over 2000 pairs" in out
    _png_ok(tmp_path / "plots" / "models_score_scatter.png")


# ------------------------------------------------------------------ k-NN
def _knn_out(path: Path, labels: list[list[float]], dists: list[list[float]]) -> Path:
    with open(path, "w") as fh:
        for lab, d in zip(labels, dists):
            fh.write(json.dumps({"predicted_label": lab[0], "labels": lab, "distances": d}) + "\n")
    return path


def test_knn_overlap_rank_and_worst_queries(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = [list(map(float, rng.permutation(100)[:10])) for _ in range(50)]
    dists = [sorted(rng.uniform(0, 5, 10).tolist()) for _ in range(50)]
    cloud = _knn_out(tmp_path / "cloud.out", labels, dists)
    code, out, _ = run_cli("parity", "knn", "--cloud", cloud, "--local", cloud, "--plot", tmp_path / "p")
    assert code == 0 and "overlap_mean" in out
    _png_ok(tmp_path / "p" / "knn_overlap_hist.png")
    changed = [list(x) for x in labels]
    for q in (4, 9, 17):
        changed[q][5:] = [1000.0 + i for i in range(5)]  # second half of the list differs
    local = _knn_out(tmp_path / "local.out", changed, dists)
    code, out, _ = run_cli("parity", "knn", "--cloud", cloud, "--local", local, "--min-overlap", "0.6",
                           "--json", tmp_path / "k.json")
    assert code == 3
    assert "FAIL min overlap@10: 0.5 < min 0.6" in out
    doc = json.loads((tmp_path / "k.json").read_text())
    worst = doc["comparisons"][0]["worst"]
    assert sorted(w["query"] for w in worst[:3]) == [4, 9, 17]
    assert doc["comparisons"][0]["summary"]["overlap_mean"] == pytest.approx(1 - 3 * 0.5 / 50)
    # overlap@5 only sees the untouched first half
    code, _, _ = run_cli("parity", "knn", "--cloud", cloud, "--local", local, "--k", "5", "--min-overlap", "0.6")
    assert code == 0


# ------------------------------------------------------------------ S3
@pytest.mark.slow
def test_s3_inputs_mixed_with_local(s3_bucket, cloud_fixture: Path, tmp_path: Path) -> None:  # noqa: ANN001
    client, bucket = s3_bucket
    client.upload_file(str(cloud_fixture / "training-log.txt"), bucket, "job/output/training-log.txt")
    local = _local_metrics(cloud_fixture, tmp_path / "metrics.json")
    client.upload_file(str(local), bucket, "local/metrics.json")
    code, out, err = run_cli("parity", "training", "--cloud-log", f"s3://{bucket}/job/output/training-log.txt",
                             "--local-metrics", f"s3://{bucket}/local/metrics.json")
    assert code == 0, out + err
    code, out, err = run_cli("parity", "training", "--cloud-log", f"s3://{bucket}/job/output/training-log.txt",
                             "--local-metrics", str(local))
    assert code == 0, out + err
    weights, _ = _model_and_input(tmp_path)
    client.upload_file(str(tmp_path / "model.tar.gz"), bucket, "job/output/model.tar.gz")
    code, out, err = run_cli("parity", "models", "--cloud", f"s3://{bucket}/job/output/model.tar.gz",
                             "--local", tmp_path / "model.tar.gz")
    assert code == 0, out + err
    code, _, err = run_cli("parity", "predictions", "--cloud", f"s3://{bucket}/nope.out", "--local", local)
    assert code == 2 and f"s3://{bucket}/nope.out: object not found" in err


# ------------------------------------------------------------------ report targets and folders: exit 2
def test_unusable_json_or_plot_target_is_bad_input_before_any_work(tmp_path: Path) -> None:
    """--json DIR, --json under a file and --plot FILE used to end in an OSError (exit 1) after the comparison."""
    cloud = _knn_out(tmp_path / "cloud.out", [[1.0, 2.0]], [[0.1, 0.2]])
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("keep")
    for extra, message in (
        (["--json", tmp_path / "adir"], "is a directory"),
        (["--json", tmp_path / "afile" / "r.json"], "is not a directory"),
        (["--plot", tmp_path / "afile"], "is not a directory"),
        (["--plot", tmp_path / "afile" / "plots"], "is not a directory"),
        (["--max-failures", "-1"], "--max-failures"),
    ):
        code, out, err = run_cli("parity", "knn", "--cloud", cloud, "--local", cloud, *extra)
        assert code == 2, (extra, err)
        assert message in err and err.startswith("localfm parity: error:") and err.count("\n") == 1, err
        assert out == "", "the check runs before the comparison"
    assert (tmp_path / "afile").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile", "cloud.out"]


def test_report_write_failure_is_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError while writing the report (full disk, permissions) maps to exit 2, not a traceback."""
    import localfm.parity.report as report

    def refuse(path, comparisons):  # noqa: ANN001, ANN202
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(report, "write_json", refuse)
    cloud = _knn_out(tmp_path / "cloud.out", [[1.0, 2.0]], [[0.1, 0.2]])
    code, _, err = run_cli("parity", "knn", "--cloud", cloud, "--local", cloud, "--json", tmp_path / "r.json")
    assert code == 2 and "cannot write the report (Permission denied)" in err, err


@pytest.mark.parametrize("sub, flag", [("predictions", "--cloud"), ("knn", "--cloud"), ("training", "--cloud-log")])
def test_folder_instead_of_cloud_file_is_bad_input(tmp_path: Path, sub: str, flag: str) -> None:
    """A folder as --cloud / --cloud-log used to raise IsADirectoryError (exit 1)."""
    (tmp_path / "job").mkdir()
    other = _knn_out(tmp_path / "x.out", [[1.0]], [[0.1]])
    local = ["--local-metrics", other] if sub == "training" else ["--local", other]
    code, _, err = run_cli("parity", sub, flag, tmp_path / "job", *local)
    assert code == 2 and "is a folder, expected a file" in err, err


@pytest.mark.parametrize("flag, value", [("--tol-train", "-1"), ("--epochs", "0")])
def test_fixture_flags_checked_before_training(byo_run: Path, monkeypatch: pytest.MonkeyPatch,
                                               flag: str, value: str) -> None:
    """--tol-train -1 / --epochs 0 on `parity fixture` used to be rejected only after (or by) the local run."""
    import localfm.parity.fixture as fixture

    def no_training(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("trained before validating the tolerances")

    monkeypatch.setattr(fixture, "train_local", no_training)
    code, _, err = run_cli("parity", "fixture", byo_run, flag, value)
    assert code == 2 and f"{flag}: expected" in err, err


@pytest.mark.parametrize("sub, flag", [("predictions", "--tol-score"), ("predictions", "--label-band"),
                                       ("knn", "--tol-distance")])
def test_negative_tolerance_is_bad_input_not_drift(tmp_path: Path, sub: str, flag: str) -> None:
    """A negative --tol-score / --label-band / --tol-distance used to fail every check: exit 3 ("drift")."""
    if sub == "predictions":
        same = _write_out(tmp_path / "p.out", np.array([0.2, 0.7]))
    else:
        same = _knn_out(tmp_path / "k.out", [[1.0, 2.0]], [[0.1, 0.2]])
    code, out, err = run_cli("parity", sub, "--cloud", same, "--local", same, flag, "-0.5")
    assert code == 2 and f"{flag}: expected a number >= 0" in err, out + err


# ------------------------------------------------------------------ the pipelines as a library
@pytest.mark.parity
def test_training_pipeline_is_a_library_call(cloud_fixture: Path, tmp_path: Path) -> None:
    """`parity training` is compare_training_run: same verdicts from Python, errors naming parameters."""
    bad = _local_metrics(cloud_fixture, tmp_path / "bad.json", bump=0.006, epoch=7)
    (comp,) = compare_training_run(cloud_log=str(cloud_fixture / "training-log.txt"), local_metrics=str(bad))
    assert not comp.ok and [c.name for c in comp.failing] == [f"train {F1} epoch 7"]
    (comp,) = compare_training_run(cloud_log=str(cloud_fixture / "training-log.txt"), local_metrics=str(bad),
                                   tolerances=TrainingTolerances(train=0.01))
    assert comp.ok
    # Only the first 5 epochs compared: the drift at epoch 7 is outside them.
    (comp,) = compare_training_run(cloud_metrics=str(cloud_fixture / "cloud-results.json"), local_metrics=str(bad),
                                   local=LocalTraining(epochs=5))
    assert comp.ok
    with pytest.raises(LocalFMError, match="^epochs: expected an integer >= 1") as info:
        compare_training_run(cloud_log=str(cloud_fixture / "training-log.txt"), local_metrics=str(bad),
                             local=LocalTraining(epochs=0))
    assert info.value.param == "epochs"
    with pytest.raises(LocalFMError) as info:
        compare_training_run(cloud_log=str(cloud_fixture / "training-log.txt"))
    assert info.value.param == "local_metrics" and "--" not in str(info.value)


def test_fixture_folder_without_channels_names_the_parameter(cloud_fixture: Path, tmp_path: Path) -> None:
    """From Python the missing channel is the `train` parameter; no flag in the message."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(cloud_fixture / "training-log.txt", run / "training-log.txt")
    with pytest.raises(LocalFMError, match="no training channel") as info:
        compare_fixture(run)
    assert info.value.param == "train" and "--" not in str(info.value)
