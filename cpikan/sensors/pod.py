"""The POD basis of a snapshot family: what a few sensors can hope to pin down.

Snapshots are rows of an (m, n) array (m snapshots of an n-point field). The basis is the
leading right singular vectors of the centred snapshots, by one of
- ``gram`` (Sirovich's method of snapshots, the default when m ≪ n): the m × m Gram matrix in
  float64 and its eigenvectors; one pass over the data, exact to ~eps·(σ₁/σᵢ)² per mode;
- ``svd``: a thin SVD of the snapshots (LAPACK gesdd), the reference;
- ``randomized`` (Halko, Martinsson & Tropp 2011: a Gaussian range finder with power
  iterations, then an SVD of the small projected matrix): for many snapshots on big grids. The basis carries a sha256 digest, so
a sensor placement records exactly which basis it was chosen on.

With ``weights`` (each point's share of the domain, :mod:`cpikan.sensors.measure`) the
modes are orthonormal in the weighted inner product ΦᵀWΦ = I: the POD of the field over
the domain rather than over the mesh's points. They are computed from the snapshots
themselves, Φ = X_cᵀU/σ, so a point of weight 0 still has a value a sensor can read.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import scipy.linalg

METHODS = ("auto", "gram", "svd", "randomized")
#: ``auto``: the method of snapshots up to this many snapshots, the randomised SVD beyond
GRAM_LIMIT = 4096


@dataclass(frozen=True)
class Basis:
    modes: np.ndarray  # (n, r), orthonormal columns (in the weighted inner product, with weights)
    mean: np.ndarray  # (n,), the snapshot mean the modes describe deviations from
    singular_values: np.ndarray  # (r,)
    energy: float  # fraction of the centred snapshots' variance the r modes hold

    @property
    def rank(self) -> int:
        return int(self.modes.shape[1])

    @property
    def points(self) -> int:
        return int(self.modes.shape[0])

    def significant_rank(self, rtol: float = 1e-6) -> int:
        """Modes whose singular value is above ``rtol`` × the largest: the directions the
        snapshots really span (the rest is round-off, ~1e-8 relative by the method of
        snapshots, and would only fit noise)."""
        s = self.singular_values
        return max(1, int(np.count_nonzero(s > rtol * s[0]))) if len(s) and s[0] > 0 else 1

    def truncate(self, rank: int) -> Basis:
        """The leading ``rank`` modes (POD modes are nested: no refit needed)."""
        s2 = np.square(self.singular_values, dtype=np.float64)
        kept = float(s2[:rank].sum() / s2.sum()) if s2.sum() > 0 else 1.0
        return Basis(self.modes[:, :rank], self.mean, self.singular_values[:rank], self.energy * kept)

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the modes and mean as little-endian float32 (stable across runs)."""
        h = hashlib.sha256()
        for a in (self.modes, self.mean):
            h.update(np.ascontiguousarray(a, "<f4").tobytes())
        return h.hexdigest()


