import json
import re
import time

import numpy as np
import pytest
import scipy.sparse as sp

from localfm.io.recordio import write_sparse

D = 12


def _write(path, n=90, seed=0, labels=None, d=D):
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n), 2)
    cols = np.stack([rng.integers(0, d // 2, n), rng.integers(d // 2, d, n)], 1).reshape(-1)
    X = sp.csr_matrix((np.ones(2 * n, np.float32), (rows, cols)), shape=(n, d))
    y = (rng.random(n) < 0.6).astype(np.float32) if labels is None else np.asarray(labels, np.float32)
    write_sparse(str(path), X, y)
    return X, y


def _hp(**extra):
    base = {"feature_dim": D, "num_factors": 4, "predictor_type": "binary_classifier", "epochs": 3,
            "mini_batch_size": 20, **extra}
    return [a for k, v in base.items() for a in ("--hp", f"{k}={v}")]


QUALITY = re.compile(r"^\[\d\d/\d\d/\d{4} \d\d:\d\d:\d\d INFO \d+\] #quality_metric: host=algo-1, "
                     r"epoch=(\d+), train (binary_classification_accuracy <score>|binary_classification_cross_entropy "
                     r"<loss>|binary_f_1\.000 <score>)=[0-9.e-]+$")


def test_train_writes_model_metrics_and_sagemaker_log(tmp_path, cli):
    _write(tmp_path / "train.rec")
    _write(tmp_path / "test.rec", n=30, seed=1)
    code, out, err = cli("train", "--train", tmp_path / "train.rec", "--test", tmp_path / "test.rec",
                         "-o", tmp_path / "out", "--seed", "0", *_hp())
    assert code == 0, err
    lines = out.splitlines()
    assert sum(bool(QUALITY.match(line)) for line in lines) == 9  # 3 epochs x 3 metrics
    assert any("#test_score (algo-1) : ('binary_classification_accuracy', " in line for line in lines)
    assert any(line.endswith("#progress_metric: host=algo-1, completed 100.0 % of epochs") for line in lines)
    assert any("#throughput_metric: host=algo-1, train throughput=" in line for line in lines)
    assert any(" #quality_metric: host=algo-1, epoch=0, batch=0 train binary_f_1.000 <score>=" in line for line in lines)
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [e["epoch"] for e in doc["train_metrics_per_epoch"]] == [0, 1, 2]
    logged = float(next(line for line in lines if "epoch=2, train binary_classification_accuracy" in line).rsplit("=", 1)[1])
    assert doc["train_metrics_per_epoch"][2]["binary_classification_accuracy"] == logged
    assert set(doc["test_metrics"]) == {"binary_classification_accuracy", "binary_classification_cross_entropy",
                                        "binary_f_1.000"}
    assert doc["train_records"] == 90 and doc["test_records"] == 30
    # which engine and thread count trained (auto decides at run time): timings need it
    assert doc["engine"] == "numba" and doc["threads"] == 1  # auto: batch 20 < 1000 keeps one thread

    from localfm.fm import FactorizationMachine
    from localfm.io.artifacts import load_fm

    w = load_fm(str(tmp_path / "out" / "model.tar.gz"))
    assert w.V.shape == (D, 4) and w.predictor_type == "binary_classifier"
    fm = FactorizationMachine.load(tmp_path / "out" / "model.tar.gz")
    X_test, y_test = _write(tmp_path / "again.rec", n=30, seed=1)
    assert fm.score(X_test, y_test)["binary_classification_accuracy"] == pytest.approx(
        doc["test_metrics"]["binary_classification_accuracy"])


def test_same_seed_same_model_bytes(tmp_path, cli, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    from localfm.io.artifacts import load_fm

    _write(tmp_path / "train.rec")
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        time.sleep(1.1 if name == "b" else 0)  # archive timestamps must not leak into the bytes
        assert cli("train", "--train", tmp_path / "train.rec", "-o", tmp_path / name, "--seed", seed,
                   "--quiet-log", *_hp(_local_shuffle="true"))[0] == 0
    assert (tmp_path / "a" / "model.tar.gz").read_bytes() == (tmp_path / "b" / "model.tar.gz").read_bytes()
    a, b, c = (load_fm(str(tmp_path / n / "model.tar.gz")) for n in "abc")
    assert a.V.tobytes() == b.V.tobytes() and a.w.tobytes() == b.w.tobytes() and a.w0 == b.w0
    assert a.V.tobytes() != c.V.tobytes()


def test_hyperparameters_file_and_flag_override(tmp_path, cli):
    _write(tmp_path / "train.rec")
    hp_file = tmp_path / "hyperparameters.json"
    hp_file.write_text(json.dumps({"feature_dim": str(D), "num_factors": "3", "predictor_type": "binary_classifier",
                                   "epochs": "5", "_kvstore": "auto"}))
    code, out, err = cli("train", "--train", tmp_path / "train.rec", "-o", tmp_path / "out", "--quiet-log",
                         "--hyperparameters", hp_file, "--hp", "epochs=2")
    assert code == 0, err
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(doc["train_metrics_per_epoch"]) == 2


def test_warm_start_from_artifact(tmp_path, cli):
    from localfm.io.artifacts import load_fm

    _write(tmp_path / "train.rec")
    assert cli("train", "--train", tmp_path / "train.rec", "-o", tmp_path / "first", "--seed", 1, "--quiet-log",
               *_hp(epochs=1))[0] == 0
    assert cli("train", "--train", tmp_path / "train.rec", "-o", tmp_path / "second", "--seed", 1, "--quiet-log",
               "--init-model", tmp_path / "first" / "model.tar.gz", *_hp(epochs=1))[0] == 0
    first = json.loads((tmp_path / "first" / "metrics.json").read_text())["train_metrics_per_epoch"][0]
    second = json.loads((tmp_path / "second" / "metrics.json").read_text())["train_metrics_per_epoch"][0]
    # the second run starts where the first ended: lower training loss than a fresh start
    key = "binary_classification_cross_entropy"
    assert second[key] < first[key]
    assert load_fm(str(tmp_path / "first" / "model.tar.gz")).V.tobytes() != \
        load_fm(str(tmp_path / "second" / "model.tar.gz")).V.tobytes()
    code, _, err = cli("train", "--train", tmp_path / "train.rec", "-o", tmp_path / "third", "--quiet-log",
                       "--init-model", tmp_path / "first" / "model.tar.gz", *_hp(num_factors=5))
    assert code == 2 and "init model" in err


def _bad_files(tmp_path):
    _write(tmp_path / "wrong_dim.rec", d=D + 3)
    _write(tmp_path / "labels.rec", labels=[0, 1, 2] * 30)
    X = sp.csr_matrix(np.array([[1, 0, np.nan] + [0] * (D - 3)] * 4, np.float32))
    write_sparse(str(tmp_path / "nan.rec"), X, np.ones(4, np.float32))
    (tmp_path / "empty.rec").write_bytes(b"")
    _write(tmp_path / "ok.rec")
    (tmp_path / "truncated.rec").write_bytes((tmp_path / "ok.rec").read_bytes()[:-9])


@pytest.mark.parametrize(
    "name, needle",
    [
        ("wrong_dim.rec", "15 features but feature_dim=12"),
        ("labels.rec", "labels must be 0 or 1"),
        ("nan.rec", "non-finite feature value"),
        ("empty.rec", "empty.rec"),
        ("truncated.rec", "truncated"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, cli, name, needle):
    _bad_files(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.tar.gz").write_bytes(b"previous")
    code, _, err = cli("train", "--train", tmp_path / name, "-o", out, "--quiet-log", *_hp())
    assert code == 2
    assert needle in err and err.count("\n") == 1
    assert (out / "model.tar.gz").read_bytes() == b"previous"
    assert sorted(p.name for p in out.iterdir()) == ["model.tar.gz"]


@pytest.mark.parametrize(
    "hp, needle",
    [
        (["--hp", "num_factors=0"], "'num_factors': expected an integer in [1, 1000]"),
        (["--hp", "bogus=1"], "unknown factorization-machines hyperparameter 'bogus'"),
        (["--hp", "mini_batch_size=-3"], "'mini_batch_size'"),
    ],
)
def test_bad_hyperparameters_exit_2(tmp_path, cli, hp, needle):
    _write(tmp_path / "train.rec")
    code, _, err = cli("train", "--train", tmp_path / "train.rec", "-o", tmp_path / "out", *_hp(), *hp)
    assert code == 2 and needle in err
    assert not (tmp_path / "out").exists()


def test_missing_required_hyperparameter(tmp_path, cli):
    _write(tmp_path / "train.rec")
    code, _, err = cli("train", "--train", tmp_path / "train.rec", "-o", tmp_path / "out", "--hp", "num_factors=2")
    assert code == 2 and "missing required" in err


def test_help(cli, capsys):
    with pytest.raises(SystemExit) as exc:
        cli("train", "--help")
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "OUTPUT" not in text and "Writes DIR/model.tar.gz and DIR/metrics.json (DIR is --model-dir)" in text
    epilog = text.split("required hyperparameters", 1)[1].split("\n\n", 1)[0]
    from localfm.fm.hyperparameters import FM_HYPERPARAMETERS

    required = {hp.name for hp in FM_HYPERPARAMETERS if hp.required}
    assert required == {"feature_dim", "num_factors", "predictor_type"}
    listed = {line.split("=", 1)[0].strip() for line in epilog.splitlines()[1:] if line.startswith("  ")}
    assert listed == required


def test_train_says_where_the_model_went(tmp_path, cli):
    _write(tmp_path / "train.rec")
    code, out, err = cli("--quiet", "train", "--train", tmp_path / "train.rec", "--model-dir", tmp_path / "m",
                         "--quiet-log", *_hp())
    assert code == 0, err
    assert out.splitlines() == [f"wrote {tmp_path / 'm' / 'model.tar.gz'} and {tmp_path / 'm' / 'metrics.json'}"]
    assert (tmp_path / "m" / "model.tar.gz").is_file()


def test_misspelt_hyperparameter_suggests_the_name(tmp_path, cli):
    _write(tmp_path / "train.rec")
    code, _, err = cli("train", "--train", tmp_path / "train.rec", "-o", tmp_path / "out", *_hp(), "--hp", "num_factor=3")
    assert code == 2 and err.count("\n") == 1
    assert "unknown factorization-machines hyperparameter 'num_factor'; did you mean num_factors?" in err
    assert "_local_" not in err


def test_local_validation_channel_and_early_stopping(tmp_path, cli):
    _write(tmp_path / "train.rec", n=200)
    _write(tmp_path / "val.rec", n=60, seed=3)
    code, out, err = cli("train", "--train", tmp_path / "train.rec", "--validation", tmp_path / "val.rec",
                         "-o", tmp_path / "out", "--seed", 0,
                         *_hp(epochs=40, linear_lr=0.2, factors_lr=0.2, _local_early_stopping_patience=2))
    assert code == 0, err
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    val = [e["binary_classification_cross_entropy"] for e in doc["validation_metrics_per_epoch"]]
    assert len(val) < 40 and doc["best_epoch"] == int(np.argmin(val))
    assert "#quality_metric: host=algo-1, epoch=0, validation binary_classification_accuracy <score>=" in out


def test_dense_recordio_input_learns_a_pairwise_interaction(tmp_path, cli):
    """y = [x0 * x1 > 0] is invisible to a linear model; the factors must learn it."""
    from localfm.io.recordio import write_dense

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5)).astype(np.float32)
    write_dense(str(tmp_path / "dense.rec"), X, (X[:, 0] * X[:, 1] > 0).astype(np.float32))
    code, out, err = cli("train", "--train", tmp_path / "dense.rec", "-o", tmp_path / "out", "--seed", 0, "--quiet-log",
                         "--hp", "feature_dim=5", "--hp", "num_factors=2", "--hp", "predictor_type=binary_classifier",
                         "--hp", "epochs=50", "--hp", "mini_batch_size=30", "--hp", "linear_lr=0.05",
                         "--hp", "factors_lr=0.05", "--hp", "factors_init_sigma=0.1")
    assert code == 0, err
    last = json.loads((tmp_path / "out" / "metrics.json").read_text())["train_metrics_per_epoch"][-1]
    assert last["binary_classification_accuracy"] > 0.95


def test_output_path_that_is_a_file_fails_before_training(tmp_path, cli, monkeypatch):
    # The check used to run only after fit(): a long training run was thrown away.
    _write(tmp_path / "train.rec")
    (tmp_path / "taken").write_text("x")
    from localfm.fm.model import FactorizationMachine

    def no_fit(*a, **kw):
        raise AssertionError("fit() ran before the output folder was checked")

    monkeypatch.setattr(FactorizationMachine, "fit", no_fit)
    code, _, err = cli("train", "--train", tmp_path / "train.rec", "-o", tmp_path / "taken", "--quiet-log", *_hp())
    assert code == 2 and "not a folder" in err
    assert (tmp_path / "taken").read_text() == "x"


def test_wrong_width_file_in_a_folder_channel_is_named(tmp_path, cli):
    # The message used to name only the folder, leaving the user to hunt for the file.
    chan = tmp_path / "train"
    chan.mkdir()
    _write(chan / "part-0.rec")
    _write(chan / "part-1.rec", d=15)
    code, _, err = cli("train", "--train", chan, "-o", tmp_path / "out", "--quiet-log", *_hp())
    assert code == 2 and "part-1.rec: records have 15 features but feature_dim=12" in err
    assert not (tmp_path / "out").exists()


def test_metrics_json_records_the_threads_asked_for(tmp_path, cli):
    _write(tmp_path / "train.rec")
    code, _, err = cli("train", "--train", tmp_path / "train.rec", "-o", tmp_path / "out", "--quiet-log",
                       "--seed", "0", *_hp(_local_threads=2))
    assert code == 0, err
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (doc["engine"], doc["threads"], doc["device"]) == ("numba", 2, "cpu")


def test_local_device_trains_there_or_exits_2_before_reading_data(tmp_path, cli):
    """``--hp _local_device=cuda``: without a GPU one line and exit 2, nothing written; with one
    (the GPU machine) the torch engine trains there and metrics.json says so."""
    import torch

    _write(tmp_path / "train.rec")
    code, _, err = cli("train", "--train", tmp_path / "train.rec", "-o", tmp_path / "out", "--quiet-log",
                       "--seed", "0", *_hp(_local_device="cuda"))
    if not torch.cuda.is_available():
        assert code == 2 and not (tmp_path / "out").exists()
        assert err.startswith("localfm train: error: hyperparameter '_local_device': 'cuda' asked for, but torch "
                              "sees no CUDA device here") and err.count("\n") == 1, err
        return
    assert code == 0, err
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (doc["engine"], doc["device"]) == ("torch", "cuda")
