"""A deliberately naive autograd FM: the baseline the fast trainer is measured against.

It is what one writes first in PyTorch: ``torch.sparse.mm`` for the batch, the FM
identity for the pairwise term, ``loss.backward()`` and ``torch.optim.Adam`` over
the *dense* parameters (every row of ``w``/``V`` gets moments and a step each batch).
Same model, loss, batching and init as :class:`localfm.fm.FactorizationMachine`, but
not SageMaker's lazy update, so its curve differs slightly; it exists for
throughput comparisons (benchmarks/) and as an independent check of the gradients.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def naive_autograd_fm(
    X: sp.csr_matrix,
    y: np.ndarray,
    *,
    num_factors: int = 64,
    epochs: int = 1,
    mini_batch_size: int = 1000,
    predictor_type: str = "binary_classifier",
    lr: tuple[float, float, float] = (0.1, 0.001, 0.0001),
    seed: int = 0,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Train with autograd + dense Adam; returns (w0, w, V) as float32 numpy arrays."""
    import torch

    X = sp.csr_matrix(X, dtype=np.float32)
    n, d = X.shape
    g = torch.Generator().manual_seed(seed)
    w0 = (torch.randn(1, generator=g) * 0.01).requires_grad_()
    w = (torch.randn(d, 1, generator=g) * 0.01).requires_grad_()
    V = (torch.randn(d, num_factors, generator=g) * 0.001).requires_grad_()
    opt = torch.optim.Adam(
        [{"params": [w0], "lr": lr[0]}, {"params": [w], "lr": lr[1]}, {"params": [V], "lr": lr[2]}]
    )
    yt = torch.from_numpy(np.asarray(y, dtype=np.float32))
    for _ in range(epochs):
        for start in range(0, n, mini_batch_size):
            sub = X[start: start + mini_batch_size].tocoo()
            xb = torch.sparse_coo_tensor(
                np.vstack([sub.row, sub.col]), sub.data, size=sub.shape, dtype=torch.float32,
                check_invariants=False,
            )
            xb2 = torch.sparse_coo_tensor(
                np.vstack([sub.row, sub.col]), sub.data * sub.data, size=sub.shape, dtype=torch.float32,
                check_invariants=False,
            )
            xv = torch.sparse.mm(xb, V)
            score = (
                w0
                + torch.sparse.mm(xb, w).squeeze(1)
                + 0.5 * (xv.pow(2).sum(1) - torch.sparse.mm(xb2, V.pow(2)).sum(1))
            )
            target = yt[start: start + mini_batch_size]
            if predictor_type == "binary_classifier":
                loss = torch.nn.functional.binary_cross_entropy_with_logits(score, target)
            else:
                loss = 0.5 * (score - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return float(w0.detach()[0]), w.detach().numpy().reshape(-1).copy(), V.detach().numpy().copy()
