"""Sensors where the physics leaves the field open: placement for the physics-informed estimate.

QR on the POD basis places sensors for the linear estimate. The physics-informed network
gets most of the field from the Navier–Stokes residual and the boundary data; the sensors
must pin down only what those leave open, and their noise reaches the field through the same
directions (Kovasznay with its inlet withheld, seed 4: 1.3e-3 error without noise, 1.7e-2
with 1 % noise). Linearised at the network and Re the training starts from, with θ its
parameters and log Re:

- the constraints (momentum residual, Dirichlet and Neumann sides) have Jacobian J_c, so
  before any sensor θ's information is J_cᵀJ_c + λI, λ the information of K average
  sensors spread evenly over θ (a weak prior: it keeps directions no reading can see from
  counting);
- a sensor at grid point i reads (u, v, p) at each sensor time: G_i, those rows of the
  output's Jacobian, weighted 1/(K·T) as the sensor terms are in the loss;

and the K points are picked greedily, each the one whose readings raise log det of the
information the most (D-optimal design; without constraints this is pivoted QR's volume
growth, as :func:`cpikan.sensors.placement.joint_pivots` says), by block Woodbury updates
on the whitened sensitivities Z_i = G_i (J_cᵀJ_c + λI)^(-1/2) / √(K·T).
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


def d_optimal(z: np.ndarray, k: int) -> np.ndarray:
    """k candidate indices of ``z`` (points, rows, q), each raising log det(I + Σ Z_iᵀZ_i)
    the most given those already picked."""
    return _greedy(z, k, variance=False)


def a_optimal(z: np.ndarray, k: int) -> np.ndarray:
    """k candidate indices of ``z`` (points, rows, q), each lowering the summed posterior
    variance of every candidate's readings, trace(Z Σ Zᵀ), the most."""
    return _greedy(z, k, variance=True)


def _greedy(z: np.ndarray, k: int, variance: bool) -> np.ndarray:
    points, rows, q = z.shape
    flat = z.reshape(points * rows, q)
    gram = flat.T @ flat
    sigma = np.eye(q)  # the posterior covariance of the whitened coordinates
    picked: list[int] = []
    eye = np.eye(rows)
    for _ in range(k):
        zs = z @ sigma  # (points, rows, q)
        blocks = np.einsum("nap,nbp->nab", zs, z)  # Z_i Σ Z_iᵀ
        if variance:  # trace((I + Z_iΣZ_iᵀ)⁻¹ Z_i Σ ZᵀZ Σ Z_iᵀ)
            c = np.einsum("nap,pq,nbq->nab", zs, gram, zs)
            gain = np.einsum("naa->n", np.linalg.solve(eye + blocks, c))
        else:
            gain = np.linalg.slogdet(eye + blocks)[1]
        gain[picked] = -np.inf
        best = int(np.argmax(gain))
        picked.append(best)
        zb = zs[best]  # Z_b Σ
        sigma = sigma - zb.T @ np.linalg.solve(eye + blocks[best], zb)
    return np.asarray(picked)
