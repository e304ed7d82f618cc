import numpy as np
import scipy.sparse as sp

from localfm.fm.naive import naive_autograd_fm


def test_naive_reference_learns(monkeypatch):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 intra-op threads on 2 shared cores is ~20x slower for these tiny ops
    try:
        _check()
    finally:
        torch.set_num_threads(threads)


def _check():
    rng = np.random.default_rng(0)
    n, d = 400, 20
    X = sp.random(n, d, density=0.2, format="csr", random_state=1, dtype=np.float32)
    w_true = rng.normal(size=d)
    y = ((X @ w_true) > 0).astype(np.float32)
    w0, w, V = naive_autograd_fm(X, y, num_factors=3, epochs=8, mini_batch_size=100, lr=(0.1, 0.2, 0.01))
    assert w.shape == (d,) and V.shape == (d, 3) and V.dtype == np.float32
    scores = w0 + X @ w
    assert np.mean((scores > 0) == (y > 0.5)) > 0.85
