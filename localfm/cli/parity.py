"""``localfm parity``: compare a local run with recorded SageMaker output, gate CI on it.

Subcommands compare one stage each (``training``, ``predictions``, ``knn``, ``models``)
or a whole recorded run folder (``fixture``). Every input may be a local path or an
``s3://`` URI. Output: the side-by-side report on stdout, ``--json FILE`` and
``--plot DIR``. Exit codes: 0 within tolerance, 3 drift (the failing checks are
named), 2 bad input.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from ..errors import LocalFMError
from . import EXIT_DRIFT



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
    g.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="override one hyperparameter (repeatable)")
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
    m.add_argument("--user-columns", type=int, default=None, metavar="N",
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
    epochs = getattr(args, "epochs", None)
    if epochs is not None and epochs < 1:  # before the local run it truncates
        raise LocalFMError(f"--epochs: expected an integer >= 1, got {epochs}")
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


def _tt(args: argparse.Namespace):  # noqa: ANN202
    from ..parity.compare import TrainingTolerances

    return TrainingTolerances(train=args.tol_train, test_accuracy=args.tol_test_acc,
                              test_cross_entropy=args.tol_test_xent, test=args.tol_test)


def _limit_epochs(cloud: Any, epochs: int | None) -> None:
    if epochs is None:
        return
    cloud.epochs = {e: v for e, v in cloud.epochs.items() if e < epochs}
    cloud.test = {}  # test metrics are after the full run; not comparable to a truncated one


def _run_local(args: argparse.Namespace, train: str, test: str | None, given: dict[str, str]):  # noqa: ANN202
    """Train here with the cloud's given hyperparameters (or --hyperparameters), --hp overrides."""
    from ..hyperparams import collect
    from ..parity.local import local_hyperparameters, train_local

    overrides = collect(args.hyperparameters, args.hp)
    hp = local_hyperparameters({} if args.hyperparameters else given, overrides, epochs=args.epochs)
    return train_local(train, test if args.epochs is None else None, hp, seed=args.seed)


def handle_training(args: argparse.Namespace) -> int:
    from ..parity.cloudlog import read_training_log
    from ..parity.compare import compare_training

    _check_args(args)
    if not args.cloud_log and not args.cloud_metrics:
        raise LocalFMError("parity training: give --cloud-log and/or --cloud-metrics")
    if bool(args.local_metrics) == bool(args.train):
        raise LocalFMError("parity training: give either --local-metrics (a finished run) or --train (run it here)")
    cloud = read_training_log(args.cloud_log) if args.cloud_log else read_training_log(args.cloud_metrics)
    if args.cloud_log and args.cloud_metrics:
        extra = read_training_log(args.cloud_metrics)
        for e, row in extra.epochs.items():
            for k, v in row.items():
                cloud.epochs.setdefault(e, {}).setdefault(k, v)
        for k, v in extra.test.items():
            cloud.test.setdefault(k, v)
        if not cloud.hyperparameters:
            cloud.hyperparameters = extra.hyperparameters
    tol = _tt(args)
    if args.local_metrics:
        local = read_training_log(args.local_metrics)
        if args.epochs is not None:
            local.epochs = {e: v for e, v in local.epochs.items() if e < args.epochs}
        comparisons = []
    else:
        run = _run_local(args, args.train, args.test, cloud.hyperparameters)
        local = run.metrics
        comparisons = [_channels(cloud, run, args.train, args.test)] if cloud.channels else []
    _limit_epochs(cloud, args.epochs)
    return _finish(args, [*comparisons, compare_training(cloud, local, tol)])


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
    from ..io.artifacts import load_fm
    from ..parity.compare import ModelTolerances, compare_models

    _check_args(args)
    if args.pairs < 2:
        raise LocalFMError(f"--pairs: expected an integer >= 2, got {args.pairs}")
    cloud, local = load_fm(args.cloud), load_fm(args.local)
    tol = ModelTolerances(score=args.tol_score, min_rank_corr=args.min_rank_corr)
    comp = compare_models(cloud, local, tol, n_pairs=args.pairs, seed=args.seed, split=args.user_columns,
                          cloud_name=args.cloud, local_name=args.local)
    return _finish(args, [comp])


def _channels(cloud: Any, run: Any, train: str, test: str | None):  # noqa: ANN202
    from ..parity.compare import compare_channels
    from ..parity.local import channel_bytes

    local: dict[str, tuple[int, int]] = {}
    nb = channel_bytes(train)
    if nb is not None:
        local["train"] = (nb, run.train_rows)
    if test and run.X_test is not None:
        nb = channel_bytes(test)
        if nb is not None:
            local["test"] = (nb, int(run.X_test.shape[0]))
    return compare_channels(cloud, local, int(run.model.hp_["mini_batch_size"]))


