"""Seeded random projections for SageMaker k-NN's ``dimension_reduction_type``.

SageMaker offers ``sign`` (a random sign projection) and ``fjlt`` (the fast
Johnson-Lindenstrauss transform of Ailon & Chazelle). Both are linear maps, so we
materialise each as one ``(input_dim, target)`` float32 matrix: the index and every
later query go through the *same* matrix, which is stored in the model artifact
(regenerating it from a seed would tie old models to NumPy's RNG stream forever).
Both are scaled so squared norms (and hence L2 distances and inner products) are
preserved in expectation.
"""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import LocalFMError


@dataclass(frozen=True)
class Projection:
    """A linear dimension reduction: ``reduced = x @ matrix``."""

    kind: str  # "sign" | "fjlt"
    matrix: np.ndarray  # (input_dim, target) float32
    seed: int

    @property
    def input_dim(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def target(self) -> int:
        return int(self.matrix.shape[1])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Project rows of ``x``; float32 out (FAISS works in float32)."""
        return np.ascontiguousarray(np.asarray(x, dtype=np.float32) @ self.matrix, dtype=np.float32)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form for ``model_algo-1.json`` (matrix as base64 little-endian float32)."""
        data = np.ascontiguousarray(self.matrix, dtype="<f4").tobytes()
        return {
            "type": self.kind,
            "target": self.target,
            "input_dim": self.input_dim,
            "seed": self.seed,
            "matrix_f32le_b64": base64.b64encode(data).decode("ascii"),
        }

    @classmethod
    def from_json(cls, obj: Any, *, where: str) -> Projection:
        """Inverse of :meth:`to_json`; ``where`` names the file for error messages."""
        try:
            kind = str(obj["type"])
            target = int(obj["target"])
            input_dim = int(obj["input_dim"])
            seed = int(obj.get("seed", 0))
            raw = base64.b64decode(obj["matrix_f32le_b64"], validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise LocalFMError(f"{where}: malformed 'dimension_reduction' entry ({exc})") from None
        if len(raw) != 4 * target * input_dim:
            raise LocalFMError(
                f"{where}: 'dimension_reduction' matrix has {len(raw)} bytes, "
                f"expected {4 * target * input_dim} for {input_dim}x{target} float32"
            )
        matrix = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(input_dim, target)
        return cls(kind, matrix, seed)


def make_projection(kind: str, input_dim: int, target: int, *, seed: int = 0, n_points: int = 1000) -> Projection:
    """Build a seeded ``sign`` or ``fjlt`` projection from ``input_dim`` to ``target`` dims.

    ``n_points`` (the number of vectors indexed) sets the FJLT sparsity as in the
    paper, q = min(1, log(n)^2 / d).
    """
    if target < 1 or target > input_dim:
        raise LocalFMError(
            f"dimension_reduction_target: expected an integer in [1, {input_dim}], got {target}"
        )
    rng = np.random.default_rng(seed)
    if kind == "sign":
        matrix = rng.choice(np.array([-1.0, 1.0]), size=(input_dim, target)) / math.sqrt(target)
    elif kind == "fjlt":
        matrix = _fjlt_matrix(input_dim, target, rng, n_points)
    else:
        raise LocalFMError(f"dimension_reduction_type: expected sign or fjlt, got {kind!r}")
    return Projection(kind, np.ascontiguousarray(matrix, dtype=np.float32), seed)


def _fwht_rows(a: np.ndarray) -> np.ndarray:
    """Normalised Walsh-Hadamard transform of each row (row length a power of two)."""
    a = a.copy()
    n = a.shape[1]
    h = 1
    while h < n:
        a = a.reshape(a.shape[0], -1, 2, h)
        x, y = a[:, :, 0, :].copy(), a[:, :, 1, :].copy()
        a[:, :, 0, :] = x + y
        a[:, :, 1, :] = x - y
        a = a.reshape(a.shape[0], n)
        h *= 2
    return a / math.sqrt(n)


def _fjlt_matrix(d: int, target: int, rng: np.random.Generator, n_points: int) -> np.ndarray:
    """Φ = P·H·D (Ailon-Chazelle) as a dense ``(d, target)`` matrix, computed row-wise with a FWHT.

    D: random ±1 diagonal; H: normalised Hadamard on d padded to a power of two;
    P: sparse Gaussian (each entry nonzero with probability q, variance 1/q), scaled
    by 1/sqrt(target) so E‖Φx‖² = ‖x‖².
    """
    d_pad = 1 << max(0, (d - 1).bit_length())
    q = min(1.0, math.log(max(n_points, 2)) ** 2 / d_pad)
    signs = rng.choice(np.array([-1.0, 1.0]), size=d_pad)
    mask = rng.random((target, d_pad)) < q
    p = np.where(mask, rng.standard_normal((target, d_pad)) / math.sqrt(q), 0.0)
    # Rows of P·H are H·p_row (H is symmetric); then multiply columns by D.
    ph = _fwht_rows(p) * signs[None, :]
    phi = ph[:, :d] / math.sqrt(target)  # padded input coordinates are always zero
    return phi.T
