"""PSI forward model (docs/domain.md §3): 4 lasers × 4 phase-shifted buckets, laser-major.

    I[l, k] = A + B·cos(4π·h/λ_l + δ_k),   channel = l·4 + k

Heights in µm. Everything is numpy (float32 by default) so it runs on memmap row blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NOISE_KINDS = ("gaussian", "shot")


@dataclass(frozen=True)
class PSIConfig:
    wavelengths: tuple[float, ...] = (5.0, 5.5, 6.05, 6.655)
    A: float = 128.0
    B: float = 100.0
    steps: tuple[float, ...] = (0.0, math.pi / 2, math.pi, 3 * math.pi / 2)

    @property
    def channels(self) -> int:
        return len(self.wavelengths) * len(self.steps)

    def check_channels(self, c: int) -> None:
        if c != self.channels:
            raise ValueError(f"channels: expected {self.channels} (lasers × buckets, laser-major), got {c}")


DEFAULT_PSI = PSIConfig()  # frozen: safe as a shared default


def render(h: np.ndarray, cfg: PSIConfig = DEFAULT_PSI, dtype: type = np.float32) -> np.ndarray:
    """Bucket intensities (C, *h.shape) for a height map h (µm)."""
    h = np.asarray(h, dtype=np.float64)
    out = np.empty((cfg.channels, *h.shape), dtype=dtype)
    for l, lam in enumerate(cfg.wavelengths):
        phase = (4 * math.pi / lam) * h
        for k, delta in enumerate(cfg.steps):
            out[l * len(cfg.steps) + k] = cfg.A + cfg.B * np.cos(phase + delta)
    return out


def add_noise(
    intensity: np.ndarray, level: float, kind: str = "gaussian", rng: np.random.Generator | None = None,
    cfg: PSIConfig = DEFAULT_PSI,
) -> np.ndarray:
    """Gaussian noise of σ = level·B, or shot noise with σ = level·B·√(I/A) (∝ √I)."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind: unknown {kind!r}; allowed: {', '.join(NOISE_KINDS)}")
    if level < 0:
        raise ValueError(f"noise level: must be ≥ 0, got {level}")
    rng = rng or np.random.default_rng(0)
    sigma = level * cfg.B
    noise = rng.standard_normal(intensity.shape).astype(intensity.dtype)
    if kind == "shot":
        noise *= np.sqrt(np.clip(intensity, 0, None) / cfg.A)
    return intensity + sigma * noise


def counts_per_unit(bits: int) -> int:
    """8-bit stores intensity as is; 16-bit stores intensity·256 (uses the full range)."""
    if bits not in (8, 16):
        raise ValueError(f"bits: allowed 8 or 16, got {bits}")
    return 1 << (bits - 8)


def quantize(intensity: np.ndarray, bits: int = 16) -> np.ndarray:
    scale = counts_per_unit(bits)
    top = (1 << bits) - 1
    dtype = np.uint8 if bits == 8 else np.uint16
    return np.clip(np.rint(intensity * scale), 0, top).astype(dtype)


def dequantize(counts: np.ndarray) -> np.ndarray:
    """Integer buckets back to intensity units (float32); floats pass through."""
    if counts.dtype == np.uint8:
        return counts.astype(np.float32)
    if counts.dtype == np.uint16:
        return counts.astype(np.float32) / 256.0
    return counts.astype(np.float32, copy=False)
