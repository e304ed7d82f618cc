"""SageMaker Factorization Machines hyperparameters: names, defaults, ranges.

The names, defaults and ranges follow the SageMaker developer guide and the
container's ``default-conf.json`` as printed in a real job log
(``fixtures/cloud/ml100k-fm-binary-30ep/training-log.txt``). Values arrive as strings
(``hyperparameters.json``) and are validated here before any work starts, so a bad
value fails the same way the cloud would: exit 2, naming the hyperparameter and
the allowed range.

Names starting with ``_local_`` are **local-only** extensions (shuffling, other
optimizers, schedules, early stopping). Their defaults reproduce the cloud exactly;
the cloud would not accept them. The container's own underscore internals that carry
meaning (``_learning_rate``, ``_wd``, ``_optimizer``) are declared so a real
``hyperparameters_final`` file round-trips; others (``_kvstore`` ...) are ignored.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import LocalFMError
from ..hyperparams import HP, parse, table_markdown

_INIT_METHODS = ("normal", "uniform", "constant")


def _group(prefix: str, lr: float, wd: float, sigma: float, what: str) -> list[HP]:
    return [
        HP(f"{prefix}_lr", "float", default=lr, low=0, doc=f"learning-rate multiplier of the {what}"),
        HP(f"{prefix}_wd", "float", default=wd, low=0, doc=f"weight-decay (L2) multiplier of the {what}"),
        HP(f"{prefix}_init_method", "str", default="normal", choices=_INIT_METHODS,
           doc=f"initialisation of the {what}"),
        HP(f"{prefix}_init_scale", "float", default=None, low=0,
           doc=f"uniform init range [-scale, scale] of the {what} (init_method=uniform)"),
        HP(f"{prefix}_init_sigma", "float", default=sigma, low=0,
           doc=f"normal init standard deviation of the {what} (init_method=normal)"),
        HP(f"{prefix}_init_value", "float", default=None,
           doc=f"constant init value of the {what} (init_method=constant)"),
    ]


FM_HYPERPARAMETERS: list[HP] = [
    HP("feature_dim", "int", required=True, low=1, high=2**31 - 1,
       doc="number of input columns (must match the data)"),
    HP("num_factors", "int", required=True, low=1, high=1000, doc="latent dimension k of `v`"),
    HP("predictor_type", "str", required=True, choices=("binary_classifier", "regressor"),
       doc="log loss on sigmoid, or squared error"),
    HP("epochs", "int", default=1, low=1, high=10**6, doc="passes over the training data"),
    HP("mini_batch_size", "int", default=1000, low=1, high=10**7,
       doc="rows per optimizer step; the last partial batch is padded (see docs/fm.md)"),
    *_group("bias", 0.1, 0.01, 0.01, "global bias w0"),
    *_group("linear", 0.001, 0.001, 0.01, "linear weights w"),
    *_group("factors", 0.0001, 0.00001, 0.001, "factor matrix v"),
    HP("use_bias", "bool", default=True, doc="learn the global bias w0"),
    HP("use_linear", "bool", default=True, doc="learn the linear weights w"),
    HP("clip_gradient", "float", default=None, low=0, low_open=True,
       doc="clip the rescaled gradient to [-c, c] (none by default)"),
    HP("eps", "float", default=1e-8, low=0, low_open=True, doc="Adam epsilon"),
    HP("rescale_grad", "float", default=None, low=0, low_open=True,
       doc="gradient scale (default 1/mini_batch_size, i.e. mean loss)"),
    HP("batch_metrics_publish_interval", "int", default=500, low=1,
       doc="log per-batch metrics every N batches"),
    HP("_learning_rate", "float", default=1.0, low=0, doc="container-internal global learning rate"),
    HP("_wd", "float", default=1.0, low=0, doc="container-internal global weight decay"),
    HP("_optimizer", "str", default="adam", choices=("adam",), doc="container-internal optimizer"),
    # ---- local-only extensions (never sent to SageMaker; defaults = cloud behaviour) ----
    HP("_local_shuffle", "bool", default=False,
       doc="LOCAL-ONLY: reshuffle training rows every epoch (seeded)"),
    HP("_local_optimizer", "str", default="adam", choices=("adam", "adamw", "sgd", "adagrad"),
       doc="LOCAL-ONLY: adam = MXNet lazy Adam (cloud); adamw = decoupled decay; sgd; adagrad"),
    HP("_local_lr_schedule", "str", default="constant", choices=("constant", "cosine", "linear"),
       doc="LOCAL-ONLY: multiply the learning rate by this schedule over the epochs"),
    HP("_local_lazy_wd", "bool", default=True,
       doc="LOCAL-ONLY: true = weight decay only on rows in the batch (cloud)"),
    HP("_local_early_stopping_patience", "int", default=0, low=0,
       doc="LOCAL-ONLY: stop after N epochs without validation improvement and keep the best "
           "epoch (0 = off; needs validation data)"),
    HP("_local_engine", "str", default="auto", choices=("auto", "numba", "torch"),
       doc="LOCAL-ONLY: training engine: numba (compiled epoch loop, same results, faster), torch, "
           "or auto (numba when installed and every option is supported)"),
    HP("_local_device", "str", default="cpu",
       doc="LOCAL-ONLY: where the torch engine trains: cpu, or cuda / cuda:N / mps (the table, batches and "
           "Adam state live there; any other device implies the torch engine)"),
    HP("_local_threads", "int", default="auto", low=1, high=256, special=("auto",),
       doc="LOCAL-ONLY: threads of the numba engine (same bytes at any count); auto = 2 from "
           "mini_batch_size 1000 up when a second core is idle (busy CPUs over 0.1 s), else 1"),
    HP("_local_validation_fraction", "float", default=0.0, low=0, high=0.5, high_open=True,
       doc="LOCAL-ONLY: hold out a seeded random fraction of training rows for validation / early stopping"),
    HP("_local_resample_negatives", "bool", default=False,
       doc="LOCAL-ONLY: implicit-feedback data: draw fresh negatives every epoch after the first "
           "(needs the features.json of `prepare --label implicit`; the artifact stays SageMaker-loadable)"),
]

LOCAL_ONLY = tuple(hp.name for hp in FM_HYPERPARAMETERS if hp.name.startswith("_local_"))


def parse_fm(given: Mapping[str, Any]) -> dict[str, Any]:
    """Validate FM hyperparameters (strings or values) and resolve cross-field rules.

    Beyond per-field ranges, an ``*_init_method`` of ``uniform`` needs its
    ``*_init_scale`` and ``constant`` its ``*_init_value`` (SageMaker fails the job
    otherwise); we fail early with the name of the missing field.
    """
    hp = parse(FM_HYPERPARAMETERS, given, algorithm="factorization-machines")
    for group in ("bias", "linear", "factors"):
        method = hp[f"{group}_init_method"]
        if method == "uniform" and hp[f"{group}_init_scale"] is None:
            raise LocalFMError(
                f"hyperparameter '{group}_init_scale' is required when {group}_init_method=uniform "
                "(expected a number in [0, inf])"
            )
        if method == "constant" and hp[f"{group}_init_value"] is None:
            raise LocalFMError(
                f"hyperparameter '{group}_init_value' is required when {group}_init_method=constant "
                "(expected a number)"
            )
    return hp


def markdown_table() -> str:
    """The table for docs/fm.md (a test keeps the docs in sync)."""
    return table_markdown(FM_HYPERPARAMETERS)
