"""The Chebyshev KAN layer and Scaled-cPIKAN."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cpikan import diff
from cpikan.nn.base import ScaledModel, resolve_dtype, seeded
from cpikan.nn.init import check_init, init_weight

SQUASHES = ("tanh", "none")
#: the per-input basis of the KAN layers: Chebyshev polynomials, or learned Mexican-hat wavelets
BASES = ("chebyshev", "wavelet")


class ChebyKANLayer(nn.Module):
    """y_o = Σ_i Σ_k c[o, i, k] · T_k(z_i), with z = tanh(x) or z = x.

    No bias (the T_0 term plays that role), as in the published code.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        degree: int,
        *,
        squash: str = "tanh",
        init: str = "xavier",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if int(degree) < 1:
            raise ValueError(f"degree: must be an integer ≥ 1, got {degree}")
        if squash not in SQUASHES:
            raise ValueError(f"squash: unknown {squash!r}; allowed: {', '.join(SQUASHES)}")
        check_init(init)
        self.in_features, self.out_features, self.degree = in_features, out_features, int(degree)
        self.squash = squash
        self.coeffs = nn.Parameter(torch.empty(out_features, in_features, degree + 1, dtype=dtype))
        n_basis = degree + 1
        init_weight(self.coeffs, init, in_features * n_basis, out_features * n_basis)

    def forward_jet(self, jet: Tensor) -> Tensor:
        if self.squash == "tanh":
            jet = diff.tanh(jet)
        basis = diff.chebyshev(jet, self.degree)
        return basis @ self.coeffs.flatten(1).T

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_jet(diff.value_only(x))[0]


class JetLayerNorm(nn.LayerNorm):
    """LayerNorm that also maps jets (used between KAN layers)."""

    def forward_jet(self, jet: Tensor) -> Tensor:
        return diff.layer_norm(jet, self.weight, self.bias, self.eps)


class ScaledCPIKAN(ScaledModel):
    """Scaled-cPIKAN: affine map to [-1, 1]^d, then Chebyshev KAN layers.

    ``layers`` lists widths including input and output, e.g. ``[2, 8, 8, 1]``.
    ``fourier_features > 0`` puts a Fourier-feature layer in front (width 2·m).
    ``basis="wavelet"`` swaps the Chebyshev layers for wavelet KAN layers (same coefficient
    count, plus a learned centre and width per basis function and input).
    """

    def __init__(
        self,
        layers: Sequence[int],
        degree: int,
        lo: Sequence[float],
        hi: Sequence[float],
        *,
        squash: str = "tanh",
        layernorm: bool = False,
        init: str = "xavier",
        dtype: str | torch.dtype = "float32",
        fourier_features: int = 0,
        fourier_sigma: float = 1.0,
        seed: int | None = None,
        basis: str = "chebyshev",
    ) -> None:
        from cpikan.nn.wavelet import WaveletKANLayer

        if basis not in BASES:
            raise ValueError(f"basis: unknown {basis!r}; allowed: {', '.join(BASES)}")
        dtype = resolve_dtype(dtype)
        super().__init__(lo, hi, dtype)
        mods, widths = self._input_stage(layers, fourier_features, fourier_sigma, dtype, seed)
        layer = ChebyKANLayer if basis == "chebyshev" else WaveletKANLayer
        with seeded(seed):
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
                mods.append(layer(a, b, degree, squash=squash, init=init, dtype=dtype))
                if layernorm and i < len(widths) - 2:
                    mods.append(JetLayerNorm(b, dtype=dtype))
        self.layers = nn.ModuleList(mods)
        self.degree = int(degree)

