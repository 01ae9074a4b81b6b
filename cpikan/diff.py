"""Derivatives of a PINN's output: a fast forward-mode "jet" path and the nested-autograd reference.

A *jet* carries a batch's values together with first and pure second derivatives with
respect to each input coordinate, stacked in one tensor of shape ``(1 + 2D, N, W)``:

    J[0]          value
    J[1 : 1+D]    ∂/∂x_j              (one slice per coordinate j)
    J[1+D : ]     ∂²/∂x_j²

Every layer maps a jet to a jet with closed-form rules (linear maps act on all slices in
one matmul; element-wise maps use f, f', f''), so u, ∇u and the diagonal of the Hessian come
out of a single forward pass and one ordinary backward gives the parameter gradient. The
nested-autograd reference builds a graph of graphs instead; it is kept for tests and
benchmarks. Mixed second derivatives are not carried: no problem here needs them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Derivatives:
    """u (N, O), du (N, D, O) and d2u (N, D, O): pure second derivatives ∂²u/∂x_j²."""

    u: Tensor
    du: Tensor
    d2u: Tensor

    def dx(self, j: int, out: int = 0) -> Tensor:
        return self.du[:, j, out]

    def dxx(self, j: int, out: int = 0) -> Tensor:
        return self.d2u[:, j, out]

    def laplacian(self, out: int = 0) -> Tensor:
        return self.d2u[:, :, out].sum(dim=1)


def jet_dims(jet: Tensor) -> int:
    """Number of input coordinates D a jet carries derivatives for."""
    return (jet.shape[0] - 1) // 2


def seed(x: Tensor, scale: Tensor | None = None) -> Tensor:
    """Jet of the input itself. ``scale[j]`` = d x_j / d (physical coordinate j) (chain rule)."""
    n, d = x.shape
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    if scale is not None:
        eye = eye * scale.to(x.dtype)
    first = eye[:, None, :].expand(d, n, d)
    second = torch.zeros(d, n, d, dtype=x.dtype, device=x.device)
    return torch.cat([x[None], first, second], dim=0)


def value_only(x: Tensor) -> Tensor:
    """A jet with no derivative slices: the plain forward pass runs the same code."""
    return x[None]


def elementwise(jet: Tensor, f: Tensor, df: Tensor, d2f: Tensor) -> Tensor:
    """Apply a scalar map given its value f, slope df and curvature d2f at jet[0]."""
    d = jet_dims(jet)
    if d == 0:
        return f[None]
    first = df * jet[1 : 1 + d]
    second = df * jet[1 + d :] + d2f * jet[1 : 1 + d].square()
    return torch.cat([f[None], first, second], dim=0)


def tanh(jet: Tensor) -> Tensor:
    t = torch.tanh(jet[0])
    s = 1.0 - t * t
    return elementwise(jet, t, s, -2.0 * t * s)


def sin(jet: Tensor) -> Tensor:
    s, c = torch.sin(jet[0]), torch.cos(jet[0])
    return elementwise(jet, s, c, -s)


def cos(jet: Tensor) -> Tensor:
    s, c = torch.sin(jet[0]), torch.cos(jet[0])
    return elementwise(jet, c, -s, -c)


def mul(a: Tensor, b: Tensor) -> Tensor:
    """Product of two jets (product rule; b may have width 1 and broadcast)."""
    d = jet_dims(a)
    if d == 0:
        return a * b
    a0, a1, a2 = a[:1], a[1 : 1 + d], a[1 + d :]
    b0, b1, b2 = b[:1], b[1 : 1 + d], b[1 + d :]
    return torch.cat([a0 * b0, a1 * b0 + a0 * b1, a2 * b0 + 2.0 * a1 * b1 + a0 * b2], dim=0)


def bubble(jet: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Jet (width 1) of Π_j (1 − z_j²) over ``dims``: zero exactly on those faces of [-1, 1]^d."""
    factors = []
    for j in dims:
        z = jet[..., j : j + 1]
        factors.append(elementwise(z, 1.0 - z[0].square(), -2.0 * z[0], torch.full_like(z[0], -2.0)))
    return functools.reduce(mul, factors)


def ramp(jet: Tensor, ends: tuple[tuple[int, int], ...]) -> Tensor:
    """Jet (width 1) of Π (1 − s·z_j) over ``ends`` = ((j, s), …), s = ±1: zero exactly on the
    one face z_j = s of [-1, 1]^d (a subdomain with a single outer face in dimension j)."""
    factors = []
    for j, s in ends:
        z = jet[..., j : j + 1]
        factors.append(elementwise(z, 1.0 - s * z[0], torch.full_like(z[0], -float(s)), torch.zeros_like(z[0])))
    return functools.reduce(mul, factors)


