"""Physics loss for PSI: re-render the buckets from a predicted height and compare with the
measured ones (no ground truth needed), plus a Laplacian smoothness term."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cpikan.psi.physics import DEFAULT_PSI, PSIConfig


def render_torch(h: Tensor, cfg: PSIConfig = DEFAULT_PSI) -> Tensor:
    """(N, 1, H, W) heights in µm → (N, C, H, W) intensities, differentiable."""
    lam = torch.tensor(cfg.wavelengths, dtype=h.dtype, device=h.device)
    delta = torch.tensor(cfg.steps, dtype=h.dtype, device=h.device)
    phase = (4 * math.pi / lam)[:, None, None, None] * h[:, None]  # (N, L, 1, H, W)
    phase = phase.squeeze(2)[:, :, None] + delta[None, None, :, None, None]  # (N, L, K, H, W)
    return (cfg.A + cfg.B * torch.cos(phase)).flatten(1, 2)


def laplacian(h: Tensor) -> Tensor:
    """5-point Laplacian of (N, 1, H, W) on the interior (no padding artefacts)."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=h.dtype, device=h.device)
    return F.conv2d(h, k[None, None])


def physics_loss(
    h: Tensor, buckets: Tensor, cfg: PSIConfig = DEFAULT_PSI, smoothness: float = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean squared bucket misfit in units of B², plus ``smoothness``·mean(Δh²) (µm²)."""
    data = ((render_torch(h, cfg) - buckets) / cfg.B).square().mean()
    terms = {"data": data}
    total = data
    if smoothness:
        smooth = laplacian(h).square().mean()
        terms["smooth"] = smooth
        total = total + smoothness * smooth
    return total, terms
