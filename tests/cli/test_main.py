import subprocess
import sys
import warnings

import localfm.cli.recommend as recommend_cli
from localfm.cli import build_parser, error_line, flag_for, main, running_parser
from localfm.errors import LocalFMError, LocalFMWarning


def test_help_lists_commands_and_exits_zero():
    proc = subprocess.run([sys.executable, "-m", "localfm", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "COMMAND" in proc.stdout


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices, "no subcommands registered"
    for name, p in sub.choices.items():
        assert p.format_help().strip(), name


def test_usage_error_is_exit_2():
    proc = subprocess.run([sys.executable, "-m", "localfm", "no-such-command"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error" in proc.stderr


def test_quiet_is_accepted_before_and_after_the_subcommand(tmp_path):
    from localfm import progress
    from localfm.cli import main

    out = tmp_path / "p"
    for argv in (["--quiet", "prepare", "movielens", "--split", "ua", "--out", str(out)],
                 ["prepare", "movielens", "--split", "ua", "--out", str(out), "--quiet"]):
        progress.set_quiet(False)
        assert main(argv) == 0
        assert progress.is_quiet()
    progress.set_quiet(False)
    args = build_parser().parse_args(["knn", "train", "--train", "x", "--model-dir", "y", "--quiet"])
    assert args.quiet_sub is True


def test_library_parameter_becomes_the_running_subcommands_flag():
    """The library names Python parameters; the CLI shows the flag whose argparse dest that parameter is."""
    parser = build_parser()
    args = parser.parse_args(["parity", "models", "--cloud", "a", "--local", "b"])
    assert running_parser(parser, args).prog == "localfm parity models"
    assert error_line(parser, args, LocalFMError("split 12: expected 1..9", param="split")) == \
        "--user-columns 12: expected 1..9"
    # Not a flag of this subcommand: the message stays as the library wrote it.
    assert error_line(parser, args, LocalFMError("seen: wrong shape", param="seen")) == "seen: wrong shape"
    # Only a leading whole-word mention is replaced.
    assert error_line(parser, args, LocalFMError("splits: x", param="split")) == "splits: x"
    assert error_line(parser, args, LocalFMError("a split: x", param="split")) == "a split: x"
    args = parser.parse_args(["recommend", "--model", "m", "--features", "f"])
    assert error_line(parser, args, LocalFMError("target r.csv: expected", param="target")) == "--out r.csv: expected"
    sub = running_parser(parser, args)
    assert flag_for(sub, "k") == "--k" and flag_for(sub, "batch_size") == "--batch-size"
    assert flag_for(sub, "precision") == "--precision"  # not the hidden alias --engine-mode
    assert flag_for(sub, None) is None and flag_for(sub, "no_such_option") is None


def test_main_prints_library_errors_and_warnings_as_flags(monkeypatch, capsys):
    def handler(args):  # noqa: ANN001, ANN202
        warnings.warn(LocalFMWarning("k: 9 is more than the 3 candidate items", param="k"), stacklevel=1)
        raise LocalFMError("batch_size: expected a positive integer, got 0", param="batch_size")

    monkeypatch.setattr(recommend_cli, "handler", handler)
    assert main(["recommend", "--model", "m", "--features", "f"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["localfm recommend: warning: --k: 9 is more than the 3 candidate items",
                   "localfm recommend: error: --batch-size: expected a positive integer, got 0"]
