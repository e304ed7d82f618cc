"""``localfm parity``: compare a local run with recorded SageMaker output, gate CI on it.

Subcommands compare one stage each (``training``, ``predictions``, ``knn``, ``models``)
or a whole recorded run folder (``fixture``). Every input may be a local path or an
``s3://`` URI. Output: the side-by-side report on stdout, ``--json FILE`` and
``--plot DIR``. Exit codes: 0 within tolerance, 3 drift (the failing checks are
named), 2 bad input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from ..errors import LocalFMError
from . import EXIT_DRIFT

if TYPE_CHECKING:
    from ..parity.compare import TrainingTolerances
    from ..parity.fixture import LocalTraining

# The library is imported inside the handlers: every subcommand module is imported for
# `localfm --help`, and the parity stack (pyarrow, the trainer's modules) would add ~0.7 s.


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON (atomic)")
    p.add_argument("--plot", metavar="DIR", help="write PNG plots into DIR")
    p.add_argument("--max-failures", type=int, default=20, metavar="N", help="failing checks listed on stdout (default 20)")


def _training_tolerances(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training tolerances (absolute)")
    g.add_argument("--tol-train", type=float, default=0.005, metavar="X", help="every epoch's train metrics (default 0.005)")
    g.add_argument("--tol-test-acc", type=float, default=0.01, metavar="X", help="test accuracy (default 0.01)")
    g.add_argument("--tol-test-xent", type=float, default=0.01, metavar="X", help="test cross-entropy (default 0.01)")
    g.add_argument("--tol-test", type=float, default=0.02, metavar="X",
                   help="other test metrics: F1, rmse, mse, absolute_loss (default 0.02)")


def _local_training(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("local run (when not reading a finished one)")
    g.add_argument("--hyperparameters", metavar="FILE.json",
                   help="hyperparameters.json for the local run (default: those the cloud log says it was given)")
    g.add_argument("--hp", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="override one hyperparameter (repeatable)")
    g.add_argument("--seed", type=int, default=0, help="local initialisation seed (default 0)")
    g.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="quick check: train N epochs locally and compare only the first N (test metrics skipped)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "parity",
        help="compare local results with recorded SageMaker output (exit 3 on drift)",
        description=(
            "Compare a local run with a recorded SageMaker run, stage by stage. "
            "Exit 0 within tolerance, 3 on drift, 2 on bad input."
        ),
    )
    sub = p.add_subparsers(dest="parity_command", metavar="WHAT", parser_class=type(p))
    sub.required = True

    t = sub.add_parser("training", help="per-epoch training metrics and test metrics",
                       description="Cloud training log / metrics.json vs a local run (run here, or read).")
    src = t.add_argument_group("cloud side (at least one)")
    src.add_argument("--cloud-log", metavar="URI", help="cloud training log (CloudWatch / notebook text)")
    src.add_argument("--cloud-metrics", metavar="URI", help="cloud metrics JSON (DescribeTrainingJob, cloud-results.json ...)")
    loc = t.add_argument_group("local side (one of)")
    loc.add_argument("--local-metrics", metavar="URI", help="a finished local run: its metrics.json or its log")
    loc.add_argument("--train", metavar="URI", help="training channel (RecordIO-protobuf file or folder): train here")
    loc.add_argument("--test", metavar="URI", help="test channel for the local run")
    _local_training(t)
    _training_tolerances(t)
    _common(t)
    t.set_defaults(func=handle_training)

    pr = sub.add_parser("predictions", help="FM batch-transform output, row by row",
                        description="Cloud batch-transform output (<input>.out) vs local predictions on the same input.")
    pr.add_argument("--cloud", required=True, metavar="URI", help="cloud output (JSON Lines or {\"predictions\": [...]})")
    pr.add_argument("--local", metavar="URI", help="local output of the same input")
    pr.add_argument("--model", metavar="URI", help="instead of --local: predict here with this model.tar.gz ...")
    pr.add_argument("--input", metavar="URI", help="... on this RecordIO-protobuf input (the cloud job's input)")
    pr.add_argument("--tol-score", type=float, default=1e-4, metavar="X", help="max |score diff| per row (default 1e-4)")
    pr.add_argument("--label-band", type=float, default=1e-4, metavar="X",
                    help="label flips allowed where the cloud score is within X of 0.5 (default 1e-4)")
    _common(pr)
    pr.set_defaults(func=handle_predictions)

    k = sub.add_parser("knn", help="k-NN verbose output: overlap@k, rank correlation, distances",
                       description="Cloud k-NN verbose output vs local, query by query.")
    k.add_argument("--cloud", required=True, metavar="URI", help="cloud verbose output (labels/distances per query)")
    k.add_argument("--local", required=True, metavar="URI", help="local verbose output for the same queries")
    k.add_argument("--k", type=int, default=None, help="overlap@k (default: the cloud's list length)")
    k.add_argument("--index-metric", default="L2", choices=("L2", "INNER_PRODUCT", "COSINE"),
                   help="decides which end of the ascending distance list is best (default L2)")
    k.add_argument("--min-mean-overlap", type=float, default=0.95, metavar="X", help="default 0.95")
    k.add_argument("--min-overlap", type=float, default=0.0, metavar="X", help="worst query's overlap (default 0)")
    k.add_argument("--tol-distance", type=float, default=1e-3, metavar="X",
                   help="max |distance diff| by rank, relative to max(1, |d|) (default 1e-3)")
    k.add_argument("--min-label-agreement", type=float, default=0.95, metavar="X", help="default 0.95")
    k.add_argument("--worst", type=int, default=5, metavar="N", help="worst queries listed (default 5)")
    _common(k)
    k.set_defaults(func=handle_knn)

    m = sub.add_parser("models", help="two FM model.tar.gz: shapes and sampled pair scores",
                       description="Cloud model.tar.gz vs local one: shapes, weights, scores of sampled feature pairs.")
    m.add_argument("--cloud", required=True, metavar="URI", help="cloud FM artifact")
    m.add_argument("--local", required=True, metavar="URI", help="local FM artifact")
    m.add_argument("--pairs", type=int, default=2000, help="sampled one-hot pairs (default 2000)")
    m.add_argument("--user-columns", dest="split", type=int, default=None, metavar="N",
                   help="sample user-item pairs: first N columns are users (e.g. 943 for ml-100k)")
    m.add_argument("--seed", type=int, default=0, help="pair sampling seed")
    m.add_argument("--tol-score", type=float, default=1e-4, metavar="X", help="max |score diff| (default 1e-4)")
    m.add_argument("--min-rank-corr", type=float, default=0.99, metavar="X", help="Spearman of scores (default 0.99)")
    _common(m)
    m.set_defaults(func=handle_models)

    f = sub.add_parser("fixture", help="a whole recorded run folder (bring your own cloud run)",
                       description="Train locally as the recorded run did and compare everything the folder holds. "
                                   "Layout: see docs/parity.md.")
    f.add_argument("run_dir", metavar="DIR", help="recorded run folder")
    f.add_argument("--train", metavar="URI", help="training channel (overrides DIR/input/data/train)")
    f.add_argument("--test", metavar="URI", help="test channel (overrides DIR/input/data/test)")
    f.add_argument("--local-metrics", metavar="URI", help="compare this finished local run instead of training")
    f.add_argument("--tol-recorded", type=float, default=0.05, metavar="X",
                   help="|score diff| of the locally retrained model on each recorded cloud score row (default 0.05)")
    f.add_argument("--tol-retrained", type=float, default=0.1, metavar="X",
                   help="max |score diff| of the locally retrained model vs cloud transform outputs and vs the "
                        "cloud model's pair scores; labels may flip within X/2 of 0.5 (default 0.1)")
    f.add_argument("--min-rank-corr-retrained", type=float, default=0.98, metavar="X",
                   help="Spearman of retrained vs cloud model pair scores (default 0.98)")
    f.add_argument("--min-ks-pvalue", type=float, default=0.01, metavar="X",
                   help="recorded scores vs local score distribution, KS test (default 0.01)")
    _local_training(f)
    _training_tolerances(f)
    _common(f)
    f.set_defaults(func=handle_fixture)


# --------------------------------------------------------------------------- handlers
def _check_args(args: argparse.Namespace) -> None:
    """Reject bad flags and an unusable --json / --plot target before any work (a local run takes minutes).

    Without this a directory given as --json, or a file given as --plot, surfaced as
    an OSError from the final write: exit 1, after the whole comparison had run; and a
    negative --tol-score / --label-band / --tol-distance made every check fail (exit 3,
    "drift") instead of naming the flag.
    """
    for name, value in sorted(vars(args).items()):
        if (name.startswith("tol_") or name == "label_band") and value is not None and not value >= 0:
            raise LocalFMError(f"--{name.replace('_', '-')}: expected a number >= 0, got {value}")
    if args.max_failures < 0:
        raise LocalFMError(f"--max-failures: expected an integer >= 0, got {args.max_failures}")
    if args.json:
        target = Path(args.json)
        if target.is_dir():
            raise LocalFMError(f"--json {target}: is a directory, expected a file path")
        blocker = next((q for q in target.parents if q.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise LocalFMError(f"--json {target}: {blocker} is not a directory")
    if args.plot:
        target = Path(args.plot)
        blocker = next((q for q in (target, *target.parents) if q.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise LocalFMError(f"--plot {target}: {blocker} is not a directory")


def _finish(args: argparse.Namespace, comparisons: list[Any]) -> int:
    from ..parity.report import render_text, write_json

    sys.stdout.write(render_text(comparisons, max_failures=args.max_failures))
    try:
        if args.json:
            write_json(args.json, comparisons)
        if args.plot:
            from ..parity.plots import write_plots

            for path in write_plots(comparisons, args.plot):
                print(f"plot: {path}", file=sys.stderr)
    except OSError as exc:
        # Checked up front, but the file system can still refuse (permissions, disk full).
        name = exc.filename or (args.json or args.plot)
        raise LocalFMError(f"{name}: cannot write the report ({exc.strerror or exc})") from None
    return 0 if all(c.ok for c in comparisons) else EXIT_DRIFT


def _training_tolerances_from(args: argparse.Namespace) -> TrainingTolerances:
    from ..parity.compare import TrainingTolerances

    return TrainingTolerances(train=args.tol_train, test_accuracy=args.tol_test_acc,
                              test_cross_entropy=args.tol_test_xent, test=args.tol_test)


def _local_training_from(args: argparse.Namespace) -> LocalTraining:
    """--hyperparameters FILE replaces the cloud's given set; --hp overrides either."""
    from ..hyperparams import collect
    from ..parity.fixture import LocalTraining

    return LocalTraining(overrides=collect(args.hyperparameters, args.overrides), use_given=not args.hyperparameters,
                         seed=args.seed, epochs=args.epochs)


