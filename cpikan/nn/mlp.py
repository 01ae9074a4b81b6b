"""The MLP PINN baseline (tanh), behind the same affine input map as Scaled-cPIKAN."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cpikan import diff
from cpikan.nn.base import ScaledModel, resolve_dtype, seeded
from cpikan.nn.init import check_init, init_weight


class JetLinear(nn.Linear):
    def __init__(self, a: int, b: int, init: str, activate: bool, dtype: torch.dtype) -> None:
        super().__init__(a, b, dtype=dtype)
        self.activate = activate
        init_weight(self.weight, init, a, b)
        nn.init.zeros_(self.bias)

    def forward_jet(self, jet: Tensor) -> Tensor:
        out = diff.linear(jet, self.weight, self.bias)
        return diff.tanh(out) if self.activate else out


class MLP(ScaledModel):
    """Fully connected tanh network, e.g. ``[2, 19, 19, 1]`` (the published baseline)."""

    def __init__(
        self,
        layers: Sequence[int],
        lo: Sequence[float],
        hi: Sequence[float],
        *,
        init: str = "xavier",
        dtype: str | torch.dtype = "float32",
        fourier_features: int = 0,
        fourier_sigma: float = 1.0,
        seed: int | None = None,
    ) -> None:
        dtype = resolve_dtype(dtype)
        super().__init__(lo, hi, dtype)
        check_init(init)
        mods, widths = self._input_stage(layers, fourier_features, fourier_sigma, dtype, seed)
        with seeded(seed):
            last = len(widths) - 2
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
                mods.append(JetLinear(a, b, init, activate=i < last, dtype=dtype))
        self.layers = nn.ModuleList(mods)
