"""Synthetic wafers: seeded height maps with realistic structure, rendered to buckets and
written to disk as .npy memmaps in row blocks (bounded RAM at 9344 × 7000).

The height is an analytic function of pixel coordinates (tilt, Gaussian bumps, cones,
terrace steps, a random smooth Fourier field), so any row block is computed on its own.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cpikan.memory import new_memmap
from cpikan.psi.physics import DEFAULT_PSI, PSIConfig, add_noise, quantize, render


@dataclass(frozen=True)
class WaferSpec:
    height: int = 2048
    width: int = 2048
    seed: int = 0
    h_max: float = 35.0  # µm; heights span about [0.05, 0.95]·h_max
    bumps: int = 12
    cones: int = 4
    steps: int = 3
    fourier_terms: int = 24
    noise: float = 0.0  # Gaussian σ as a fraction of B
    noise_kind: str = "gaussian"
    bits: int = 16


class Wafer:
    """The analytic height field of a spec; ``rows(r0, r1)`` returns heights in µm."""

    def __init__(self, spec: WaferSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        self.tilt = rng.uniform(-1, 1, 2)
        self.bumps = [(rng.uniform(0, 1, 2), rng.uniform(0.03, 0.15), rng.uniform(-1, 1))
                      for _ in range(spec.bumps)]
        self.cones = [(rng.uniform(0, 1, 2), rng.uniform(0.05, 0.2), rng.uniform(-1, 1))
                      for _ in range(spec.cones)]
        self.steps = [(rng.uniform(-1, 1, 2), rng.uniform(0.2, 0.8), rng.uniform(-0.5, 0.5))
                      for _ in range(spec.steps)]
        self.fourier = [(rng.normal(0, 4, 2), rng.uniform(0, 2 * math.pi), rng.normal(0, 0.15))
                        for _ in range(spec.fourier_terms)]
        self.lo, self.hi = 0.0, 1.0
        coarse = self._raw(*np.meshgrid(np.linspace(0, 1, 257), np.linspace(0, 1, 257)))
        self.lo, self.hi = float(coarse.min()), float(coarse.max())

    def _raw(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Unitless field on normalised coordinates u (columns), v (rows) in [0, 1]."""
        z = 0.6 * (self.tilt[0] * u + self.tilt[1] * v)
        for (c, s, a) in self.bumps:
            z = z + a * np.exp(-((u - c[0]) ** 2 + (v - c[1]) ** 2) / (2 * s * s))
        for (c, r, a) in self.cones:
            z = z + a * np.clip(1 - np.hypot(u - c[0], v - c[1]) / r, 0, None)
        for (n, off, a) in self.steps:  # terraces: smoothed edge ~ 3 px wide at 2048
            d = (n[0] * (u - 0.5) + n[1] * (v - 0.5)) / math.hypot(*n) - off + 0.5
            z = z + a * 0.5 * (1 + np.tanh(d / 0.0015))
        for (k, ph, a) in self.fourier:
            z = z + a * np.sin(k[0] * u * 2 * math.pi / 4 + k[1] * v * 2 * math.pi / 4 + ph)
        return z

    def rows(self, r0: int, r1: int) -> np.ndarray:
        H, W = self.spec.height, self.spec.width
        u = (np.arange(W) + 0.5) / W
        v = (np.arange(r0, r1) + 0.5) / H
        z = self._raw(*np.meshgrid(u, v))
        z01 = np.clip((z - self.lo) / (self.hi - self.lo), 0, 1)
        return (self.spec.h_max * (0.05 + 0.9 * z01)).astype(np.float32)

    def full(self) -> np.ndarray:
        return self.rows(0, self.spec.height)


def write_dataset(
    spec: WaferSpec, out_dir: str | Path, cfg: PSIConfig = DEFAULT_PSI, rows_per_block: int = 256,
    progress: bool = True,
) -> Path:
    """``buckets.npy`` (C, H, W) uint16/uint8, ``height.npy`` (H, W) float32, ``meta.json``.

    Written block by block through memmaps; files appear under temporary names of this
    process and are renamed only when complete, ``buckets.npy`` last, so a crash leaves
    nothing half-written behind and a reader that finds ``buckets.npy`` finds the rest:
    several processes may write the same dataset at once (a study's workers on a new store).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wafer = Wafer(spec)
    dtype = np.uint8 if spec.bits == 8 else np.uint16
    H, W = spec.height, spec.width
    tag = f"{os.getpid()}.part"
    tmp_b, tmp_h, tmp_m = out / f"buckets.npy.{tag}", out / f"height.npy.{tag}", out / f"meta.json.{tag}"
    buckets = new_memmap(tmp_b, dtype, (cfg.channels, H, W))  # a full disk: OSError now, not SIGBUS later
    height = new_memmap(tmp_h, np.float32, (H, W))
    rng = np.random.default_rng(spec.seed + 1)
    blocks = range(0, H, rows_per_block)
    for r0 in tqdm(blocks, desc="wafer", unit="block", disable=not progress or None, mininterval=2):
        r1 = min(H, r0 + rows_per_block)
        h = wafer.rows(r0, r1)
        inten = render(h, cfg)
        if spec.noise:
            inten = add_noise(inten, spec.noise, spec.noise_kind, rng, cfg)
        buckets[:, r0:r1] = quantize(inten, spec.bits)
        height[r0:r1] = h
    buckets.flush()
    height.flush()
    del buckets, height
    tmp_m.write_text(json.dumps({"spec": asdict(spec), "psi": asdict(cfg)}, indent=1))
    tmp_h.replace(out / "height.npy")
    tmp_m.replace(out / "meta.json")
    tmp_b.replace(out / "buckets.npy")
    return out