def handle_training(args: argparse.Namespace) -> int:
    from ..parity.fixture import compare_training_run

    _check_args(args)
    if not args.cloud_log and not args.cloud_metrics:
        raise LocalFMError("parity training: give --cloud-log and/or --cloud-metrics")
    if bool(args.local_metrics) == bool(args.train):
        raise LocalFMError("parity training: give either --local-metrics (a finished run) or --train (run it here)")
    comparisons = compare_training_run(
        cloud_log=args.cloud_log, cloud_metrics=args.cloud_metrics, local_metrics=args.local_metrics,
        train=args.train, test=args.test, local=_local_training_from(args),
        tolerances=_training_tolerances_from(args),
    )
    return _finish(args, comparisons)


def handle_predictions(args: argparse.Namespace) -> int:
    from ..parity.cloudlog import read_predictions
    from ..parity.compare import PredictionTolerances, compare_predictions
    from ..parity.local import load_model, predictions_from_model, read_input

    _check_args(args)
    cloud = read_predictions(args.cloud)
    if args.local:
        if args.model or args.input:
            raise LocalFMError("parity predictions: give --local, or --model with --input, not both")
        local = read_predictions(args.local)
    else:
        if not (args.model and args.input):
            raise LocalFMError("parity predictions: give --local OUTPUT, or --model MODEL --input INPUT to predict here")
        model = load_model(args.model)
        X = read_input(args.input, feature_dim=model.V_.shape[0])
        local = predictions_from_model(model, X, source=f"{args.model} on {args.input}")
    tol = PredictionTolerances(score=args.tol_score, label_band=args.label_band)
    return _finish(args, [compare_predictions(cloud, local, tol)])


