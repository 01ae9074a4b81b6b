"""A wavelet KAN layer (Wav-KAN style): the Chebyshev layer with its basis swapped for
Mexican-hat wavelets whose centres and widths are learned per input."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cpikan import diff
from cpikan.nn.init import check_init, init_weight


class WaveletKANLayer(nn.Module):
    """y_o = Σ_i Σ_k c[o, i, k] · ψ((z_i − t_ik) / s_ik), ψ(u) = (1 − u²)·exp(−u²/2), z = tanh(x).

    ``degree + 1`` wavelets per input (the Chebyshev layer's basis count, so the two compare
    at equal coefficients); centres start evenly over [-1, 1] and widths at their spacing.
    """

    def __init__(self, in_features: int, out_features: int, degree: int, *, squash: str = "tanh",
                 init: str = "xavier", dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if int(degree) < 1:
            raise ValueError(f"degree: must be an integer ≥ 1, got {degree}")
        if squash not in ("tanh", "none"):
            raise ValueError(f"squash: unknown {squash!r}; allowed: tanh, none")
        check_init(init)
        n = int(degree) + 1
        self.in_features, self.out_features, self.degree, self.squash = in_features, out_features, n - 1, squash
        self.coeffs = nn.Parameter(torch.empty(out_features, in_features, n, dtype=dtype))
        init_weight(self.coeffs, init, in_features * n, out_features * n)
        centres = torch.linspace(-1.0, 1.0, n, dtype=dtype).repeat(in_features, 1)
        self.centre = nn.Parameter(centres)
        self.log_width = nn.Parameter(torch.full((in_features, n), math.log(2.0 / (n - 1) if n > 1 else 1.0),
                                                 dtype=dtype))

    def forward_jet(self, jet: Tensor) -> Tensor:
        if self.squash == "tanh":
            jet = diff.tanh(jet)
        width = self.log_width.exp()
        u = jet[..., None] / width  # (1 + 2d, N, in, n): the shift touches the value slice only
        u = torch.cat([u[:1] - self.centre / width, u[1:]], dim=0)
        u0 = u[0]
        u2 = u0 * u0
        g = torch.exp(-0.5 * u2)
        basis = diff.elementwise(u, (1.0 - u2) * g, g * u0 * (u2 - 3.0), g * (6.0 * u2 - u2 * u2 - 3.0))
        return basis.flatten(-2) @ self.coeffs.flatten(1).T

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_jet(diff.value_only(x))[0]


__all__ = ["WaveletKANLayer"]
