"""``localfm train``: train a Factorization Machine the way the SageMaker container does.

Reads RecordIO-protobuf channels (``--train``, optional ``--test``), validates the
hyperparameters (SageMaker names, string values), prints the container's log lines
and writes ``DIR/model.tar.gz`` (SageMaker layout) and ``DIR/metrics.json`` together,
atomically: a failed run leaves no model and keeps previous outputs. The last line
says where they went.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import LocalFMError

# The rows of localfm.fm.hyperparameters with required=True (a test keeps them in sync;
# importing the table here would load the FM engine for every `localfm --help`).
REQUIRED_HYPERPARAMETERS = (
    ("feature_dim=N", "number of feature columns (`localfm prepare` prints it)"),
    ("num_factors=K", "latent dimension k, 1..1000"),
    ("predictor_type=T", "binary_classifier or regressor"),
)
EPILOG = (
    "required hyperparameters (each as --hp NAME=VALUE or in --hyperparameters FILE.json):\n"
    + "".join(f"  {name:<18} {what}\n" for name, what in REQUIRED_HYPERPARAMETERS)
    + "Every other SageMaker FM hyperparameter is optional with the cloud's default (table: docs/fm.md).\n\n"
    "example:\n"
    "  localfm train --train prepared/train.protobuf --test prepared/test.protobuf \\\n"
    "      --hp feature_dim=2623 --hp num_factors=64 --hp predictor_type=binary_classifier \\\n"
    "      --hp epochs=30 --seed 0 --model-dir model"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a Factorization Machine with SageMaker semantics",
        description=(
            "Train a SageMaker-compatible Factorization Machine on RecordIO-protobuf data.\n"
            "Writes DIR/model.tar.gz and DIR/metrics.json (DIR is --model-dir) and prints\n"
            "SageMaker-format log lines."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--train", required=True, metavar="PATH", help="training channel: RecordIO-protobuf file or folder")
    p.add_argument("--test", metavar="PATH", help="optional test channel (scored after training, like the cloud)")
    p.add_argument("--validation", metavar="PATH",
                   help="LOCAL-ONLY validation channel: per-epoch validation metrics and, with "
                        "_local_early_stopping_patience, early stopping (SageMaker FM has no such channel)")
    p.add_argument("--model-dir", "--output", "-o", dest="output", required=True, metavar="DIR", help="output folder for model.tar.gz + metrics.json")
    p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help="a hyperparameter by its SageMaker name (repeatable; wins over --hyperparameters)")
    p.add_argument("--hyperparameters", metavar="FILE.json", help="SageMaker hyperparameters.json (all values strings)")
    p.add_argument("--seed", type=int, default=None, help="fixes initialisation and any shuffling (same seed -> same bytes)")
    p.add_argument("--init-model", metavar="URI", help="warm-start from a SageMaker FM artifact (model.tar.gz, s3:// ok)")
    p.add_argument("--quiet-log", action="store_true", help="do not print the SageMaker log lines")
    p.add_argument("--features", metavar="FEATURES.json",
                   help="LOCAL-ONLY, with --hp _local_resample_negatives=true: features.json of "
                        "`prepare --label implicit`; fresh negatives are drawn every epoch from the "
                        "train/test_interactions.parquet beside it")
    p.add_argument("--ray", dest="cluster", metavar="local:N|auto|ADDRESS",
                   help="train on a Ray cluster with SageMaker multi-instance semantics (dist_sync; "
                        "pip install 'localfm[ray]'; see docs/scale.md). --hp _num_kv_servers=S: "
                        "parameters on S kv-server actors (auto; 0 = replicated in every instance)")
    p.add_argument("--instance-count", dest="instance_count", type=int, default=None, metavar="N",
                   help="with --ray: training instances (hosts algo-1 ... algo-N), default 1")
    p.add_argument("--s3-data-distribution-type", dest="distribution", default=None,
                   choices=("FullyReplicated", "ShardedByS3Key"),
                   help="with --ray: every instance reads the whole --train channel (FullyReplicated, "
                        "default) or its files are dealt to the instances by name (ShardedByS3Key)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from ..io.channels import read_channel
    from ..fm.metrics import TrainingLog
    from ..fm.model import FactorizationMachine
    from ..hyperparams import collect

    given = collect(args.hyperparameters, args.hp)
    model = FactorizationMachine(seed=args.seed, **given)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():  # fail before hours of training, not after
        raise LocalFMError(f"{out_dir}: exists and is not a folder")
    if args.cluster:  # train_on_cluster checks the hyperparameters itself, before any cluster work
        return _cluster_handler(args, given, out_dir)
    hp = model.check_params()  # validates before reading data
    for flag, value in (("--instance-count", args.instance_count), ("--s3-data-distribution-type", args.distribution)):
        if value is not None:
            raise LocalFMError(f"{flag}: only used with --ray (multi-instance training)")
    X, y = read_channel(args.train, need_labels=True, feature_dim=hp["feature_dim"])
    X_test = y_test = None
    if args.test:
        X_test, y_test = read_channel(args.test, need_labels=True, feature_dim=hp["feature_dim"])
    X_val = y_val = None
    if args.validation:
        X_val, y_val = read_channel(args.validation, need_labels=True, feature_dim=hp["feature_dim"])
    epoch_data = _resampler(args, hp, X.shape[0])
    log = TrainingLog(hp["predictor_type"], hp["epochs"], emit=not args.quiet_log)
    model.fit(X, y, X_test, y_test, X_val=X_val, y_val=y_val, init=args.init_model, log=log, epoch_data=epoch_data)

    doc = {
        **log.as_dict(),
        "hyperparameters": {k: v for k, v in given.items()},
        "seed": args.seed,
        "train_records": int(X.shape[0]),
        "test_records": None if X_test is None else int(X_test.shape[0]),
        "feature_dim": hp["feature_dim"],
        "engine": model.engine_,
        "threads": model.threads_,
        "device": hp["_local_device"],
        "best_epoch": getattr(model, "best_epoch_", None),
        "resampled_negatives_from": args.features if epoch_data is not None else None,
    }
    _write(model, doc, out_dir)
    return 0


def _write(model, doc: dict, out_dir: Path) -> None:  # noqa: ANN001 - a fitted FactorizationMachine
    """model.tar.gz and metrics.json together, atomically."""
    from ..io.atomic import atomic_outputs

    model_path, metrics_path = out_dir / "model.tar.gz", out_dir / "metrics.json"
    with atomic_outputs() as out:
        model.save(out.path(model_path))
        with open(out.path(metrics_path), "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
    print(f"wrote {model_path} and {metrics_path}", flush=True)


def _cluster_handler(args: argparse.Namespace, given: dict, out_dir: Path) -> int:
    """``--ray``: multi-instance training (localfm.scale.train); same outputs as one instance."""
    for flag, value in (("--validation", args.validation), ("--features", args.features)):
        if value:
            raise LocalFMError(f"{flag}: not supported with --ray")
    from ..scale import train_on_cluster

    count = 1 if args.instance_count is None else args.instance_count
    job = train_on_cluster(args.train, given, cluster=args.cluster, instance_count=count,
                           distribution=args.distribution or "FullyReplicated", test=args.test, seed=args.seed,
                           init=args.init_model, verbose=not args.quiet_log)
    doc = {
        **job.log.as_dict(),
        "hyperparameters": dict(given),
        "seed": args.seed,
        "train_records": int(sum(job.train_records)),
        "test_records": job.test_records,
        "feature_dim": job.model.hp_["feature_dim"],
        "best_epoch": None,
        "resampled_negatives_from": None,
        "instance_count": len(job.files),
        "s3_data_distribution_type": job.distribution,
        "kv_servers": job.kv_servers,
        "train_records_per_host": {f"algo-{i + 1}": n for i, n in enumerate(job.train_records)},
    }
    _write(job.model, doc, out_dir)
    return 0


def _resampler(args: argparse.Namespace, hp: dict, train_rows: int):  # noqa: ANN202 - epoch_data callable or None
    """``epoch_data`` for ``_local_resample_negatives``: fresh negatives per epoch, rules from features.json."""
    if not hp["_local_resample_negatives"]:
        if args.features:
            raise LocalFMError("--features: only used with --hp _local_resample_negatives=true")
        return None
    if not args.features:
        raise LocalFMError(
            "hyperparameter '_local_resample_negatives' needs --features (the features.json of "
            "`localfm prepare --label implicit[:T] --negatives N`)"
        )
    if hp["_local_validation_fraction"] > 0:
        raise LocalFMError(
            "hyperparameter '_local_resample_negatives' cannot be combined with _local_validation_fraction "
            "(the held-out rows would be drawn again as training rows); use --validation"
        )
    from ..data.negatives import epoch_sampler

    epoch_data, rows = epoch_sampler(args.features)
    if rows != train_rows:
        raise LocalFMError(
            f"--train: {train_rows} rows, but {args.features} describes {rows} (positives x (1 + negatives)); "
            "expected the train.protobuf prepared with it"
        )
    return epoch_data
