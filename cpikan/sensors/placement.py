"""K sensors on a POD basis, and the field they imply.

- ``qr``: QR with column pivoting on the basis' transpose (Businger & Golub 1965; as
  Q-DEIM, Drmač & Gugercin 2016): each pivot is the point that adds the most new
  information to the ones already picked. With K ≤ r it runs on the first K modes.
- K > r (more sensors than modes): the first r by QR, then GappyPOD+E (Peherstorfer, Drmač
  & Gugercin 2020, Algorithm 1): each further point maximises a lower bound on the growth
  of the smallest singular value of the sampled basis, i.e. the stability of the fit.
- Several bases on one grid (one per field a sensor reads, e.g. u, v and p): ``qr`` picks,
  greedily, the point whose readings raise Σ_f log det(Ψ_f[P]ᵀΨ_f[P] + εI) the most — for one
  basis the choice of pivoted QR (the largest residual after the picked rows; Q-DEIM is
  greedy volume growth), past r the D-optimal extension. On the Kovasznay u-basis alone the
  12 QR points lie on the two lines where cos 2πy = ±1, where v = 0: they say nothing of v.
- ``random`` and ``uniform`` (a spread lattice of grid points): the baselines.

:func:`reconstruct` is the linear estimate: least-squares mode coefficients from the
readings, then mean + modes · coefficients.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.linalg

from cpikan.sensors.pod import Basis

METHODS = ("qr", "random", "uniform")


class SensorError(ValueError):
    """Bad input to sensor placement: the message names the field and what is allowed."""


@dataclass(frozen=True)
class Placement:
    indices: tuple[int, ...]  # flattened grid indices, in pick order
    method: str
    basis_digest: str  # the basis it was chosen on (replay checks it)
    points: int  # the grid's point count
    field_digests: tuple[str, ...] = ()  # a placement on several bases: each one's digest

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Placement:
        d = json.loads(text)
        return cls(tuple(int(i) for i in d["indices"]), d["method"], d["basis_digest"], int(d["points"]),
                   tuple(d.get("field_digests", ())))

    def save(self, path: Path) -> None:
        """Written under a temporary name, then renamed (never half a file)."""
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)

    def check(self, basis: Basis) -> None:
        """Refuse a basis the placement was not chosen on (one of its fields' bases is fine)."""
        if basis.digest != self.basis_digest and basis.digest not in self.field_digests:
            raise SensorError(f"placement: chosen on basis {self.basis_digest[:12]}, not on this one "
                              f"({basis.digest[:12]}); recompute the basis from the same snapshots or re-place")


def _check(basis: Basis, k: int, method: str) -> None:
    if method not in METHODS:
        raise SensorError(f"method: unknown {method!r}; allowed: {', '.join(METHODS)}")
    if not isinstance(k, int | np.integer) or k < 1:
        raise SensorError(f"k: must be a positive number of sensors, got {k!r}")
    if k > basis.points:
        raise SensorError(f"k: {k} sensors but the grid has only {basis.points} points")
    if not (np.isfinite(basis.modes).all() and np.isfinite(basis.mean).all()):
        raise SensorError("basis: contains NaN or Inf values (check the snapshots)")


def place(basis: Basis | Sequence[Basis], k: int, method: str = "qr", *, seed: int = 0,
          grid_shape: tuple[int, int] | None = None, points: np.ndarray | None = None,
          candidates: np.ndarray | None = None) -> Placement:
    """Choose ``k`` sensor points (flattened indices) on ``basis``, or on several bases of one
    grid (one per field each sensor reads), among ``candidates`` (indices; default every
    point: where a sensor can be mounted). ``uniform`` spreads them as a lattice on
    ``grid_shape`` (a square grid by default) or, given ``points`` (an unstructured mesh's
    (n, d) coordinates) or candidates, farthest-point apart."""
    bases = [basis] if isinstance(basis, Basis) else list(basis)
    if not bases:
        raise SensorError("basis: none given")
    for b in bases:
        _check(b, k, method)
    n = bases[0].points
    if any(b.points != n for b in bases):
        raise SensorError(f"basis: the bases are on grids of {sorted({b.points for b in bases})} points; "
                          "a joint placement needs one grid")
    cand = np.arange(n) if candidates is None else _candidates(candidates, n, k)
    if method == "random":
        local = np.random.default_rng(seed).choice(len(cand), size=k, replace=False)
    elif method == "uniform" and (candidates is not None or (points is not None and grid_shape is None)):
        if points is None:
            rows, cols = np.divmod(cand, (grid_shape or _square(n))[1])
            local = _spread(k, np.stack([rows, cols], 1).astype(np.float64))
        else:
            local = _spread(k, np.asarray(points, np.float64)[cand])
    elif method == "uniform":
        local = _lattice(k, grid_shape or _square(n))
    elif len(bases) == 1:
        local = qr_pivots(bases[0].modes[cand] if candidates is not None else bases[0].modes, k)
    else:
        local = joint_pivots([b.modes[cand] if candidates is not None else b.modes for b in bases], k)
    idx = cand[np.asarray(local)]
    if len(bases) == 1:
        return Placement(tuple(int(i) for i in idx), method, bases[0].digest, n)
    digests = tuple(b.digest for b in bases)
    joint = hashlib.sha256("".join(digests).encode()).hexdigest()
    return Placement(tuple(int(i) for i in idx), method, joint, n, digests)


def _candidates(candidates: np.ndarray, n: int, k: int) -> np.ndarray:
    cand = np.asarray(candidates)
    if cand.ndim != 1 or cand.dtype.kind not in "iu":
        raise SensorError(f"candidates: point indices as a 1-D integer array, got {cand.dtype} {cand.shape}")
    if len(cand) and (cand.min() < 0 or cand.max() >= n):
        raise SensorError(f"candidates: indices must lie in 0 … {n - 1}, got {cand.min()} … {cand.max()}")
    cand = np.unique(cand)
    if len(cand) < k:
        raise SensorError(f"candidates: {len(cand)} points where a sensor may go, fewer than the {k} sensors")
    return cand


def qr_pivots(modes: np.ndarray, k: int) -> np.ndarray:
    """k points: QR column pivots of modesᵀ (on its first k modes when k < r), then GappyPOD+E."""
    r = modes.shape[1]
    use = modes[:, : min(k, r)]
    _, piv = scipy.linalg.qr(use.T, pivoting=True, mode="r", check_finite=False)
    picked = list(piv[: min(k, r)])
    if k > r:
        picked = _gappy_e(modes, picked, k)
    return np.asarray(picked[:k])


def joint_pivots(modes: Sequence[np.ndarray], k: int, eps: float = 1e-10) -> np.ndarray:
    """k points, each raising Σ_f log det(Ψ_f[P]ᵀΨ_f[P] + εI) the most (rank-one updates of
    each (Ψ_f[P]ᵀΨ_f[P] + εI)⁻¹). While a basis is not yet spanned its term grows as its
    residual norm² / ε, so the picks follow pivoted QR's on the still-open directions."""
    mats = [np.asarray(m, np.float64) for m in modes]
    inverses = [np.eye(m.shape[1]) / eps for m in mats]
    picked: list[int] = []
    for _ in range(k):
        gain = sum(np.log1p(np.einsum("ij,jk,ik->i", m, inv, m)) for m, inv in zip(mats, inverses))
        gain[picked] = -np.inf
        best = int(np.argmax(gain))
        picked.append(best)
        for f, (m, inv) in enumerate(zip(mats, inverses)):
            w = inv @ m[best]
            inverses[f] = inv - np.outer(w, w) / (1.0 + m[best] @ w)
    return np.asarray(picked)


def _gappy_e(modes: np.ndarray, picked: list[int], k: int) -> list[int]:
    """Add points until k: each maximises the bound on σ_min's growth (Peherstorfer et al. 2020)."""
    r = modes.shape[1]
    chosen = np.zeros(modes.shape[0], bool)
    chosen[picked] = True
    norms = np.einsum("ij,ij->i", modes, modes, dtype=np.float64)
    while len(picked) < k:
        _, s, vt = np.linalg.svd(modes[picked].astype(np.float64), full_matrices=False)
        if r == 1:
            score = norms.copy()
        else:
            g = s[-2] ** 2 - s[-1] ** 2
            last = modes @ vt[-1].astype(modes.dtype)  # each point's weight on the weakest direction
            a = g + norms
            score = a - np.sqrt(np.maximum(a * a - 4 * g * last.astype(np.float64) ** 2, 0.0))
        score[chosen] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        chosen[best] = True
    return picked


def _square(n: int) -> tuple[int, int]:
    side = math.isqrt(n)
    if side * side != n:
        raise SensorError(f"grid_shape: needed for a uniform placement on {n} points (not a square grid)")
    return side, side


def _lattice(k: int, shape: tuple[int, int]) -> np.ndarray:
    """k points of the most even a × b lattice with a·b ≥ k, cell-centred on the grid."""
    ny, nx = shape
    a = max(1, round(math.sqrt(k * ny / nx)))
    b = math.ceil(k / a)
    rows = ((np.arange(a) + 0.5) * ny / a).astype(int)
    cols = ((np.arange(b) + 0.5) * nx / b).astype(int)
    idx = (rows[:, None] * nx + cols[None, :]).ravel()
    return idx[np.linspace(0, len(idx) - 1, k).round().astype(int)] if len(idx) > k else idx


def _spread(k: int, points: np.ndarray) -> np.ndarray:
    """k points, each the farthest from those already picked (the first: nearest the centroid)."""
    picked = [int(np.argmin(((points - points.mean(0)) ** 2).sum(1)))]
    nearest = ((points - points[picked[0]]) ** 2).sum(1)
    while len(picked) < k:
        picked.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, ((points - points[picked[-1]]) ** 2).sum(1))
    return np.asarray(picked)


