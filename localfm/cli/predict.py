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
    p.add_argument("--max-artifact-bytes", type=int, metavar="N",
                   help="refuse a model archive holding more than N bytes (default 8 GiB, "
                        "or LOCALFM_MAX_ARTIFACT_BYTES)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from ..fm.inference import load_predictor, scoring
    from ..io.transform import input_files, transform_files, transform_to

    model = load_predictor(args.model, predictor_type=args.predictor_type, max_bytes=args.max_artifact_bytes)
    plug = scoring(model, args.accept)
    files = input_files(args.input)
    if args.output:
        transform_files(files, args.output, plug, content_type=args.content_type)
    else:
        transform_to(sys.stdout, files, plug, content_type=args.content_type)
    return 0