def linear(jet: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x Wᵀ + b on every slice; the bias only touches the value slice."""
    out = jet @ weight.T
    if bias is None:
        return out
    return torch.cat([out[:1] + bias, out[1:]], dim=0)


def layer_norm(jet: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm over the last dimension, differentiated in closed form."""
    d = jet_dims(jet)
    c = jet - jet.mean(dim=-1, keepdim=True)  # centring is linear: all slices at once
    c0 = c[0]
    var = c0.square().mean(dim=-1, keepdim=True) + eps
    s = var.rsqrt()
    if d == 0:
        return (c0 * s * weight + bias)[None]
    c1, c2 = c[1 : 1 + d], c[1 + d :]
    v1 = 2.0 * (c0 * c1).mean(dim=-1, keepdim=True)
    v2 = 2.0 * (c1.square() + c0 * c2).mean(dim=-1, keepdim=True)
    s1 = -0.5 * s / var * v1
    s2 = 0.75 * s / var.square() * v1.square() - 0.5 * s / var * v2
    y0 = c0 * s
    y1 = c1 * s + c0 * s1
    y2 = c2 * s + 2.0 * c1 * s1 + c0 * s2
    y = torch.cat([y0[None], y1, y2], dim=0) * weight
    return y + torch.cat([bias.expand_as(y0)[None], torch.zeros_like(y[1:])], dim=0)


def chebyshev_basis(z: Tensor, degree: int, order: int = 2) -> list[Tensor]:
    """T_0..T_K at z by recurrence, and (order ≥ 1, 2) their first and second derivatives.

    Returns ``[T]``, ``[T, T']`` or ``[T, T', T'']``, each of shape ``(*z.shape, K + 1)``.
    Lists and ``torch.stack`` keep it free of in-place writes (autograd-safe, no clones).
    """
    one = torch.ones_like(z)
    zero = torch.zeros_like(z)
    t = [one, z]
    dt = [zero, one]
    d2t = [zero, zero]
    for _ in range(1, degree):
        t.append(2.0 * z * t[-1] - t[-2])
        if order >= 1:
            dt.append(2.0 * t[-2] + 2.0 * z * dt[-1] - dt[-2])
        if order >= 2:
            d2t.append(4.0 * dt[-2] + 2.0 * z * d2t[-1] - d2t[-2])
    out = [torch.stack(t[: degree + 1], dim=-1)]
    if order >= 1:
        out.append(torch.stack(dt[: degree + 1], dim=-1))
    if order >= 2:
        out.append(torch.stack(d2t[: degree + 1], dim=-1))
    return out


def chebyshev(jet: Tensor, degree: int) -> Tensor:
    """Jet (1+2D, N, I) of z ↦ jet (1+2D, N, I·(K+1)) of the basis [T_k(z_i)]."""
    d = jet_dims(jet)
    z = jet[0]
    if d == 0:
        (t,) = chebyshev_basis(z, degree, order=0)
        return t.flatten(-2)[None]
    t, dt, d2t = chebyshev_basis(z, degree)
    z1 = jet[1 : 1 + d, ..., None]
    z2 = jet[1 + d :, ..., None]
    first = dt * z1
    second = dt * z2 + d2t * z1.square()
    return torch.cat([t[None], first, second], dim=0).flatten(-2)


def unpack(jet: Tensor) -> Derivatives:
    d = jet_dims(jet)
    return Derivatives(
        u=jet[0], du=jet[1 : 1 + d].permute(1, 0, 2), d2u=jet[1 + d :].permute(1, 0, 2)
    )


# --------------------------------------------------------------------------- reference
def derivatives_autograd(fn: Callable[[Tensor], Tensor], x: Tensor) -> Derivatives:
    """Nested ``torch.autograd.grad``, one output and one coordinate at a time.

    This is how the published Scaled-cPIKAN code differentiates; it is the ground truth the
    fast path is tested against, and the baseline in ``bench/derivatives.py``.
    """
    x = x.detach().requires_grad_(True)
    u = fn(x)
    d = x.shape[1]
    firsts, seconds = [], []
    for o in range(u.shape[1]):
        (g,) = torch.autograd.grad(u[:, o].sum(), x, create_graph=True)
        firsts.append(g)
        cols = []
        for j in range(d):
            (h,) = torch.autograd.grad(g[:, j].sum(), x, create_graph=True)
            cols.append(h[:, j])
        seconds.append(torch.stack(cols, dim=1))
    du = torch.stack(firsts, dim=2)
    d2u = torch.stack(seconds, dim=2)
    return Derivatives(u=u, du=du, d2u=d2u)
