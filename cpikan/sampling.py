"""Collocation sampling: uniform, Latin hypercube, residual-adaptive (RAR-D, Wu et al. 2023)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

SAMPLERS = ("lhs", "uniform", "chebyshev")


def _box(lo: Sequence[float], hi: Sequence[float], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    lo_t = torch.as_tensor(lo, dtype=dtype)
    hi_t = torch.as_tensor(hi, dtype=dtype)
    return lo_t, hi_t - lo_t


def uniform(
    n: int, lo: Sequence[float], hi: Sequence[float], gen: torch.Generator,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    lo_t, span = _box(lo, hi, dtype)
    return lo_t + span * torch.rand(n, len(lo), generator=gen, dtype=dtype)


def latin_hypercube(
    n: int, lo: Sequence[float], hi: Sequence[float], gen: torch.Generator,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """n points, exactly one in each of the n equal strata of every coordinate."""
    d = len(lo)
    strata = torch.stack([torch.randperm(n, generator=gen) for _ in range(d)], dim=1)
    jitter = torch.rand(n, d, generator=gen, dtype=dtype)
    lo_t, span = _box(lo, hi, dtype)
    return lo_t + span * (strata.to(dtype) + jitter) / n


def chebyshev(
    n: int, lo: Sequence[float], hi: Sequence[float], gen: torch.Generator,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """n points of the Chebyshev (arcsine) density per coordinate, x̂ = −cos(πU): crowded
    toward the faces as Chebyshev nodes are, so polynomial least squares of degree K stays
    well conditioned with O(K) points per axis (uniform points need O(K²))."""
    lo_t, span = _box(lo, hi, dtype)
    u = torch.rand(n, len(lo), generator=gen, dtype=dtype)
    return lo_t + span * (1.0 - torch.cos(torch.pi * u)) / 2.0


def sample(
    kind: str, n: int, lo: Sequence[float], hi: Sequence[float], gen: torch.Generator,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    if kind == "lhs":
        return latin_hypercube(n, lo, hi, gen, dtype)
    if kind == "uniform":
        return uniform(n, lo, hi, gen, dtype)
    if kind == "chebyshev":
        return chebyshev(n, lo, hi, gen, dtype)
    raise ValueError(f"sampler: unknown {kind!r}; allowed: {', '.join(SAMPLERS)}")


def rar_d_weights(residual: Tensor, k: float = 1.0, c: float = 1.0) -> Tensor:
    """Sampling density ∝ r^k / mean(r^k) + c (normalised to sum to 1)."""
    rk = residual.detach().abs().double().pow(k)
    dens = rk / rk.mean().clamp_min(torch.finfo(rk.dtype).tiny) + c
    return dens / dens.sum()


def rar_d(
    candidates: Tensor,
    residual_fn: Callable[[Tensor], Tensor],
    n_new: int,
    gen: torch.Generator,
    k: float = 1.0,
    c: float = 1.0,
) -> Tensor:
    """Draw ``n_new`` of ``candidates`` (without replacement) with the RAR-D density."""
    if n_new > candidates.shape[0]:
        raise ValueError(f"rar_points: {n_new} exceeds the {candidates.shape[0]} candidates")
    weights = rar_d_weights(residual_fn(candidates), k, c)
    idx = torch.multinomial(weights, n_new, replacement=False, generator=gen)
    return candidates[idx]


def volume_weights(points: Tensor, k: int | None = None, clip: float = 4.0, chunk: int = 4096) -> Tensor:
    """Each point's share of the domain's volume (VW-PINNs), mean 1: r_k^d normalised, r_k
    the distance to its k-th nearest neighbour (k = d + 1 by default), clipped to
    [1/clip, clip] (points on the boundary see half a neighbourhood).

    With uniform points every weight is ≈ 1; where adaptive sampling (RAR-D) crowds points,
    each counts for less, so the mean weighted residual stays an estimate of the integral.
    """
    n, d = points.shape
    k = min(k or d + 1, n - 1)
    if k < 1:
        return torch.ones(n, dtype=points.dtype, device=points.device)
    radius = torch.cat([torch.cdist(c, points).kthvalue(k + 1, dim=1).values for c in points.split(chunk)])
    vol = radius.pow(d)
    w = vol / vol.mean().clamp_min(torch.finfo(vol.dtype).tiny)
    w = w.clamp(1.0 / clip, clip)
    return w / w.mean()


def check_finite(name: str, points: Tensor) -> Tensor:
    if not torch.isfinite(points).all():
        raise ValueError(f"{name}: collocation points must be finite (found NaN or Inf)")
    return points