def from_coordinates(points: np.ndarray, coords: np.ndarray, tolerance: float) -> tuple[int, ...]:
    """Grid indices of sensors given by coordinates (nearest grid point within ``tolerance``);
    a sensor outside the domain is an error, never snapped silently."""
    coords = np.atleast_2d(np.asarray(coords, np.float64))
    lo, hi = points.min(0) - tolerance, points.max(0) + tolerance
    for c in coords:
        if np.any(c < lo) or np.any(c > hi):
            raise SensorError(f"sensors: {tuple(c)} lies outside the domain {tuple(lo + tolerance)}–{tuple(hi - tolerance)}")
    return tuple(int(np.argmin(((points - c) ** 2).sum(1))) for c in coords)  # K ≤ a few dozen


def reconstruct(basis: Basis, placement: Placement, readings: np.ndarray) -> np.ndarray:
    """The field(s) implied by ``readings`` ((K,) or (batch, K)): mean + modes · a, with a the
    least-squares fit of the first min(K, r) modes at the sensors."""
    placement.check(basis)
    idx = np.asarray(placement.indices)
    y = np.asarray(readings, np.float64)
    if y.shape[-1] != len(idx):
        raise SensorError(f"readings: {y.shape[-1]} values for {len(idx)} sensors")
    r = min(len(idx), basis.rank)
    theta = basis.modes[idx, :r].astype(np.float64)
    rhs = (y - basis.mean[idx]).T  # (K, batch)
    coef, *_ = scipy.linalg.lstsq(theta, rhs.reshape(len(idx), -1), check_finite=False)
    field = basis.mean.astype(np.float64)[:, None] + basis.modes[:, :r].astype(np.float64) @ coef
    return field.T.reshape(*y.shape[:-1], basis.points)


