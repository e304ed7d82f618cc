"""The optimizer both engines follow (localfm.fm.optim), through the torch engine's step functions."""
import math

import numpy as np
import pytest
import torch

from localfm.fm.engines.torch import ScalarState, step_gathered, step_scalar
from localfm.fm.optim import OptimizerConfig, adam_coefficient


def _mxnet_adam_reference(w, grads, lr, wd, eps=1e-8, clip=None):
    """MXNet 1.x adam_update written out in float64 (dense rows)."""
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    w = w.copy()
    for t, g in enumerate(grads, start=1):
        if clip is not None:
            g = np.clip(g, -clip, clip)
        g = g + wd * w
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        lr_t = lr * math.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        w = w - lr_t * m / (np.sqrt(v) + eps)
    return w


def _config(lr, wd, ncols, clip=None, kind="adam"):
    """Settings with one lr/wd for all ``ncols`` columns (and the bias)."""
    cfg = OptimizerConfig(kind=kind, lr=np.full(ncols, lr, np.float32), wd=np.full(ncols, wd, np.float32),
                          bias_lr=lr, bias_wd=wd, eps=1e-8, clip=clip, rescale=1.0)
    return cfg, torch.from_numpy(cfg.lr), torch.from_numpy(cfg.wd)


def _step_rows(param, m, v, rows, grad, cfg, lr, wd, t):
    """Gather ``rows``, step them, scatter back: what the torch engine does per batch."""
    w_g, m_g, v_g = param[rows].clone(), m[rows].clone(), v[rows].clone()
    step_gathered(w_g, m_g, v_g, grad, cfg, lr, wd, t)
    param[rows], m[rows], v[rows] = w_g, m_g, v_g


def test_bias_corrected_step_size():
    assert adam_coefficient(1.0, 1) == math.sqrt(1 - 0.999) / (1 - 0.9)


def test_matches_mxnet_formula_and_is_lazy():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(6, 3)).astype(np.float32)
    param = torch.from_numpy(W.copy())
    m, v = torch.zeros_like(param), torch.zeros_like(param)
    cfg, lr, wd = _config(0.01, 0.1, 3, clip=0.5)
    rows = torch.tensor([1, 4])
    grads = [rng.normal(size=(2, 3)).astype(np.float32) for _ in range(3)]
    for t, g in enumerate(grads, start=1):
        _step_rows(param, m, v, rows, torch.from_numpy(g.copy()), cfg, lr, wd, t)  # grad is consumed
    expected = _mxnet_adam_reference(W[[1, 4]].astype(np.float64), [g.astype(np.float64) for g in grads], 0.01, 0.1, clip=0.5)
    np.testing.assert_allclose(param.numpy()[[1, 4]], expected, rtol=1e-5, atol=1e-6)
    # rows not in the batch: untouched weights, no moments (lazy update, no wd either)
    untouched = [0, 2, 3, 5]
    np.testing.assert_array_equal(param.numpy()[untouched], W[untouched])
    assert not m[untouched].any() and not v[untouched].any()


def test_dense_parameter_step():
    p = torch.tensor([0.5])
    cfg, lr, wd = _config(0.1, 0.01, 1)
    step_gathered(p, torch.zeros(1), torch.zeros(1), torch.tensor([0.2]), cfg, lr, wd, 1)
    ref = _mxnet_adam_reference(np.array([0.5]), [np.array([0.2])], 0.1, 0.01)
    np.testing.assert_allclose(p.numpy(), ref, rtol=1e-6)


def test_scalar_step_matches_the_row_step():
    cfg, lr, wd = _config(0.1, 0.01, 1, clip=0.3)
    p, m, v = torch.tensor([0.5]), torch.zeros(1), torch.zeros(1)
    w = np.float32(0.5)
    sst = ScalarState()
    for t, g in enumerate((0.2, -0.7, 0.05, 1.5), start=1):
        step_gathered(p, m, v, torch.tensor([g]), cfg, lr, wd, t)
        w = step_scalar(w, sst, g, cfg)
        assert isinstance(w, np.float32)
    assert float(w) == pytest.approx(float(p[0]), rel=1e-6)
    assert sst.t == 4
