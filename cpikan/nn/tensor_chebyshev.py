"""A tensor-product Chebyshev expansion: u(x) = Σ_k c_k · Π_j T_{k_j}(x̂_j).

The spectral stage of multi-stage training (cpikan.multistage): linear in its coefficients,
so fitting it to a PDE residual is a least-squares problem (cpikan.train.linear_fit), and
its basis resolves on a box what a small KAN cannot (see docs/domain.md, multi-stage).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cpikan import diff
from cpikan.nn.base import check_bounds

#: which multi-indices k: every 0 ≤ k_j ≤ degrees[j] ("tensor"), or those with
#: Σ_j k_j / degrees[j] ≤ 1 ("total": ~1/D! as many, for fields smooth in every direction)
BASES = ("tensor", "total")
#: basis columns formed at once when evaluating the expansion
COLUMNS = 512


class TensorChebyshev(nn.Module):
    """Σ_k c_k Π_j T_{k_j}(x̂_j) over a set of multi-indices k (``basis``, see ``BASES``),
    x̂ = 2(x − lo)/(hi − lo) − 1. Coefficients start at zero (a new stage adds nothing until
    fitted)."""

    def __init__(self, lo: Sequence[float], hi: Sequence[float], degrees: Sequence[int],
                 basis: str = "tensor") -> None:
        super().__init__()
        lo, hi = check_bounds(lo, hi)
        degrees = tuple(int(d) for d in degrees)
        if len(degrees) != len(lo) or min(degrees) < 0:
            raise ValueError(f"degrees: one integer ≥ 0 per coordinate ({len(lo)}), got {degrees}")
        if basis not in BASES:
            raise ValueError(f"basis: unknown {basis!r}; allowed: {', '.join(BASES)}")
        self.degrees, self.basis = degrees, basis
        grid = torch.cartesian_prod(*[torch.arange(d + 1) for d in degrees]).reshape(-1, len(degrees))
        if basis == "total":  # Σ_j k_j / degree_j ≤ 1: an (anisotropic) total degree
            grid = grid[(grid.double() / torch.tensor(degrees).clamp_min(1)).sum(1) <= 1 + 1e-12]
        self.register_buffer("index", grid, persistent=False)
        self.register_buffer("lo", torch.tensor(lo, dtype=torch.float64))
        self.register_buffer("hi", torch.tensor(hi, dtype=torch.float64))
        self.coef = nn.Parameter(torch.zeros(len(grid), dtype=torch.float64))

    @property
    def n_features(self) -> int:
        return self.coef.numel()

    def features(self, x: Tensor, order: int = 2, columns: slice | None = None) -> Tensor:
        """Jets of the basis at x: (1 + order·D, N, P): values, then ∂/∂x_j, then ∂²/∂x_j²
        (physical coordinates), in :mod:`cpikan.diff`'s jet layout; only ``columns`` of it
        when given (a large basis is formed a chunk at a time)."""
        index = self.index if columns is None else self.index[columns]
        x = x.to(torch.float64)
        s = 2.0 / (self.hi - self.lo)
        z = (x - self.lo) * s - 1.0
        per = [diff.chebyshev_basis(z[:, j], d, order=order) for j, d in enumerate(self.degrees)]
        dims = len(self.degrees)

        def product(orders: Sequence[int]) -> Tensor:
            out = per[0][orders[0]][:, index[:, 0]] * s[0] ** orders[0]
            for j in range(1, dims):
                out = out * (per[j][orders[j]][:, index[:, j]] * s[j] ** orders[j])
            return out

        jets = [product([0] * dims)]
        for m in range(1, order + 1):
            jets += [product([m if i == j else 0 for i in range(dims)]) for j in range(dims)]
        return torch.stack(jets)

    def _expand(self, x: Tensor, order: int) -> Tensor:
        """Σ_k c_k·(jets of basis k), a chunk of columns at a time: the whole N × P basis of
        a 10⁴-coefficient stage on a 65536-point grid would take gigabytes."""
        out = None
        for lo in range(0, self.n_features, COLUMNS):
            cols = slice(lo, lo + COLUMNS)
            part = self.features(x, order, cols) @ self.coef[cols]
            out = part if out is None else out + part
        return out[..., None]

    def forward(self, x: Tensor) -> Tensor:
        return self._expand(x, 0)[0]

    def derivatives(self, x: Tensor) -> diff.Derivatives:
        return diff.unpack(self._expand(x, 2))


__all__ = ["TensorChebyshev"]
