"""``localfm predict``: FM inference in SageMaker's request/response formats.

Works for models trained here or by SageMaker (any FM ``model.tar.gz``, ``s3://`` ok).
Input is RecordIO-protobuf or JSON ``{"instances": [...]}``; output is
``application/json`` or ``application/jsonlines``. With ``--output DIR`` each input
file ``NAME`` gives ``DIR/NAME.out`` (SageMaker batch-transform naming), written
atomically; otherwise the response goes to stdout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import LocalFMError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="score data with an FM model (SageMaker response formats)",
        description=(
            "Score RecordIO-protobuf or JSON instances with a SageMaker FM model.tar.gz. "
            "Binary classifier rows give {\"score\": s, \"predicted_label\": 0/1}, regressor rows {\"score\": s}."
        ),
    )
    p.add_argument("--model", required=True, metavar="URI", help="FM artifact: model.tar.gz / model_algo-1 (s3:// ok)")
    p.add_argument("--input", required=True, metavar="PATH",
                   help="input file or folder of files (RecordIO-protobuf or .json)")
    p.add_argument("--content-type", choices=("application/x-recordio-protobuf", "application/json"),
                   help="input format (default: application/json for *.json, else RecordIO-protobuf)")
    p.add_argument("--accept", default="application/json", choices=("application/json", "application/jsonlines"),
                   help="response format (default application/json)")
    p.add_argument("--output", "-o", metavar="DIR", help="write DIR/<input name>.out (batch transform); default stdout")
    p.add_argument("--predictor-type", choices=("binary_classifier", "regressor"),
                   help="needed only when the artifact does not record it")
    p.set_defaults(func=handler)


def _inputs(path: Path) -> list[Path]:
    if path.is_dir():
        # *.out are our own responses (an --output equal to the input folder): never inputs
        files = sorted(f for f in path.iterdir()
                       if f.is_file() and not f.name.startswith(".") and f.suffix != ".out")
        if not files:
            raise LocalFMError(f"{path}: folder holds no input files")
        return files
    if not path.exists():
        raise LocalFMError(f"{path}: file not found")
    return [path]


def _read(path: Path, content_type: str | None, feature_dim: int):  # noqa: ANN202 - csr matrix
    from ..fm.channels import read_channel
    from ..fm.inference import JSON, parse_json_instances

    kind = content_type or (JSON if path.suffix.lower() == ".json" else "application/x-recordio-protobuf")
    if kind == JSON:
        from ..io.jsonfile import read_json

        return parse_json_instances(read_json(path, what="request file"), feature_dim, source=str(path))
    X, _ = read_channel(str(path), need_labels=False)
    if X.shape[1] != feature_dim:
        raise LocalFMError(f"{path}: records have {X.shape[1]} features, the model expects feature_dim {feature_dim}")
    return X


def handler(args: argparse.Namespace) -> int:
    from ..fm.inference import render
    from ..fm.model import FactorizationMachine
    from ..io.atomic import atomic_outputs

    model = FactorizationMachine.load(args.model, predictor_type=args.predictor_type)
    ptype = args.predictor_type or model.hp_["predictor_type"]
    feature_dim = model.V_.shape[0]
    files = _inputs(Path(args.input))
    # Parse every input before writing anything, so bad input leaves no partial outputs.
    bodies = [(f, render(model.predict(_read(f, args.content_type, feature_dim)), ptype, args.accept)) for f in files]
    if args.output:
        out_dir = Path(args.output)
        if out_dir.exists() and not out_dir.is_dir():
            raise LocalFMError(f"{out_dir}: exists and is not a folder")
        # One output set: if any write fails, no .out lands (a batch transform is all or nothing).
        with atomic_outputs() as out:
            for f, body in bodies:
                with open(out.path(out_dir / f"{f.name}.out"), "w", encoding="utf-8") as fh:
                    fh.write(body)
    else:
        for _, body in bodies:
            sys.stdout.write(body if body.endswith("\n") else body + "\n")
    return 0
