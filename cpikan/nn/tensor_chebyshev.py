"""A tensor-product Chebyshev expansion: u(x) = Σ_k c_k · Π_j T_{k_j}(x̂_j).

The spectral stage of multi-stage training (cpikan.multistage): linear in its coefficients,
so fitting it to a PDE residual is a least-squares problem (cpikan.train.linear_fit), and
its basis resolves on a box what a small KAN cannot (see docs/domain.md, multi-stage).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cpikan import diff
from cpikan.nn.base import check_bounds


class TensorChebyshev(nn.Module):
    """Σ_k c_k Π_j T_{k_j}(x̂_j) over 0 ≤ k_j ≤ degrees[j], x̂ = 2(x − lo)/(hi − lo) − 1.

    Coefficients start at zero (a new stage adds nothing until fitted).
    """

    def __init__(self, lo: Sequence[float], hi: Sequence[float], degrees: Sequence[int]) -> None:
        super().__init__()
        lo, hi = check_bounds(lo, hi)
        degrees = tuple(int(d) for d in degrees)
        if len(degrees) != len(lo) or min(degrees) < 0:
            raise ValueError(f"degrees: one integer ≥ 0 per coordinate ({len(lo)}), got {degrees}")
        self.degrees = degrees
        self.register_buffer("lo", torch.tensor(lo, dtype=torch.float64))
        self.register_buffer("hi", torch.tensor(hi, dtype=torch.float64))
        self.coef = nn.Parameter(torch.zeros(math.prod(d + 1 for d in degrees), dtype=torch.float64))

    @property
    def n_features(self) -> int:
        return self.coef.numel()

    def features(self, x: Tensor, order: int = 2) -> Tensor:
        """Jets of the basis at x: (1 + order·D, N, P): values, then ∂/∂x_j, then ∂²/∂x_j²
        (physical coordinates), in :mod:`cpikan.diff`'s jet layout."""
        x = x.to(torch.float64)
        s = 2.0 / (self.hi - self.lo)
        z = (x - self.lo) * s - 1.0
        per = [diff.chebyshev_basis(z[:, j], d, order=order) for j, d in enumerate(self.degrees)]
        n, dims = len(x), len(self.degrees)

        def product(orders: Sequence[int]) -> Tensor:
            out = per[0][orders[0]] * s[0] ** orders[0]
            for j in range(1, dims):
                f = per[j][orders[j]] * s[j] ** orders[j]
                out = (out[:, :, None] * f[:, None, :]).reshape(n, -1)
            return out

        jets = [product([0] * dims)]
        for m in range(1, order + 1):
            jets += [product([m if i == j else 0 for i in range(dims)]) for j in range(dims)]
        return torch.stack(jets)

    def forward(self, x: Tensor) -> Tensor:
        return (self.features(x, order=0)[0] @ self.coef)[:, None]

    def derivatives(self, x: Tensor) -> diff.Derivatives:
        return diff.unpack((self.features(x) @ self.coef)[..., None])


__all__ = ["TensorChebyshev"]
