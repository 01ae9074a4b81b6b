"""A Chebyshev KAN written the way the published Scaled-cPIKAN code writes it.

In-place writes into a preallocated basis with ``.clone()`` of the previous terms, an
einsum contraction, and derivatives by nested ``torch.autograd.grad`` — the reference our
fast path is measured against in ``bench/derivatives.py``. Bench-only: not part of cpikan.
"""

from __future__ import annotations

import torch
from torch import nn


class PublishedChebyKANLayer(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, degree: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.inputdim, self.outdim, self.degree = input_dim, output_dim, degree
        self.cheby_coeffs = nn.Parameter(torch.empty(input_dim, output_dim, degree + 1, dtype=dtype))
        nn.init.xavier_normal_(self.cheby_coeffs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(x)
        cheby = torch.ones(x.shape[0], self.inputdim, self.degree + 1, dtype=x.dtype)
        if self.degree > 0:
            cheby[:, :, 1] = x
        for i in range(2, self.degree + 1):
            cheby[:, :, i] = 2 * x * cheby[:, :, i - 1].clone() - cheby[:, :, i - 2].clone()
        return torch.einsum("bid,iod->bo", cheby, self.cheby_coeffs)


class PublishedCPIKAN(nn.Module):
    """Same function as ``cpikan.nn.ScaledCPIKAN`` (tanh, no LayerNorm), published style."""

    def __init__(self, ours: nn.Module) -> None:
        super().__init__()
        self.register_buffer("lo", ours.lo.clone())
        self.register_buffer("hi", ours.hi.clone())
        layers = []
        for layer in ours.layers:
            ref = PublishedChebyKANLayer(layer.in_features, layer.out_features, layer.degree,
                                         layer.coeffs.dtype)
            with torch.no_grad():
                ref.cheby_coeffs.copy_(layer.coeffs.permute(1, 0, 2))
            layers.append(ref)
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = 2.0 * (x - self.lo) / (self.hi - self.lo) - 1.0
        for layer in self.layers:
            x = layer(x)
        return x
