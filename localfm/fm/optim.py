"""MXNet-style lazy (row-sparse) Adam, plus local-only alternatives.

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

All arithmetic is float32 in place, on the gathered rows only, so one step costs
O(rows in batch x k) regardless of ``feature_dim``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

BETA1 = 0.9
BETA2 = 0.999


@dataclass
class OptimizerConfig:
    """Effective settings of one parameter table (global value x group multiplier).

    ``lr`` and ``wd`` are floats, or float32 tensors of one value per column when
    several groups share a table (the trainer keeps ``[v | w1]`` in one (d, k+1)
    table so one gather/scatter serves both groups).
    """

    lr: float | torch.Tensor
    wd: float | torch.Tensor
    eps: float = 1e-8
    clip: float | None = None
    kind: str = "adam"  # adam (MXNet lazy), adamw, sgd, adagrad (local-only)


@dataclass
class SlotState:
    """Per-parameter optimizer state (same shape as the parameter)."""

    m: torch.Tensor
    v: torch.Tensor
    t: int = 0


def new_state(param: torch.Tensor) -> SlotState:
    return SlotState(m=torch.zeros_like(param), v=torch.zeros_like(param))


def adam_coefficient(lr: float, t: int) -> float:
    """MXNet's bias-corrected step size ``lr * sqrt(1 - b2^t) / (1 - b1^t)``."""
    return lr * math.sqrt(1.0 - BETA2**t) / (1.0 - BETA1**t)


def _add_wd(g: torch.Tensor, w: torch.Tensor, wd: float | torch.Tensor) -> None:
    if isinstance(wd, torch.Tensor):
        g.addcmul_(w, wd)
    elif wd:
        g.add_(w, alpha=wd)


def step_gathered(
    w: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    grad: torch.Tensor,
    cfg: OptimizerConfig,
    t: int,
    lr_scale: float = 1.0,
) -> None:
    """One optimizer step on already-gathered rows, in place on ``w``, ``m`` and ``v``.

    ``w``/``m``/``v`` may be strided views (the trainer keeps weights and both moment
    slots of a row side by side so one gather and one scatter move all three);
    ``grad`` is ``rescale_grad`` x the gradient, same shape, and is consumed.
    ``t`` is the step number (1 for the first step) used by Adam's bias correction.
    """
    g = grad if cfg.clip is None else grad.clamp_(-cfg.clip, cfg.clip)
    if cfg.kind == "adamw":
        decay = w * (cfg.wd * cfg.lr * lr_scale)
    else:
        _add_wd(g, w, cfg.wd)  # L2 through the gradient (MXNet)
        decay = None
    if cfg.kind == "sgd":
        w.sub_(g * cfg.lr, alpha=lr_scale)
    elif cfg.kind == "adagrad":
        v.addcmul_(g, g)
        w.addcdiv_(g * cfg.lr, v.sqrt().add_(cfg.eps), value=-lr_scale)
    else:  # adam / adamw
        m.lerp_(g, 1.0 - BETA1)  # b1*m + (1-b1)*g
        v.mul_(BETA2).addcmul_(g, g, value=1.0 - BETA2)
        coef = adam_coefficient(1.0, t) * lr_scale
        w.addcdiv_(m * cfg.lr, v.sqrt().add_(cfg.eps), value=-coef)
    if decay is not None:
        w.sub_(decay)


def step_rows(
    param: torch.Tensor,
    state: SlotState,
    rows: torch.Tensor | None,
    grad: torch.Tensor,
    cfg: OptimizerConfig,
    lr_scale: float = 1.0,
) -> None:
    """One optimizer step on ``param[rows]`` (``rows=None``: the whole, dense parameter).

    Gathers the rows of the parameter and its moments, applies :func:`step_gathered`
    and scatters them back; rows not listed are not touched (lazy update).
    ``grad`` has the shape of ``param[rows]`` and is consumed. ``state.t`` is
    advanced here, once per call = once per batch.
    """
    state.t += 1
    if rows is None:
        w, m, v = param.clone(), state.m.clone(), state.v.clone()
    else:
        w, m, v = param.index_select(0, rows), state.m.index_select(0, rows), state.v.index_select(0, rows)
    step_gathered(w, m, v, grad, cfg, state.t, lr_scale)
    _put(param, rows, w)
    _put(state.m, rows, m)
    _put(state.v, rows, v)


def decay_absent_rows(param: torch.Tensor, rows: torch.Tensor, cfg: OptimizerConfig, lr_scale: float = 1.0) -> None:
    """Local-only non-lazy weight decay: shrink the rows *not* in the batch too.

    Used when ``_local_lazy_wd=false``; the cloud never does this.
    """
    mask = torch.ones(param.shape[0], dtype=torch.bool)
    mask[rows] = False
    param[mask] *= 1.0 - cfg.lr * lr_scale * cfg.wd


def _put(dest: torch.Tensor, rows: torch.Tensor | None, value: torch.Tensor) -> None:
    if rows is None:
        dest.copy_(value)
    else:
        dest.index_copy_(0, rows, value)


@dataclass
class ScalarState:
    """Optimizer state of a scalar parameter (the global bias ``w0``), float32 values."""

    m: np.float32 = np.float32(0.0)
    v: np.float32 = np.float32(0.0)
    t: int = 0


def step_scalar(w: np.float32, state: ScalarState, grad: float, cfg: OptimizerConfig, lr_scale: float = 1.0) -> np.float32:
    """:func:`step_rows` for one float32 scalar, in numpy scalars.

    The bias gets a step every batch; doing it with ~15 tiny torch ops cost more
    than the whole factor update at small batch sizes, so it runs as scalar
    arithmetic here (same formulas, float32).
    """
    f32 = np.float32
    state.t += 1
    lr, wd = f32(cfg.lr), f32(cfg.wd)
    g = f32(grad)
    if cfg.clip is not None:
        g = f32(min(max(g, -cfg.clip), cfg.clip))
    decay = f32(0.0)
    if cfg.kind == "adamw":
        decay = w * wd * lr * f32(lr_scale)
    else:
        g = g + wd * w
    if cfg.kind == "sgd":
        w_new = w - f32(lr_scale) * lr * g
    elif cfg.kind == "adagrad":
        state.v = state.v + g * g
        w_new = w - f32(lr_scale) * lr * g / (np.sqrt(state.v) + f32(cfg.eps))
    else:
        state.m = f32(BETA1) * state.m + f32(1.0 - BETA1) * g
        state.v = f32(BETA2) * state.v + f32(1.0 - BETA2) * g * g
        coef = f32(adam_coefficient(1.0, state.t) * lr_scale)
        w_new = w - coef * lr * state.m / (np.sqrt(state.v) + f32(cfg.eps))
    return f32(w_new - decay)
