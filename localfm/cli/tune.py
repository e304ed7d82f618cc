"""``localfm tune``: run a SageMaker tuning-job body (tuning.json) locally with optuna.

Thin wrapper over :mod:`localfm.experiments.tuning`; see docs/tuning.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """examples:
  localfm prepare movielens ../shared/datasets/ml-100k --split ua --label implicit --negatives 4 --out work/ml100k-imp
  localfm tune --train work/ml100k-imp/train.protobuf --features work/ml100k-imp/features.json \\
      --config examples/tuning.json --out work/tune
  # killed? run the same command again: finished jobs are kept, interrupted ones rerun once
  localfm tune ... --out work/tune --ray auto   # trials as Ray tasks on the cluster (docs/scale.md)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune",
        help="local twin of SageMaker Automatic Model Tuning (optuna; resumable)",
        description=(
            "Search FM hyperparameters as a SageMaker tuning job would, from the CreateHyperParameterTuningJob "
            "body (tuning.json). Writes DIR/trials.csv, DIR/trials.parquet, DIR/objective.png and "
            "DIR/best/{model.tar.gz,hyperparameters.json}; the study lives in DIR/study.db so a rerun resumes."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--train", required=True, metavar="PATH", help="training channel: RecordIO-protobuf file or folder")
    p.add_argument("--features", required=True, metavar="FILE", help="features.json written by `localfm prepare`")
    p.add_argument("--config", required=True, metavar="FILE", help="tuning.json (CreateHyperParameterTuningJob body)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (also the resumable study)")
    p.add_argument("--validation", metavar="PATH",
                   help="channel the test:* objectives are computed on (preferred over --test)")
    p.add_argument("--test", metavar="PATH", help="test channel for the test:* objectives (as the cloud computes them)")
    p.add_argument("--holdout-fraction", type=float, default=0.1, metavar="F",
                   help="validation:* ranking objectives: fraction of each user's training positives held out "
                        "(seeded; default 0.1)")
    p.add_argument("--ray", dest="cluster", metavar="local:N|auto|ADDRESS",
                   help="run the trials as Ray tasks on a cluster (pip install 'localfm[ray]'; see docs/scale.md); "
                        "the study and outputs stay here, MaxParallelTrainingJobs still caps concurrency")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from ..errors import LocalFMError
    from ..experiments.tuning import TuneInputs, load_tuning_config, tune

    config = load_tuning_config(args.config)
    for note in config.warnings:
        print(f"localfm tune: warning: {args.config}: {note}", file=sys.stderr)
    if not 0 < args.holdout_fraction < 1:
        raise LocalFMError(f"--holdout-fraction {args.holdout_fraction}: expected a number in (0, 1)")
    inputs = TuneInputs(train=args.train, features=args.features, validation=args.validation, test=args.test)
    result = tune(config, inputs, args.out, holdout_fraction=args.holdout_fraction, cluster=args.cluster)
    print(f"{result.jobs} training jobs ({result.ran_now} run now); outputs in {result.out_dir}")
    for failure in result.failures[:5]:
        print(f"localfm tune: failed job: {failure}", file=sys.stderr)
    if result.best is None:
        raise LocalFMError(f"{args.out}: no training job completed (see trials.csv)")
    b = result.best
    print(f"best: {b['TrainingJobName']} {b['MetricName']}={b['FinalObjectiveValue']:.6g}")
    tuned = {r.name for r in config.ranges}
    print("  " + " ".join(f"{k}={v}" for k, v in sorted(b["hyperparameters"].items()) if k in tuned))
    return 0