def handle_knn(args: argparse.Namespace) -> int:
    from ..parity.cloudlog import read_knn
    from ..parity.compare import KNNTolerances, compare_knn

    _check_args(args)
    if args.k is not None and args.k < 1:
        raise LocalFMError(f"--k: expected an integer >= 1, got {args.k}")
    tol = KNNTolerances(
        min_mean_overlap=args.min_mean_overlap,
        min_overlap=args.min_overlap,
        distance=args.tol_distance,
        min_label_agreement=args.min_label_agreement,
    )
    comp = compare_knn(read_knn(args.cloud), read_knn(args.local), tol, k=args.k,
                       index_metric=args.index_metric, worst_n=args.worst)
    return _finish(args, [comp])


def handle_models(args: argparse.Namespace) -> int:
    from ..parity.compare import ModelTolerances
    from ..parity.fixture import compare_model_files

    _check_args(args)
    if args.pairs < 2:
        raise LocalFMError(f"--pairs: expected an integer >= 2, got {args.pairs}")
    comp = compare_model_files(args.cloud, args.local, ModelTolerances(score=args.tol_score,
                                                                       min_rank_corr=args.min_rank_corr),
                               n_pairs=args.pairs, seed=args.seed, split=args.split)
    return _finish(args, [comp])


def handle_fixture(args: argparse.Namespace) -> int:
    from ..parity.fixture import FixtureTolerances, compare_fixture

    _check_args(args)
    result = compare_fixture(
        args.run_dir, train=args.train, test=args.test, local_metrics=args.local_metrics,
        local=_local_training_from(args),
        tolerances=FixtureTolerances(
            training=_training_tolerances_from(args), recorded=args.tol_recorded, retrained=args.tol_retrained,
            min_rank_corr_retrained=args.min_rank_corr_retrained, min_ks_pvalue=args.min_ks_pvalue,
        ),
    )
    for note in result.notes:
        print(f"localfm parity: note: {note}", file=sys.stderr)
    return _finish(args, result.comparisons)
