"""The compiled loop behind :meth:`localfm.recommend.vectors.Repackaged.scores`.

A module of its own so that importing :mod:`localfm.recommend.vectors` (``localfm
repackage``, the k-NN channels) does not import numba (~0.3 s): only scoring result
rows needs it.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def pair_dots(U: np.ndarray, I: np.ndarray, urow: np.ndarray, irow: np.ndarray, out: np.ndarray) -> None:
    """``out[n] = <U[urow[n]], I[irow[n]]>`` summed in float64 (float32 products are exact there)."""
    for n in range(urow.shape[0]):
        u = urow[n]
        i = irow[n]
        acc = 0.0
        for d in range(U.shape[1]):
            acc += np.float64(U[u, d]) * np.float64(I[i, d])
        out[n] = acc
