"""Sensors where the physics leaves the field open: placement for the physics-informed estimate.

QR on the POD basis places sensors for the linear estimate. The physics-informed network
gets most of the field from the Navier–Stokes residual and the boundary data; the sensors
must pin down only what those leave open, and their noise reaches the field through the same
directions (Kovasznay with its inlet withheld, seed 4: 1.3e-3 error without noise, 1.7e-2
with 1 % noise). Linearised at a network fitted to the flow family's mean field (no reading
is used) and Re at its starting guess, with θ the network's parameters and log Re:

- the constraints (momentum residual, Dirichlet and Neumann sides) have Jacobian J_c, so
  before any sensor θ's information is J_cᵀJ_c + λI, λ the information of K average
  sensors spread evenly over θ (a weak prior: it keeps directions no reading can see from
  counting);
- a sensor at grid point i reads (u, v, p) at each sensor time: G_i, those rows of the
  output's Jacobian, weighted 1/(K·T) as the sensor terms are in the loss;

and the K points are picked greedily, each the one whose readings lower the field's summed
posterior variance the most (A-optimal design on the field; QR pivoting is the greedy
volume, D-optimal, counterpart), by block Woodbury updates on the whitened sensitivities
Z_i = G_i (J_cᵀJ_c + λI)^(-1/2) / √(K·T). The field's variance, not the count of open
directions: a network has many fine directions the physics leaves open near a withheld side.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def whitened_sensitivities(jc: Tensor, g: Tensor, rows: int, k: int, rank: int = 200) -> np.ndarray:
    """Z, (points, rows, q): each candidate's ``rows`` readings' sensitivity to θ in the
    coordinates where the constraints' information plus the prior is the identity; truncated
    to the q ≤ ``rank`` directions any reading sees (q: eigenvalues of ZᵀZ above 1e-12 of the
    largest)."""
    jc, g = jc.double(), g.double()
    s2, v = torch.linalg.eigh(jc.T @ jc)
    points = g.shape[0] // rows
    lam = float(g.square().sum()) / points * k / g.shape[1] / (k * rows)
    z = (g @ (v / torch.sqrt(s2.clamp_min(0) + lam))) / np.sqrt(k * rows)
    e, w = torch.linalg.eigh(z.T @ z)
    keep = torch.nonzero(e > 1e-12 * e[-1]).flatten()[-rank:]
    return (z @ w[:, keep]).reshape(points, rows, -1).numpy()


def a_optimal(z: np.ndarray, k: int) -> np.ndarray:
    """k candidate indices of ``z`` (points, rows, q), each lowering the summed posterior
    variance of every candidate's readings, trace(Z Σ Zᵀ), the most: the field's expected
    error, where the D-optimal log det counts every open direction alike (on Kovasznay it
    put all 12 sensors in one 0.05-wide clump by the inlet corner, where the network's
    finest, least constrained directions show)."""
    points, rows, q = z.shape
    flat = z.reshape(points * rows, q)
    gram = flat.T @ flat
    sigma = np.eye(q)  # the posterior covariance of the whitened coordinates
    eye = np.eye(rows)
    picked: list[int] = []
    for _ in range(k):
        zs = z @ sigma  # (points, rows, q)
        blocks = np.einsum("nap,nbp->nab", zs, z)  # Z_i Σ Z_iᵀ
        # the fall of trace(Z Σ Zᵀ) from reading at i: trace((I + Z_iΣZ_iᵀ)⁻¹ Z_i Σ ZᵀZ Σ Z_iᵀ)
        fall = np.einsum("naa->n", np.linalg.solve(eye + blocks, np.einsum("nap,pq,nbq->nab", zs, gram, zs)))
        fall[picked] = -np.inf
        best = int(np.argmax(fall))
        picked.append(best)
        sigma = sigma - zs[best].T @ np.linalg.solve(eye + blocks[best], zs[best])
    return np.asarray(picked)