def pod_basis(snapshots: np.ndarray, rank: int, *, method: str = "auto", oversample: int = 10,
              power_iterations: int = 2, seed: int = 0, weights: np.ndarray | None = None) -> Basis:
    """The ``rank`` leading POD modes of (m, n) ``snapshots``.

    Args:
        snapshots: m snapshots of an n-point field, as rows (float32 or float64).
        rank: modes kept; at most min(m, n).
        method: ``gram``, ``svd``, ``randomized`` or ``auto`` (gram while m ≤ ``GRAM_LIMIT``).
        oversample, power_iterations, seed: the randomised SVD's accuracy knobs.
        weights: (n,) each point's share of the domain (≥ 0); None: every point alike.
    """
    x = np.asarray(snapshots)
    if x.ndim != 2:
        raise ValueError(f"snapshots: expected (m snapshots, n points), got shape {x.shape}")
    m, n = x.shape
    if not 1 <= rank <= min(m, n):
        raise ValueError(f"rank: must be between 1 and min(snapshots, points) = {min(m, n)}, got {rank}")
    if not np.isfinite(x).all():
        raise ValueError("snapshots: contain NaN or Inf values")
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    mean = x.mean(0, dtype=np.float64)
    xc = x.astype(dtype, copy=True)
    xc -= mean.astype(dtype)
    unweighted = xc
    if weights is not None:
        w = np.asarray(weights, np.float64)
        if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"weights: expected ({n},) finite values ≥ 0, got shape {w.shape}")
        xc = xc * np.sqrt(w).astype(dtype)
    total = float(np.einsum("ij,ij->", xc, xc, dtype=np.float64))
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; allowed: {', '.join(METHODS)}")
    if method == "auto":
        method = "gram" if m <= GRAM_LIMIT else "randomized"
    if method == "gram":
        s, vt = _gram(xc, rank)
    elif method == "randomized":
        s, vt = _randomized(xc, rank, oversample, power_iterations, seed)
    else:
        _, s, vt = scipy.linalg.svd(xc, full_matrices=False, check_finite=False, lapack_driver="gesdd")
        s, vt = s[:rank], vt[:rank]
    energy = min(1.0, float(np.sum(np.square(s, dtype=np.float64)) / total)) if total > 0 else 1.0
    if weights is None:
        modes = np.ascontiguousarray(vt.T)
    else:  # Φ = X_cᵀ U Σ⁻¹ with U = Y V Σ⁻¹ (Y the weighted snapshots): W-orthonormal, defined at every point
        live = s > 1e-12 * (s[0] if len(s) else 0.0)  # directions the snapshots span; the rest: zero modes
        inv = np.where(live, 1.0 / np.where(live, s, 1.0), 0.0).astype(dtype)
        u = (xc @ vt.T) * inv
        modes = (unweighted.T @ u) * inv
        phi = modes[:, live].astype(np.float64)
        try:  # re-orthonormalise in W (the randomised range is approximate: ~1e-2 off on a flat spectrum)
            chol = scipy.linalg.cholesky(phi.T @ (w[:, None] * phi), lower=True)
            modes[:, live] = scipy.linalg.solve_triangular(chol, phi.T, lower=True).T
        except np.linalg.LinAlgError:  # modes too close to dependent to tell apart: as computed
            pass
        modes = np.ascontiguousarray(modes)
    return Basis(modes, mean.astype(dtype), s.astype(np.float64), energy)


def _gram(xc: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Method of snapshots: xc xcᵀ = U Σ² Uᵀ (float64), so Vᵀ = Σ⁻¹ Uᵀ xc."""
    g = np.zeros((xc.shape[0],) * 2)
    for c0 in range(0, xc.shape[1], 1 << 18):  # column blocks: float64 copies stay small
        block = xc[:, c0 : c0 + (1 << 18)].astype(np.float64)
        g += block @ block.T
    w, u = scipy.linalg.eigh(g, check_finite=False)
    w, u = w[::-1][:rank], u[:, ::-1][:, :rank]
    s = np.sqrt(np.maximum(w, 0.0))
    vt = (u.T.astype(xc.dtype) @ xc) / np.maximum(s, 1e-300)[:, None].astype(xc.dtype)
    q, _ = scipy.linalg.qr(vt.T, mode="economic", check_finite=False)  # re-orthonormalise
    return s, (q * np.sign(np.einsum("ij,ij->j", q, vt.T))).T


def _randomized(xc: np.ndarray, rank: int, oversample: int, power_iterations: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top singular values and right singular vectors of xc (m, n), m ≪ n: the range of
    xcᵀ (n-dimensional) is found from xcᵀ G, G Gaussian (m, rank + oversample)."""
    m = xc.shape[0]
    k = min(rank + oversample, m)
    g = np.random.default_rng(seed).standard_normal((m, k)).astype(xc.dtype)
    q, _ = scipy.linalg.qr(xc.T @ g, mode="economic", check_finite=False)  # (n, k)
    for _ in range(power_iterations):  # (xcᵀxc)^q sharpens a slowly decaying spectrum
        z, _ = scipy.linalg.qr(xc @ q, mode="economic", check_finite=False)  # (m, k)
        q, _ = scipy.linalg.qr(xc.T @ z, mode="economic", check_finite=False)
    b = xc @ q  # (m, k): xc restricted to the found range
    _, s, wt = scipy.linalg.svd(b, full_matrices=False, check_finite=False)
    return s[:rank], (q @ wt[:rank].T).T


def stack_snapshots(fields: list[np.ndarray]) -> np.ndarray:
    """Snapshots of one grid as (m, n) rows; snapshots whose shapes disagree are an error."""
    if not fields:
        raise ValueError("snapshots: none given")
    shape = np.shape(fields[0])
    for i, f in enumerate(fields):
        if np.shape(f) != shape:
            raise ValueError(f"snapshots: snapshot {i} has shape {np.shape(f)}, snapshot 0 has {shape}; "
                             "all must be on one grid")
    return np.stack([np.ravel(f) for f in fields])
