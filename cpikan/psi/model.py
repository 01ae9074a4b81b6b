"""The learned PSI reconstruction: a U-Net that refines the classical estimate.

``PSINet`` maps raw bucket intensities (16, H, W) to height (1, H, W). Inside, the
classical per-pixel reconstruction (four-bucket phase + joint fringe-order search, in
torch, no gradient) gives h₀; the U-Net sees the normalised buckets and h₀ and predicts a
bounded correction. The classical part is per pixel, so the receptive field and the
downsampling factor are the U-Net's and tiling stays exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cpikan.nn.unet import UNet
from cpikan.psi.data import normalize_buckets
from cpikan.psi.physics import DEFAULT_PSI, PSIConfig

TWO_PI = 2 * math.pi


@torch.no_grad()
def classical_height(x: Tensor, cfg: PSIConfig = DEFAULT_PSI, h_min: float = 0.0, h_max: float = 35.0) -> Tensor:
    """(N, 16, H, W) intensities → (N, 1, H, W) heights: the numpy baseline, in torch."""
    n, _, H, W = x.shape
    I = x.double().reshape(n, len(cfg.wavelengths), len(cfg.steps), H, W)
    phi = torch.atan2(I[:, :, 3] - I[:, :, 1], I[:, :, 0] - I[:, :, 2])  # (N, L, H, W)
    lam = torch.tensor(cfg.wavelengths, dtype=torch.float64, device=x.device)[None, :, None, None]
    half0 = cfg.wavelengths[0] / 2
    base = torch.remainder(phi[:, 0] / TWO_PI, 1.0) * half0
    best = torch.zeros_like(base)
    best_cost = torch.full_like(base, math.inf, dtype=torch.float32)
    # as cpikan.psi.classical.height_from_phase: candidate m scored from the misfit at base,
    # shifted by m·2πλ0/λ_l, in float32; at the range's ends the clipped candidate
    d = (phi - 4 * math.pi * base[:, None] / lam).float()
    per_order = [TWO_PI * 2 * half0 / v for v in cfg.wavelengths]
    for order in range(math.floor(h_min / half0) - 1, math.ceil(h_max / half0) + 1):
        if h_min <= order * half0 and (order + 1) * half0 <= h_max:
            shift = torch.tensor([(order * p) % TWO_PI for p in per_order], dtype=torch.float32, device=x.device)
            misfit = d - shift[None, :, None, None]
            cand = base + order * half0
        else:
            cand = (base + order * half0).clamp(h_min, h_max)
            misfit = (phi - 4 * math.pi * cand[:, None] / lam).float()
        misfit = misfit - TWO_PI * torch.round(misfit * (1 / TWO_PI))
        cost = misfit.square().sum(1)
        better = cost < best_cost
        best_cost = torch.where(better, cost, best_cost)
        best = torch.where(better, cand, best)
    k = torch.round((4 * math.pi * best[:, None] / lam - phi) / TWO_PI)
    h_l = (phi + TWO_PI * k) * lam / (4 * math.pi)
    w = 1.0 / lam**2
    return ((w * h_l).sum(1, keepdim=True) / w.sum(1, keepdim=True)).to(x.dtype)


class PSINet(nn.Module):
    """h = h₀ + scale·UNet(normalised buckets, local detail of h₀ in units of ``scale``).

    The local detail h₀ − mean₅ₓ₅(h₀) is what the classical noise lives in (a few nm),
    invisible at the 35 µm scale of h₀ itself; it is clipped at ±10·scale (steps).
    """

    def __init__(self, width: int = 16, depth: int = 3, correction_um: float = 0.01,
                 cfg: PSIConfig = DEFAULT_PSI, h_max: float = 35.0) -> None:
        super().__init__()
        self.cfg, self.h_max, self.correction_um = cfg, h_max, correction_um
        #: heights the fringe order is searched in; None: [0, h_max], the training wafers' range.
        #: The reconstruct command sets its own (a wafer below 0 µm would otherwise alias by a
        #: whole fringe order, ~30 µm); the U-Net's inputs keep the training normalisation.
        self.search_range: tuple[float, float] | None = None
        self.in_channels, self.out_channels = cfg.channels, 1
        self.unet = UNet(cfg.channels + 2, 1, width=width, depth=depth)
        nn.init.zeros_(self.unet.head.weight)  # start exactly at the classical estimate
        nn.init.zeros_(self.unet.head.bias)

    @property
    def receptive_field_radius(self) -> int:
        return self.unet.receptive_field_radius + 2  # the 5×5 local mean

    @property
    def downsampling_factor(self) -> int:
        return self.unet.downsampling_factor

    def forward(self, x: Tensor) -> Tensor:
        h0 = classical_height(x, self.cfg, *(self.search_range or (0.0, self.h_max)))
        local = torch.nn.functional.avg_pool2d(h0, 5, stride=1, padding=2, count_include_pad=False)
        detail = ((h0 - local) / self.correction_um).clamp(-10, 10)
        feats = torch.cat([normalize_buckets(x, self.cfg), (h0 - self.h_max / 2) / self.h_max, detail], dim=1)
        return h0 + self.correction_um * self.unet(feats)