def _knn_stage(model_path: Any, pairs: list[tuple[Any, Any]]) -> list[Any]:
    """The cloud k-NN model answering the cloud's queries locally, vs the cloud's answers.

    Same index, same queries: an exact index must give the same neighbours, so the
    default k-NN tolerances apply unchanged.
    """
    import tempfile

    from ..knn.model import KNN
    from ..knn.transform import transform_file
    from ..parity.cloudlog import read_knn
    from ..parity.compare import compare_knn

    model = KNN.load(str(model_path))
    metric = str(model.metadata().get("index_metric", "L2"))
    out = []
    with tempfile.TemporaryDirectory(prefix="localfm-parity-knn-") as tmp:
        for src, cloud_out in pairs:
            dest, _ = transform_file(model, src, tmp, accept="application/jsonlines; verbose=true")
            local = read_knn(str(dest))
            local.source = f"cloud k-NN model, local inference on {src.name}"
            out.append(compare_knn(read_knn(str(cloud_out)), local, index_metric=metric))
    return out


def handle_fixture(args: argparse.Namespace) -> int:
    from ..parity import layout
    from ..parity.cloudlog import read_predictions, read_training_log
    from ..parity.compare import (
        PredictionTolerances,
        compare_hyperparameters,
        compare_predictions,
        compare_recorded_scores,
        compare_training,
    )
    from ..parity.local import fm_defaults, load_model, predictions_from_model, read_input

    _check_args(args)
    train_tol = _tt(args)  # validated before the local run, which takes minutes
    lay = layout.scan(args.run_dir)
    cloud = layout.cloud_training(lay)
    given = layout.given_hyperparameters(lay, cloud)
    comparisons = []
    if cloud.defaults:
        comparisons.append(compare_hyperparameters(cloud, fm_defaults()))
    train = args.train or (str(lay.train) if lay.train else None)
    test = args.test or (str(lay.test) if lay.test else None)
    run = None
    with contextlib.ExitStack() as stack:
        if args.local_metrics:
            local = read_training_log(args.local_metrics)
        else:
            if not train and lay.prepare is not None:
                import tempfile

                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="localfm-parity-prepare-")))
                p_train, p_test = layout.run_prepare(lay, tmp)
                train, test = str(p_train), test or (str(p_test) if p_test else None)
            if not train:
                raise LocalFMError(
                    f"{lay.root}: no training channel (input/data/train/, train.protobuf, prepare.json); "
                    "pass --train/--test or --local-metrics"
                )
            run = _run_local(args, train, test, given)
            local = run.metrics
        if run is not None and cloud.channels:
            comparisons.append(_channels(cloud, run, train, test))
    if args.local_metrics and args.epochs is not None:
        local.epochs = {e: v for e, v in local.epochs.items() if e < args.epochs}
    _limit_epochs(cloud, args.epochs)
    comparisons.append(compare_training(cloud, local, train_tol))

    # A truncated (--epochs) local model is not comparable to the cloud's final one.
    full = run if (run is not None and args.epochs is None) else None
    rec = layout.recorded(lay)
    if rec is not None and full is not None and full.X_test is not None:
        scores = full.model.predict(full.X_test)
        comparisons.append(compare_recorded_scores(rec, scores, tol_row=args.tol_recorded,
                                                   min_ks_pvalue=args.min_ks_pvalue))
    cloud_model = load_model(str(lay.model)) if lay.model is not None else None
    for src, out in lay.transforms:
        cloud_pred = read_predictions(str(out))
        if cloud_model is not None:
            # Same model, same input: the strict check of localfm's inference.
            X = read_input(str(src), feature_dim=cloud_model.V_.shape[0])
            local_pred = predictions_from_model(cloud_model, X, source=f"cloud model, local inference on {src.name}")
            comparisons.append(compare_predictions(cloud_pred, local_pred))
        elif full is not None:
            X = read_input(str(src), feature_dim=full.model.V_.shape[0])
            local_pred = predictions_from_model(full.model, X, source=f"local retrained model on {src.name}")
            tol = PredictionTolerances(score=args.tol_retrained, label_band=args.tol_retrained / 2)
            comparisons.append(compare_predictions(cloud_pred, local_pred, tol))
    if cloud_model is not None and full is not None:
        from ..parity.compare import ModelTolerances, compare_models

        comparisons.append(
            compare_models(cloud_model.weights_, full.model.weights_,
                           ModelTolerances(score=args.tol_retrained, min_rank_corr=args.min_rank_corr_retrained),
                           cloud_name=str(lay.model), local_name="local retrained model")
        )
    if lay.knn_transforms:
        if lay.knn_model is None:
            print(f"localfm parity: note: {lay.root / 'knn'} has outputs but no model.tar.gz; k-NN not compared",
                  file=sys.stderr)
        else:
            comparisons.extend(_knn_stage(lay.knn_model, lay.knn_transforms))
    for missing in lay.missing_inputs:
        print(f"localfm parity: note: {missing} not found; its cloud output is not compared", file=sys.stderr)
    return _finish(args, comparisons)
