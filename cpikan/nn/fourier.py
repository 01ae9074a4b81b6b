"""Random Fourier-feature input layer (Tancik et al. 2020): [sin(2πBx), cos(2πBx)]."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cpikan import diff


class FourierFeatures(nn.Module):
    """Fixed random projection B ~ N(0, σ²) kept as a buffer (saved with the model)."""

    def __init__(
        self,
        in_features: int,
        n_features: int,
        sigma: float = 1.0,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if n_features < 1:
            raise ValueError(f"fourier_features: must be ≥ 1, got {n_features}")
        b = torch.randn(n_features, in_features, generator=generator, dtype=torch.float64)
        self.register_buffer("B", (2.0 * math.pi * sigma * b).to(dtype))

    def forward_jet(self, jet: Tensor) -> Tensor:
        proj = diff.linear(jet, self.B)
        return torch.cat([diff.sin(proj), diff.cos(proj)], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_jet(diff.value_only(x))[0]