def residual(basis: Basis, placement: Placement, readings: np.ndarray) -> np.ndarray:
    """Per row of ``readings`` ((batch, K)), how far they lie from the closest the modes can
    come at the sensors (the least-squares residual's norm; 0 when K ≤ rank): readings the
    family cannot explain stand out here."""
    placement.check(basis)
    idx = np.asarray(placement.indices)
    theta = basis.modes[idx, : min(len(idx), basis.rank)].astype(np.float64)  # the fit reconstruct() makes,
    d = (np.atleast_2d(np.asarray(readings, np.float64)) - basis.mean[idx]).T  # at the K sensors only
    coef, *_ = scipy.linalg.lstsq(theta, d, check_finite=False)
    return np.linalg.norm(theta @ coef - d, axis=0)


def standard_error(basis: Basis, placement: Placement, noise_sd: float) -> np.ndarray:
    """(n,) the estimate's standard error at every point from independent sensor noise of
    ``noise_sd``: the fit's coefficients have covariance σ²(ΘᵀΘ)⁻¹ (Θ the fitted modes at
    the sensors), so a point's variance is σ² φ(x)ᵀ(ΘᵀΘ)⁻¹φ(x). It says where the
    placement pins the field and where the noise is amplified (near-parallel rows of Θ);
    the modes left out (truncation) add to it and are not counted."""
    placement.check(basis)
    idx = np.asarray(placement.indices)
    r = min(len(idx), basis.rank)
    _, R = scipy.linalg.qr(basis.modes[idx, :r].astype(np.float64), mode="economic")
    if not np.all(np.abs(np.diag(R)) > 1e-12 * max(float(np.abs(R).max()), 1e-300)):
        return np.full(basis.points, np.inf)  # a mode the sensors cannot see: unbounded
    scaled = scipy.linalg.solve_triangular(R, basis.modes[:, :r].astype(np.float64).T, trans="T")  # R⁻ᵀφ(x)
    return noise_sd * np.sqrt(np.einsum("ij,ij->j", scaled, scaled))
