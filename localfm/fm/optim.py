"""MXNet-style lazy (row-sparse) Adam, plus local-only alternatives: the one definition.

Why not ``torch.optim.Adam``: SageMaker FM trains with MXNet's ``adam_update`` on
row-sparse gradients with ``lazy_update=True``. That differs from PyTorch's Adam in
three ways that visibly change the learning curve:

1. weight decay is added to the *rescaled, clipped* gradient (``g = clip(r*grad) + wd*w``)
   and then goes through the moments (L2, not decoupled);
2. only rows present in the batch are touched: their wd, their moments and their step.
   Rows absent from a batch keep stale moments (no decay of m/v in between);
3. the bias correction is folded into the learning rate,
   ``lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)``, with ``t`` counting optimizer steps of
   the whole parameter (not per row), and ``eps`` added outside the sqrt.

This module holds what both training engines (:mod:`localfm.fm.engines`) must agree
on: the constants, the bias-corrected step size, and the effective per-column
learning rates and weight decays (global value x group multiplier). Each engine then
does the float32 arithmetic in its own form (torch ops, compiled numba loops), with
the same formulas and operation order. numpy only, so the numba engine never pays
for importing torch.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

BETA1 = 0.9
BETA2 = 0.999


def adam_coefficient(lr: float, t: int) -> float:
    """MXNet's bias-corrected step size ``lr * sqrt(1 - b2^t) / (1 - b1^t)``.

    Both engines evaluate it in Python double precision (``pow`` rounding included)
    and round to float32 only where the step uses it, so they agree bit for bit.
    """
    return lr * math.sqrt(1.0 - BETA2**t) / (1.0 - BETA1**t)


@dataclass(frozen=True)
class OptimizerConfig:
    """Effective optimizer settings of one training run.

    The trainer keeps ``[v | w]`` in one (d, k+1) table so one gather/scatter serves
    both groups; ``lr`` / ``wd`` therefore hold one float32 value per table column
    (``factors`` k times, then ``linear``). The bias ``w0`` is a separate scalar
    parameter with its own ``bias_lr`` / ``bias_wd`` (Python floats; each engine rounds
    them to float32 where it uses them).
    """

    kind: str  # adam (MXNet lazy, the cloud), adamw, sgd, adagrad (local-only)
    lr: np.ndarray  # (k+1,) float32
    wd: np.ndarray  # (k+1,) float32
    bias_lr: float
    bias_wd: float
    eps: float
    clip: float | None
    rescale: float  # rescale_grad: 1/mini_batch_size unless set


def optimizer_config(hp: Mapping[str, Any], k: int) -> OptimizerConfig:
    """The settings for parsed FM hyperparameters ``hp`` and ``k`` factors.

    ``use_linear=false`` gives the linear column lr = wd = 0, so ``w`` stays at its
    (zeroed) initial value while sharing the table with ``v``.
    """
    glr, gwd = hp["_learning_rate"], hp["_wd"]
    lin_lr = glr * hp["linear_lr"] if hp["use_linear"] else 0.0
    lin_wd = gwd * hp["linear_wd"] if hp["use_linear"] else 0.0
    rescale = hp["rescale_grad"]
    return OptimizerConfig(
        kind=hp["_local_optimizer"],
        lr=np.array([glr * hp["factors_lr"]] * k + [lin_lr], dtype=np.float32),
        wd=np.array([gwd * hp["factors_wd"]] * k + [lin_wd], dtype=np.float32),
        bias_lr=glr * hp["bias_lr"],
        bias_wd=gwd * hp["bias_wd"],
        eps=hp["eps"],
        clip=hp["clip_gradient"],
        rescale=rescale if rescale is not None else 1.0 / hp["mini_batch_size"],
    )
