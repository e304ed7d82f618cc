"""``localfm knn train`` / ``localfm knn transform``: SageMaker k-NN on FAISS, offline.

``train`` reads a training channel (RecordIO-protobuf or CSV with the label first),
validates the hyperparameters by their SageMaker names, builds the index and writes
the cloud's artifact layout (``model.tar.gz`` plus the loose ``model_algo-1*``
files) atomically. ``--report-recall`` measures recall@100 of an approximate index
against exact search; ``--target-recall`` raises an IVF index's ``nprobe`` until it
is met. ``transform`` is batch transform: every input file gets ``<name>.out`` in
SageMaker's response format.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import LocalFMError

ACCEPT_HELP = (
    "response format: application/jsonlines (default), application/json, "
    "each optionally with '; verbose=true' (adds labels and distances)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "knn",
        help="SageMaker k-NN twin (FAISS): train an index, batch-transform queries",
        description="SageMaker k-NN twin on FAISS. Subcommands: train, transform.",
    )
    sub = p.add_subparsers(dest="knn_command", metavar="SUBCOMMAND", parser_class=type(p))
    sub.required = True

    t = sub.add_parser(
        "train",
        help="build a k-NN index and write SageMaker's k-NN model artifact",
        description=(
            "Build a SageMaker-compatible k-NN model from a training channel (RecordIO-protobuf "
            "with labels, or CSV with the label in the first column). Writes OUTPUT/model.tar.gz "
            "and the loose model_algo-1, model_algo-1.labels, model_algo-1.json, all or nothing."
        ),
    )
    t.add_argument("--train", required=True, metavar="PATH", help="training channel: a file or a folder (s3:// ok)")
    t.add_argument("--test", metavar="PATH", help="optional test channel: prints accuracy (classifier) or mse (regressor)")
    t.add_argument("--content-type", choices=("application/x-recordio-protobuf", "text/csv"),
                   help="training data format (default: detected per file)")
    t.add_argument("--model-dir", "--output", "-o", dest="output", required=True, metavar="DIR",
                   help="model folder to write (SageMaker k-NN layout + model.tar.gz)")
    t.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help="a hyperparameter by its SageMaker name (repeatable; wins over --hyperparameters)")
    t.add_argument("--hyperparameters", metavar="FILE.json", help="SageMaker hyperparameters.json")
    t.add_argument("--report-recall", action="store_true",
                   help="measure recall@K of the index against exact search (on a seeded sample of the training rows)")
    t.add_argument("--recall-k", type=int, default=100, metavar="K", help="K for --report-recall (default 100)")
    t.add_argument("--recall-queries", type=int, default=1000, metavar="N",
                   help="number of training rows used as recall queries (default 1000)")
    t.add_argument("--target-recall", type=float, metavar="R",
                   help="IVF indexes: double nprobe until recall@K >= R and store it in the model")
    # command_name: errors and warnings say "localfm knn train:", not "localfm knn:".
    t.set_defaults(func=train_handler, command_name="knn train")

    x = sub.add_parser(
        "transform",
        help="batch transform: answer every query of the input file(s) into <name>.out",
        description=(
            "Batch transform with a k-NN model (model folder, model.tar.gz, or model_algo-1; s3:// "
            "for model.tar.gz). Input: RecordIO-protobuf, CSV, JSON {\"instances\": [...]} or JSON Lines, "
            "a file or a folder. Each input gets OUTPUT/<input name>.out; all land together or none."
        ),
    )
    x.add_argument("--model", "-m", required=True, metavar="PATH", help="k-NN model (folder, model.tar.gz, model_algo-1)")
    x.add_argument("--input", "-i", required=True, metavar="PATH", help="query file or folder of query files")
    x.add_argument("--output-dir", "--output", "-o", dest="output", metavar="DIR",
                   help="folder for the .out files (default: next to each input)")
    x.add_argument("--accept", default="application/jsonlines", help=ACCEPT_HELP)
    x.add_argument("--content-type",
                   choices=("application/x-recordio-protobuf", "text/csv", "application/json", "application/jsonlines"),
                   help="input format (default: from the extension, else sniffed)")
    x.add_argument("--k", type=int, metavar="K", help="override k from model_algo-1.json")
    x.add_argument("--nprobe", type=int, metavar="N", help="override the IVF nprobe stored in the model")
    x.add_argument("--max-artifact-bytes", type=int, metavar="N",
                   help="refuse a model.tar.gz holding more than N bytes (default 8 GiB, "
                        "or LOCALFM_MAX_ARTIFACT_BYTES)")
    x.set_defaults(func=transform_handler, command_name="knn transform")


def train_handler(args: argparse.Namespace) -> int:
    from ..hyperparams import collect
    from ..knn.channels import read_training
    from ..knn.index import measure_recall, tune_nprobe
    from ..knn.model import KNN

    model = KNN(**collect(args.hyperparameters, args.hp))
    hp = model.check_params()  # validates before reading data
    if args.target_recall is not None and hp["index_type"] not in ("faiss.IVFFlat", "faiss.IVFPQ"):
        raise LocalFMError("--target-recall: applies to faiss.IVFFlat / faiss.IVFPQ indexes (it tunes nprobe)")
    if args.recall_k < 1 or args.recall_queries < 1:
        raise LocalFMError("--recall-k / --recall-queries: expected positive integers")
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise LocalFMError(f"{out_dir}: exists and is not a folder")
    X, y = read_training(args.train, args.content_type)
    model.fit(X, y, where=str(args.train))
    assert model.index_ is not None and model.sample_indices_ is not None
    indexed = X[model.sample_indices_]
    summary: dict[str, object] = {
        "train_records": int(X.shape[0]),
        "indexed": model.index_.ntotal,
        "feature_dim": model.feature_dim,
        "index_type": model.index_.index_type,
        "index_metric": model.index_.index_metric,
    }
    if args.target_recall is not None:
        tuned = tune_nprobe(model.index_, indexed, target=args.target_recall, k=args.recall_k,
                            n_queries=args.recall_queries, seed=model.hp_["seed"])
        model.hp_["nprobe"] = tuned["nprobe"]
        summary["nprobe_tuning"] = tuned["tried"]
        summary[f"recall@{tuned['k']}"] = tuned["recall"]
        summary["nprobe"] = tuned["nprobe"]
    elif args.report_recall:
        rec = measure_recall(model.index_, indexed, k=args.recall_k, n_queries=args.recall_queries,
                             seed=model.hp_["seed"])
        summary[f"recall@{rec['k']}"] = rec["recall"]
        summary["recall_queries"] = rec["queries"]
        summary["recall_refilled_fraction"] = rec["refilled_fraction"]
    if args.test:
        Xt, yt = read_training(args.test, args.content_type)
        # read_training never returns zero rows; errors name the test file, not "queries"
        pred = model.neighbours(Xt, where=str(args.test)).predicted_label
        if model.predictor_type == "classifier":
            summary["test_accuracy"] = float((pred == yt).mean()) if yt.size else None
        else:
            summary["test_mse"] = float(((pred.astype("f8") - yt) ** 2).mean()) if yt.size else None
    model.report_ = {k: v for k, v in summary.items() if k.startswith(("recall", "nprobe", "test_"))}
    model.save(out_dir)
    print(json.dumps(summary, sort_keys=True))
    return 0


def transform_handler(args: argparse.Namespace) -> int:
    from ..io.transform import input_files
    from ..io.uri import is_s3
    from ..knn.model import KNN
    from ..knn.transform import parse_accept, transform_files

    parse_accept(args.accept)  # bad Accept fails before the model loads
    model = KNN.load(args.model, max_bytes=args.max_artifact_bytes)
    if args.k is not None:
        if args.k < 1:
            raise LocalFMError(f"--k: expected a positive integer, got {args.k}")
        model.hp_["k"] = args.k
    if args.nprobe is not None:
        if args.nprobe < 1:
            raise LocalFMError(f"--nprobe: expected a positive integer, got {args.nprobe}")
        assert model.index_ is not None
        model.index_.nprobe = args.nprobe
    if args.output is None and is_s3(str(args.input)):
        raise LocalFMError("--output: required when --input is an s3:// channel")
    files = input_files(args.input)  # one file, or the files of one folder: a single parent
    out_dir = Path(args.output) if args.output else Path(files[0]).parent
    done = transform_files(model, files, out_dir, accept=args.accept, content_type=args.content_type)
    for dest, n in done:
        print(f"{dest}\t{n} queries", file=sys.stdout)
    return 0
