import contextlib
import sqlite3

import pytest


def test_demo_runs_the_whole_pipeline_on_embedded_data(cli, tmp_path):
    code, out, err = cli("--quiet", "demo", "--out", tmp_path, "--epochs", "3", "-k", "7")
    assert code == 0, err
    for stage in ("prepare", "train", "repackage", "knn train", "knn transform", "recommend"):
        assert f"== {stage}" in out
    assert "test metrics: binary_classification_accuracy" in out
    with contextlib.closing(sqlite3.connect(tmp_path / "recommendations.sqlite")) as con:
        n_rows, n_users, max_rank = con.execute(
            "SELECT COUNT(*), COUNT(DISTINCT user_id), MAX(rank) FROM recommendations").fetchone()
    assert (n_rows, n_users, max_rank) == (300 * 7, 300, 7)
    lines = (tmp_path / "knn-transform" / "users.protobuf.out").read_text().splitlines()
    assert len(lines) == 300 and lines[0].startswith('{"predicted_label": ')


@pytest.mark.slow
def test_demo_on_real_movielens(cli, tmp_path, ml100k_dir):
    code, out, err = cli("--quiet", "demo", "--movielens", ml100k_dir, "--out", tmp_path, "--epochs", "2")
    assert code == 0, err
    assert "feature_dim: 2623" in out
    assert "stored 9430 recommendations for 943 users" in out


def test_demo_failure_is_a_clean_exit_2(cli, tmp_path):
    code, _, err = cli("--quiet", "demo", "--movielens", tmp_path / "missing", "--out", tmp_path / "o")
    assert code == 2
    assert "error" in err


def test_demo_out_is_an_existing_file_exit_2(cli, tmp_path):
    """--out naming a file used to raise FileExistsError from mkdir: exit 1 with a traceback."""
    (tmp_path / "taken").write_text("keep")
    code, _, err = cli("--quiet", "demo", "--out", tmp_path / "taken", "--epochs", "1")
    assert code == 2 and "--out" in err and "cannot create the demo folder" in err, err
    assert (tmp_path / "taken").read_text() == "keep"


def test_help_reads_as_help_text(cli, capsys):
    """--help used to start mid-sentence ("It runs exactly ...") with reST ``--movielens`` markup."""
    with pytest.raises(SystemExit) as exc:
        cli("demo", "--help")
    assert exc.value.code == 0
    text = capsys.readouterr().out
    description = text.split("\n\n")[1]
    assert description.startswith("Run the whole localfm pipeline")
    assert "``" not in text
    assert "--movielens PATH" in text.split("options:")[0]  # the description explains the flag
