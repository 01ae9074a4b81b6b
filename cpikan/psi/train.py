"""Training the learned PSI reconstruction with the core trainer.

``PSITask`` plays the role a PDE problem plays for the trainer: it hands out batches (a
new one every step from a ``DataLoader`` over memmap patches: workers, pinned memory),
computes the loss terms (``supervised``: MSE to the true height; ``physics``: re-rendered
buckets vs the input plus Laplacian smoothness, no ground truth; or ``both``), and
evaluates height RMSE on a held-out crop next to the classical baseline.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cpikan.config import choice, validate
from cpikan.psi.classical import reconstruct
from cpikan.psi.data import PatchBatch, PatchDataset, collate
from cpikan.psi.loss import physics_loss
from cpikan.psi.physics import DEFAULT_PSI, PSIConfig, add_noise, dequantize

LOSSES = ("supervised", "physics", "both")


@dataclass
class PSITrainSpec:
    loss: str = choice("supervised", LOSSES)
    patch: int = 64
    batch_size: int = 8
    noise_levels: tuple[float, ...] = (0.0, 0.01, 0.05)
    smoothness: float = 1e-3
    workers: int = 0
    eval_noise: float = 0.05
    eval_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        validate(self)


class PSITask(nn.Module):
    name = "psi"
    streaming = True

    def __init__(self, buckets: np.ndarray, height: np.ndarray, spec: PSITrainSpec,
                 val: tuple[np.ndarray, np.ndarray], cfg: PSIConfig = DEFAULT_PSI) -> None:
        super().__init__()
        self.spec, self.cfg = spec, cfg
        ds = PatchDataset(buckets, height, spec.patch, length=10**9, noise_levels=spec.noise_levels,
                          seed=spec.seed, cfg=cfg)
        self.loader = DataLoader(ds, batch_size=spec.batch_size, shuffle=False, collate_fn=collate,
                                 num_workers=spec.workers, pin_memory=torch.cuda.is_available(),
                                 persistent_workers=spec.workers > 0)
        self._it: Iterator[PatchBatch] = iter(self.loader)
        rng = np.random.default_rng(spec.seed + 99)
        vb, vh = val
        self.val_x = add_noise(dequantize(np.asarray(vb)), spec.eval_noise, "gaussian", rng, cfg)
        self.val_h = np.asarray(vh, np.float32)
        est, _ = reconstruct(self.val_x, cfg)
        self.classical_rmse_nm = float(np.sqrt(np.mean((est - self.val_h) ** 2)) * 1000)

    def sample(self, gen: torch.Generator) -> PatchBatch:
        return self.next_batch()

    def next_batch(self) -> PatchBatch:
        return next(self._it)

    def loss_terms(self, model: nn.Module, batch: PatchBatch, deriv_fn: Any = None) -> dict[str, Tensor]:
        pred = model(batch.x)
        terms: dict[str, Tensor] = {}
        if self.spec.loss in ("supervised", "both"):
            terms["height"] = (pred - batch.h).square().mean()  # µm²
        if self.spec.loss in ("physics", "both"):
            _, phys = physics_loss(pred, batch.x, self.cfg, self.spec.smoothness)
            terms["physics"] = phys["data"]
            if "smooth" in phys:
                terms["smooth"] = self.spec.smoothness * phys["smooth"]
        return terms

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from cpikan.tiling import predict_tiled

        pred = predict_tiled(model, self.val_x, tile_size=256, overlap=128, batch_size=2)[0]
        rmse = float(np.sqrt(np.mean((pred - self.val_h) ** 2)) * 1000)
        return {"rmse_nm": rmse, "classical_rmse_nm": self.classical_rmse_nm}

    def settings(self) -> dict[str, Any]:
        return {"task": "psi", **self.spec.__dict__}
