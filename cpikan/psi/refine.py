"""Scaled-cPIKAN refinement of a PSI patch with the physics loss (no ground truth).

The height of a patch is written h(x, y) = h₀(x, y) + s·δ(x, y): h₀ is the starting
estimate (the U-Net's or the classical one) smoothed by a small box filter, and δ a
Scaled-cPIKAN over the patch's pixel coordinates (output starting at exactly zero). δ is
trained on the physics loss (re-rendered buckets vs the measured ones, plus Laplacian
smoothness): being smooth, it corrects the filter's bias without fitting pixel noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cpikan.nn import ScaledCPIKAN
from cpikan.psi.loss import physics_loss
from cpikan.psi.physics import DEFAULT_PSI, PSIConfig, dequantize


def smoothed(h: np.ndarray, px: int) -> torch.Tensor:
    """(1, 1, H, W) float64: h under a px × px box filter (edges replicated)."""
    t = torch.from_numpy(np.asarray(h, np.float64))[None, None]
    if px > 1:
        t = F.avg_pool2d(F.pad(t, [px // 2] * 4, mode="replicate"), px, stride=1)
    return t


def refine_patch(
    buckets: np.ndarray,
    h_init: np.ndarray,
    *,
    steps: int = 300,
    lr: float = 1e-2,
    hidden: tuple[int, ...] = (8, 8),
    degree: int = 5,
    scale_um: float = 0.05,
    smooth_px: int = 3,
    smoothness: float = 1e-4,
    cfg: PSIConfig = DEFAULT_PSI,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Refined height (H, W) float32 of a (C, H, W) bucket patch, and the loss history."""
    cfg.check_channels(buckets.shape[0])
    if h_init.shape != buckets.shape[1:]:
        raise ValueError(f"h_init: shape {h_init.shape} does not match the patch {buckets.shape[1:]}")
    H, W = h_init.shape
    I = torch.from_numpy(dequantize(np.asarray(buckets))).double()[None]
    h0 = smoothed(h_init, smooth_px)
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    xy = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    model = ScaledCPIKAN([2, *hidden, 1], degree, [0.0, 0.0], [max(W - 1, 1), max(H - 1, 1)],
                         dtype="float64", seed=seed)
    with torch.no_grad():
        offset = model(xy)

    def height() -> torch.Tensor:
        return h0 + scale_um * (model(xy) - offset).reshape(1, 1, H, W)

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss, terms = physics_loss(height(), I, cfg, smoothness)
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    with torch.no_grad():
        final, _ = physics_loss(height(), I, cfg, smoothness)
        start, _ = physics_loss(h0, I, cfg, smoothness)
        out = height()[0, 0].float().numpy()
    return out, {"loss_start": float(start), "loss_final": float(final), "history": history}
