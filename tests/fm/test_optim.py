import math

import numpy as np
import pytest
import torch

from localfm.fm.optim import OptimizerConfig, adam_coefficient, new_state, step_rows


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


def test_bias_corrected_step_size():
    assert adam_coefficient(1.0, 1) == math.sqrt(1 - 0.999) / (1 - 0.9)


def test_matches_mxnet_formula_and_is_lazy():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(6, 3)).astype(np.float32)
    param = torch.from_numpy(W.copy())
    state = new_state(param)
    cfg = OptimizerConfig(lr=0.01, wd=0.1, clip=0.5)
    rows = torch.tensor([1, 4])
    grads = [rng.normal(size=(2, 3)).astype(np.float32) for _ in range(3)]
    for g in grads:
        step_rows(param, state, rows, torch.from_numpy(g.copy()), cfg)  # grad is consumed
    expected = _mxnet_adam_reference(W[[1, 4]].astype(np.float64), [g.astype(np.float64) for g in grads], 0.01, 0.1, clip=0.5)
    np.testing.assert_allclose(param.numpy()[[1, 4]], expected, rtol=1e-5, atol=1e-6)
    # rows not in the batch: untouched weights, no moments (lazy update, no wd either)
    untouched = [0, 2, 3, 5]
    np.testing.assert_array_equal(param.numpy()[untouched], W[untouched])
    assert not state.m[untouched].any() and not state.v[untouched].any()
    assert state.t == 3


def test_dense_parameter_step():
    p = torch.tensor([0.5])
    st = new_state(p)
    step_rows(p, st, None, torch.tensor([0.2]), OptimizerConfig(lr=0.1, wd=0.01))
    ref = _mxnet_adam_reference(np.array([0.5]), [np.array([0.2])], 0.1, 0.01)
    np.testing.assert_allclose(p.numpy(), ref, rtol=1e-6)


def test_scalar_step_matches_the_row_step():
    from localfm.fm.optim import ScalarState, step_scalar

    cfg = OptimizerConfig(lr=0.1, wd=0.01, clip=0.3)
    p = torch.tensor([0.5])
    st = new_state(p)
    w = np.float32(0.5)
    sst = ScalarState()
    for g in (0.2, -0.7, 0.05, 1.5):
        step_rows(p, st, None, torch.tensor([g]), cfg)
        w = step_scalar(w, sst, g, cfg)
        assert isinstance(w, np.float32)
    assert float(w) == pytest.approx(float(p[0]), rel=1e-6)
