"""The "bring your own cloud run" folder layout that ``localfm parity fixture`` reads.

One folder per recorded SageMaker run, mirroring the paths the container and batch
transform use, so users can copy their S3 objects in as they are::

    RUN/
      hyperparameters.json        the hyperparameters given to the job (strings)
      training-log.txt            the CloudWatch / notebook log (or any *.log)
      metrics.json                optional: cloud metrics (DescribeTrainingJob JSON,
                                  or cloud-results.json with recorded transform scores)
      input/data/train/           training channel: RecordIO-protobuf file(s), name order
      input/data/test/            optional test channel
      prepare.json                instead of the channels: {"prepare": [args of `localfm prepare`]},
                                  run from RUN/ into a temporary folder (train/test.protobuf)
      model.tar.gz                optional: the cloud model artifact (or output/model.tar.gz)
      transform/input/NAME        optional: batch-transform inputs (RecordIO-protobuf)
      transform/output/NAME.out   the cloud's outputs for them (SageMaker names them <input>.out)
      knn/model.tar.gz            optional: the cloud k-NN model artifact
      knn/input/NAME              k-NN queries sent to its batch transform
      knn/output/NAME.out         the cloud's verbose output (accept: application/jsonlines; verbose=true)

Everything but one training record (a log or metrics file) is optional; each file
present adds a comparison. The fixture ``ml100k-fm-binary-30ep`` uses this layout with
its channels made at test time (see tests/parity/conftest.py).
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LocalFMError
from ..io.jsonfile import read_json
from ..io.uri import read_text
from ..hyperparams import load_json
from .cloudlog import RecordedScores, TrainingMetrics, parse_metrics_json, parse_training_log, recorded_scores

LOG_NAMES = ("training-log.txt", "training.log", "log.txt", "cloudwatch.log")
METRICS_NAMES = ("metrics.json", "cloud-results.json", "describe-training-job.json")
MODEL_NAMES = ("model.tar.gz", "output/model.tar.gz")


@dataclass
class RunLayout:
    """What a run folder holds (paths are None when absent)."""

    root: Path
    log: Path | None = None
    metrics: Path | None = None
    hyperparameters_file: Path | None = None
    train: Path | None = None
    test: Path | None = None
    model: Path | None = None
    transforms: list[tuple[Path, Path]] = field(default_factory=list)  # (input, cloud .out)
    missing_inputs: list[Path] = field(default_factory=list)  # .out files without their input
    prepare: list[str] | None = None  # `localfm prepare` arguments that rebuild the channels
    knn_model: Path | None = None
    knn_transforms: list[tuple[Path, Path]] = field(default_factory=list)  # (queries, cloud verbose .out)


def _channel(root: Path, name: str) -> Path | None:
    for cand in (root / "input" / "data" / name, root / name, root / f"{name}.protobuf", root / f"{name}.recordio"):
        if cand.is_dir() and any(f.is_file() and not f.name.startswith(".") for f in cand.iterdir()):
            return cand
        if cand.is_file():
            return cand
    return None


def scan(root: str | Path) -> RunLayout:
    """Find the parts of a run folder; raises when it holds no training record at all."""
    root = Path(root)
    if not root.is_dir():
        raise LocalFMError(f"{root}: not a folder (expected a cloud run folder; see docs/parity.md)")
    lay = RunLayout(root=root)
    lay.log = next((root / n for n in LOG_NAMES if (root / n).is_file()), None)
    if lay.log is None:
        # Files only: a folder named like "cloudwatch-2024.log" is not a log.
        logs = sorted(q for q in root.glob("*.log") if q.is_file())
        lay.log = logs[0] if logs else None
    lay.metrics = next((root / n for n in METRICS_NAMES if (root / n).is_file()), None)
    hp = root / "hyperparameters.json"
    lay.hyperparameters_file = hp if hp.is_file() else None
    lay.train = _channel(root, "train")
    lay.test = _channel(root, "test")
    prep = root / "prepare.json"
    if prep.is_file():
        spec = _json(prep)
        args = spec.get("prepare")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            raise LocalFMError(f"{prep}: expected {{\"prepare\": [\"movielens\", PATH, \"--split\", ...]}}")
        if any(a == "--out" or a.startswith("--out=") for a in args):
            raise LocalFMError(f"{prep}: leave out --out (the channels go to a temporary folder)")
        lay.prepare = args
    lay.model = next((root / n for n in MODEL_NAMES if (root / n).is_file()), None)
    lay.transforms = _pairs(root / "transform", lay.missing_inputs)
    knn_model = root / "knn" / "model.tar.gz"
    lay.knn_model = knn_model if knn_model.is_file() else None
    lay.knn_transforms = _pairs(root / "knn", lay.missing_inputs)
    if lay.log is None and lay.metrics is None:
        raise LocalFMError(
            f"{root}: no training log ({' / '.join(LOG_NAMES)} / *.log) or metrics file ({' / '.join(METRICS_NAMES)})"
        )
    return lay


def run_prepare(lay: RunLayout, dest: Path) -> tuple[Path, Path | None]:
    """Rebuild the channels with ``localfm prepare`` as recorded in ``prepare.json``.

    Runs as a child process with the run folder as working directory, so relative
    paths in the recorded arguments mean what they meant to whoever recorded them.
    """
    assert lay.prepare is not None
    cmd = [sys.executable, "-m", "localfm", "--quiet", "prepare", *lay.prepare, "--out", str(dest)]
    proc = subprocess.run(cmd, cwd=lay.root, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise LocalFMError(f"{lay.root / 'prepare.json'}: localfm prepare failed: {last}")
    train = dest / "train.protobuf"
    test = dest / "test.protobuf"
    if not train.is_file():
        raise LocalFMError(f"{lay.root / 'prepare.json'}: localfm prepare wrote no train.protobuf")
    return train, test if test.is_file() else None


def _pairs(stage: Path, missing: list[Path]) -> list[tuple[Path, Path]]:
    """(input, cloud output) pairs of a batch-transform stage folder; unmatched outputs go to ``missing``."""
    pairs: list[tuple[Path, Path]] = []
    out_dir, in_dir = stage / "output", stage / "input"
    if out_dir.is_dir():
        for out in sorted(out_dir.glob("*.out")):
            src = in_dir / out.name[: -len(".out")]
            if src.is_file():
                pairs.append((src, out))
            else:
                missing.append(src)
    return pairs


def cloud_training(lay: RunLayout) -> TrainingMetrics:
    """The cloud's training record: the log, completed by the metrics file where the log is silent."""
    log = parse_training_log(read_text(str(lay.log)), source=str(lay.log)) if lay.log else None
    met = parse_metrics_json(_json(lay.metrics), source=str(lay.metrics)) if lay.metrics else None
    if log is None:
        assert met is not None
        return met
    if met is not None:
        for e, row in met.epochs.items():
            for k, v in row.items():
                log.epochs.setdefault(e, {}).setdefault(k, v)
        for k, v in met.test.items():
            log.test.setdefault(k, v)
        if not log.hyperparameters and met.hyperparameters:
            log.hyperparameters = met.hyperparameters
    return log


def given_hyperparameters(lay: RunLayout, cloud: TrainingMetrics) -> dict[str, str]:
    """hyperparameters.json when present, else what the log/metrics say the job was given."""
    if lay.hyperparameters_file is not None:
        return load_json(lay.hyperparameters_file)
    return dict(cloud.hyperparameters)


def recorded(lay: RunLayout) -> RecordedScores | None:
    """Recorded batch-transform scores in the metrics file (the fixture's head/tail pairs)."""
    if lay.metrics is None:
        return None
    return recorded_scores(_json(lay.metrics), source=str(lay.metrics))


def _json(path: Path | None) -> dict:
    assert path is not None
    return read_json(path, expect_object=True)
