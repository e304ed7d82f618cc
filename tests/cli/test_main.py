import subprocess
import sys

from localfm.cli import build_parser


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
