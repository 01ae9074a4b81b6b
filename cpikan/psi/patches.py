"""Whole-wafer refinement by overlapping Scaled-cPIKAN patches that agree on their overlaps.

The wafer is split into a grid of equal, overlapping windows. Each window k gets its own
correction network: h_k(x, y) = h₀(x, y) + s·δ_k(x, y), where h₀ is the starting estimate
(smoothed once over the whole wafer, so it is the same field in every window) and δ_k a
Scaled-cPIKAN over the window's pixel coordinates whose output layer starts at zero (every
patch starts at h₀ exactly). The networks are trained together on

    Σ_k physics loss of window k  +  w · Σ_(p,q) interface loss on the overlap of p and q,

where the interface loss is the mean squared difference of the two heights and of their
pixel gradients on the overlap (h₀ cancels there, so only s·(δ_p − δ_q) is penalised).
Data pixels are sampled afresh every step (seeded), so a step costs the same at any wafer
size; the interface is checked on a fixed strided grid of each overlap.
The stitched height takes each pixel from the window whose core holds it; the seam is
measured on every overlap pixel, not on the samples.

Adam alone meets a stiff interface term only by slowing the data fit. So by default the
patches first train alone with Adam, and a joint Levenberg–Marquardt finish on fixed samples
(:class:`CoupledLeastSquares`: JᵀJ assembled block by block, one dense K·P solve) then
brings in a stiff interface weight: the seams close 20× below independent patches at the
same height error (docs/domain.md).

The K networks run as one batched call (``torch.func.vmap`` over ``functional_call`` with
their stacked parameters), and are handed back as ordinary ScaledCPIKAN modules.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call, grad, stack_module_state, vmap

from cpikan.nn import ScaledCPIKAN
from cpikan.psi.loss import render_torch
from cpikan.psi.physics import DEFAULT_PSI, PSIConfig, dequantize
from cpikan.psi.refine import smoothed
from cpikan.train.lm import MAX_PARAMETERS, LevenbergMarquardt


@dataclass(frozen=True)
class Window:
    """A patch: its window [r0, r0+h) × [c0, c0+w) and the core it writes to the output."""

    r0: int
    c0: int
    h: int
    w: int
    core: tuple[int, int, int, int]  # (r0, r1, c0, c1), global


def _splits(n: int, parts: int, overlap: int, what: str) -> tuple[int, list[tuple[int, int, int]]]:
    """The window size along one axis (the same for every window) and each window's
    (window start, core start, core end)."""
    if parts < 1:
        raise ValueError(f"{what}: must be ≥ 1, got {parts}")
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    size = max(b - a for a, b in zip(bounds, bounds[1:])) + (overlap if parts > 1 else 0)
    if size > n:
        raise ValueError(f"{what}: {parts} patches with overlap {overlap} do not fit in {n} px")
    return size, [(min(max(a - overlap // 2, 0), n - size), a, b) for a, b in zip(bounds, bounds[1:])]


def patch_windows(height: int, width: int, rows: int, cols: int, overlap: int) -> list[Window]:
    """Equal windows on a rows × cols grid; neighbours share at least ``overlap`` pixels."""
    if overlap < 2:
        raise ValueError(f"overlap: must be ≥ 2 px (the interface term needs a gradient), got {overlap}")
    (hh, ys), (ww, xs) = _splits(height, rows, overlap, "rows"), _splits(width, cols, overlap, "cols")
    return [Window(r0, c0, hh, ww, (a, b, c, d)) for (r0, a, b) in ys for (c0, c, d) in xs]


def overlaps(windows: list[Window], cols: int) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """(p, q, global box) for each pair of edge neighbours on the grid."""
    out = []
    for p, a in enumerate(windows):
        for q in (p + 1, p + cols):
            if q >= len(windows) or (q == p + 1 and (p + 1) % cols == 0):
                continue
            b = windows[q]
            box = (max(a.r0, b.r0), min(a.r0 + a.h, b.r0 + b.h), max(a.c0, b.c0), min(a.c0 + a.w, b.c0 + b.w))
            if box[1] - box[0] >= 2 and box[3] - box[2] >= 2:
                out.append((p, q, box))
    return out


@dataclass(frozen=True)
class PatchRefineConfig:
    rows: int = 4
    cols: int = 4
    overlap: int = 32
    # on the mean squared gaps (µm, µm/px); 0 trains every patch alone. With the LM finish
    # (the default) it is the finish's weight: a stiff 1e5 closes the seams without costing
    # the data fit. Adam alone (lm_steps = 0) needs ~30: stiffer slows its data fit
    interface_weight: float = 1e5
    steps: int = 400
    lr: float = 1e-2
    samples: int = 4096  # pixels per window per step
    interface_samples: int = 1024  # overlap pixels per pair (a fixed strided grid)
    hidden: tuple[int, ...] = (8, 8)
    degree: int = 5
    scale_um: float = 0.05
    smooth_px: int = 3
    # a joint Levenberg–Marquardt finish over all patches on fixed samples: Adam leaves the
    # stiff interface term half-met (it slows the data fit); the second-order step meets both
    lm_steps: int = 30
    lm_samples: int = 8192  # fixed pixels per window in the finish (2048 over-fit: seams grew)
    lm_interface_samples: int = 256  # fixed overlap pixels per pair in the finish
    seed: int = 0


class PatchField:
    """K Scaled-cPIKAN corrections evaluated as one batched call."""

    def __init__(self, k: int, h: int, w: int, cfg: PatchRefineConfig) -> None:
        models = [ScaledCPIKAN([2, *cfg.hidden, 1], cfg.degree, [0.0, 0.0], [max(w - 1, 1), max(h - 1, 1)],
                               dtype="float64", seed=cfg.seed * 1000 + i) for i in range(k)]
        for m in models:  # δ starts at exactly zero: the output is linear in the last coefficients
            torch.nn.init.zeros_(m.layers[-1].coeffs)
        self.models = models
        self.params, self.buffers = stack_module_state(models)
        self.base = copy.deepcopy(models[0]).to("meta")
        self._call = vmap(lambda p, b, x: functional_call(self.base, (p, b), (x,)))

    def __call__(self, xy: Tensor) -> Tensor:
        """(K, n, 2) local (x, y) pixel coordinates → (K, n) corrections."""
        return self._call(self.params, self.buffers, xy)[..., 0]

    def export(self) -> list[ScaledCPIKAN]:
        """The trained networks as ordinary modules (for saving or evaluating alone)."""
        out = []
        for i, m in enumerate(self.models):
            m = copy.deepcopy(m)
            m.load_state_dict({k: v[i].detach() for k, v in {**self.params, **self.buffers}.items()})
            out.append(m)
        return out


def refine_wafer(
    buckets: np.ndarray, h_init: np.ndarray, cfg: PatchRefineConfig = PatchRefineConfig(),
    psi: PSIConfig = DEFAULT_PSI, progress: Any = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Refined, stitched height (H, W) float32 and a report: losses, seam figures, seconds."""
    psi.check_channels(buckets.shape[0])
    if h_init.shape != buckets.shape[1:]:
        raise ValueError(f"h_init: shape {h_init.shape} does not match the buckets {buckets.shape[1:]}")
    H, W = h_init.shape
    wins = patch_windows(H, W, cfg.rows, cfg.cols, cfg.overlap)
    pairs = overlaps(wins, cfg.cols)
    K, h, w = len(wins), wins[0].h, wins[0].w
    t0 = time.perf_counter()
    I = torch.from_numpy(dequantize(np.asarray(buckets)))  # (C, H, W), float32 to keep RAM low
    h0 = smoothed(h_init, cfg.smooth_px)[0, 0]
    field = PatchField(K, h, w, cfg)
    P = sum(v[0].numel() for v in field.params.values())
    if cfg.lm_steps and K * P > MAX_PARAMETERS:  # JᵀJ is dense: (K·P)² float64
        raise ValueError(f"lm_steps: the joint finish solves a dense system of {K} patches × {P} parameters "
                         f"= {K * P} unknowns (at most {MAX_PARAMETERS}); use fewer or smaller patches, or lm_steps=0")
    gen = torch.Generator().manual_seed(cfg.seed)
    origin = torch.tensor([[win.c0, win.r0] for win in wins], dtype=torch.float64)  # (K, 2) as (x, y)
    # with a second-order finish the patches first train alone: Adam meets a stiff coupling
    # only by slowing the data fit (docs/domain.md), and its probes cost 4× the step
    coupled = pairs and cfg.interface_weight and not cfg.lm_steps
    probes = _interface_probes(pairs, origin, cfg.interface_samples) if coupled else None
    opt = torch.optim.Adam(field.params.values(), lr=cfg.lr)
    # the sampled gradients jitter every patch; decaying the step to zero lets them settle
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1))
    history: list[dict[str, float]] = []
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        data = _data_loss(field, I, h0, origin, (h, w), cfg, psi, gen)
        loss = data
        inter = torch.zeros((), dtype=torch.float64)
        if probes is not None:
            gaps = _interface_gaps(field, probes, cfg.scale_um)
            inter = gaps.square().mean()
            loss = loss + cfg.interface_weight * inter
        loss.backward()
        opt.step()
        sched.step()
        history.append({"loss": float(loss.detach()), "data": float(data.detach()), "interface": float(inter.detach())})
        if progress is not None:
            progress(history[-1])
    if cfg.lm_steps:
        history += _lm_finish(field, I, h0, origin, (h, w), pairs, cfg, psi, gen, progress)
    out, seam = _stitch_and_measure(field, h0, wins, pairs, cfg.scale_um)
    report = {"seconds": time.perf_counter() - t0, "patches": K, "window": (h, w), "pairs": len(pairs),
              "history": history, **seam}
    return out, report


def _sample_pixels(origin: Tensor, size: tuple[int, int], n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """n random pixels per window: local (x, y) inputs (K, n, 2) and global rows, cols (K, n)."""
    K, (h, w) = origin.shape[0], size
    ys = torch.randint(0, h, (K, n), generator=gen)
    xs = torch.randint(0, w, (K, n), generator=gen)
    return torch.stack([xs, ys], -1).double(), ys + origin[:, 1:].long(), xs + origin[:, :1].long()


def _misfit(height: Tensor, measured: Tensor, psi: PSIConfig) -> Tensor:
    """(C, K, n) bucket misfits in units of B of heights (K, n) against ``measured`` (C, K, n)."""
    K = height.shape[0]
    return (render_torch(height.reshape(1, 1, K, -1), psi)[0] - measured) / psi.B


def _data_loss(field: PatchField, I: Tensor, h0: Tensor, origin: Tensor, size: tuple[int, int],
               cfg: PatchRefineConfig, psi: PSIConfig, gen: torch.Generator) -> Tensor:
    xy, gy, gx = _sample_pixels(origin, size, cfg.samples, gen)
    height = h0[gy, gx] + cfg.scale_um * field(xy)  # (K, n)
    return _misfit(height, I[:, gy, gx].double(), psi).square().mean()


class CoupledLeastSquares:
    """The refinement loss on fixed samples, as one least-squares problem over every patch.

    The data residuals of window k depend on δ_k alone, an overlap's gaps on δ_p and δ_q:
    the Gauss–Newton matrix JᵀJ is assembled block by block (K·P square, P parameters per
    patch) and J itself is never formed. ``loss()`` and ``normal()`` are what
    :meth:`LevenbergMarquardt.step_normal` asks for.
    """

    def __init__(self, field: PatchField, I: Tensor, h0: Tensor, origin: Tensor, size: tuple[int, int],
                 pairs: list, cfg: PatchRefineConfig, psi: PSIConfig, gen: torch.Generator) -> None:
        K = origin.shape[0]
        self.xy, gy, gx = _sample_pixels(origin, size, cfg.lm_samples, gen)
        self.field, self.cfg, self.psi, self.K = field, cfg, psi, K
        self.base, self.measured = h0[gy, gx].double(), I[:, gy, gx].double()
        self.probes = (_interface_probes(pairs, origin, cfg.lm_interface_samples)
                       if pairs and cfg.interface_weight else None)
        sizes = [v[0].numel() for v in field.params.values()]
        self.P = P = sum(sizes)
        # for each entry of the stacked parameters in their flat order (parameter-major, as
        # the optimiser updates them) its column k·P + j in the patch-major assembly
        self.order = torch.cat([(torch.arange(K)[:, None] * P + off + torch.arange(n)[None]).reshape(-1)
                                for off, n in zip(np.cumsum([0, *sizes[:-1]]).tolist(), sizes)])

    def _residuals(self, delta: Tensor) -> Tensor:
        """(C, K, n) bucket misfits in units of B at the fixed pixels."""
        return _misfit(self.base + self.cfg.scale_um * delta, self.measured, self.psi)

    @torch.no_grad()
    def loss(self) -> float:
        loss = float(self._residuals(self.field(self.xy)).square().mean())
        if self.probes is not None:
            loss += self.cfg.interface_weight * float(_interface_gaps(self.field, self.probes, self.cfg.scale_um)
                                                      .square().mean())
        return loss

    def normal(self) -> tuple[float, Tensor, Tensor]:
        """(loss, Jᵀr, JᵀJ) at the current parameters, columns in the optimiser's order."""
        K, P, s, w = self.K, self.P, self.cfg.scale_um, self.cfg.interface_weight
        A = torch.zeros(K * P, K * P, dtype=torch.float64)
        g = torch.zeros(K * P, dtype=torch.float64)
        with torch.no_grad():
            delta = self.field(self.xy)
            r = self._residuals(delta)
            dr = torch.func.jvp(self._residuals, (delta,), (torch.ones_like(delta),))[1]  # ∂r/∂δ, pointwise
        loss, c = float(r.square().mean()), 1.0 / r.numel()
        for k in range(K):
            J = _jacobian(self.field, k, self.xy[k])
            blk = slice(k * P, (k + 1) * P)
            A[blk, blk] += c * J.T @ (dr[:, k].square().sum(0)[:, None] * J)
            g[blk] += c * J.T @ (r[:, k] * dr[:, k]).sum(0)
        if self.probes is not None:
            inputs, at_p, at_q = self.probes
            _, slots, _, n, _ = inputs.shape
            with torch.no_grad():
                gaps = _interface_gaps(self.field, self.probes, s)  # (pairs, 3, n)
            loss, c = loss + w * float(gaps.square().mean()), w / gaps.numel()
            jac = [_jacobian(self.field, k, inputs[k].reshape(-1, 2)).reshape(slots, 3, n, P) for k in range(K)]
            for i in range(len(at_p)):
                (p, sp), (q, sq) = at_p[i].tolist(), at_q[i].tolist()
                # the gap rows: value, x and y forward differences, as _interface_gaps takes them
                Rp, Rq = (s * torch.cat([j[0], j[1] - j[0], j[2] - j[0]]) for j in (jac[p][sp], jac[q][sq]))
                bp, bq, gap = slice(p * P, (p + 1) * P), slice(q * P, (q + 1) * P), gaps[i].reshape(-1)
                cross = c * Rp.T @ Rq
                A[bp, bp] += c * Rp.T @ Rp
                A[bq, bq] += c * Rq.T @ Rq
                A[bp, bq] -= cross
                A[bq, bp] -= cross.T
                g[bp] += c * Rp.T @ gap
                g[bq] -= c * Rq.T @ gap
        return loss, g[self.order], A[self.order][:, self.order]


def _lm_finish(field: PatchField, I: Tensor, h0: Tensor, origin: Tensor, size: tuple[int, int], pairs: list,
               cfg: PatchRefineConfig, psi: PSIConfig, gen: torch.Generator, progress: Any) -> list[dict[str, float]]:
    problem = CoupledLeastSquares(field, I, h0, origin, size, pairs, cfg, psi, gen)
    opt = LevenbergMarquardt(list(field.params.values()))
    history = []
    for _ in range(cfg.lm_steps):
        step = opt.step_normal(problem.normal, problem.loss)
        history.append({"loss": step.loss, "lm": 1.0})
        if progress is not None:
            progress(history[-1])
        if not step.moved:
            break
    return history


def _jacobian(field: PatchField, k: int, xy: Tensor) -> Tensor:
    """(n, P): ∂δ_k/∂θ_k at window k's local points ``xy`` (n, 2)."""
    params = {n: v[k].detach() for n, v in field.params.items()}
    buffers = {n: v[k] for n, v in field.buffers.items()}

    def one(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(field.base, (p, buffers), (x[None],))[0, 0]

    g = vmap(grad(one), in_dims=(None, 0), chunk_size=4096)(params, xy)
    return torch.cat([g[n].reshape(len(xy), -1) for n in params], 1)


def _slots(pairs: list, k: int) -> tuple[int, Tensor, Tensor]:
    """Each window evaluates the points of the pairs it belongs to, in its own slots: the
    number of slots per window, and for each pair the (window, slot) of p and of q."""
    used = [0] * k
    where = []
    for p, q, _ in pairs:
        where.append(((p, used[p]), (q, used[q])))
        used[p] += 1
        used[q] += 1
    return max(used), torch.tensor([w[0] for w in where]), torch.tensor([w[1] for w in where])


def _interface_points(pairs: list, n: int) -> Tensor:
    """A fixed, strided grid of about n pixels on each overlap (the same every step: sampled
    afresh, the interface gradient's noise swamped Adam's step for the data term)."""
    out = []
    for _, _, (r0, r1, c0, c1) in pairs:
        stride = max(1, int(math.sqrt((r1 - r0 - 1) * (c1 - c0 - 1) / n)))
        yy, xx = torch.meshgrid(torch.arange(r0, r1 - 1, stride), torch.arange(c0, c1 - 1, stride), indexing="ij")
        out.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], -1))
    m = min(len(o) for o in out)  # equal counts per pair (a batched call); boxes are alike
    return torch.stack([o[:m] for o in out]).double()


def _interface_probes(pairs: list, origin: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Every window's local inputs (K, slots, 3, n, 2) for the overlaps it belongs to, at
    (x, y), (x+1, y) and (x, y+1) (forward differences give the pixel gradient), and for each
    pair the (window, slot) of p and of q. Fixed for the whole run: built once."""
    K = origin.shape[0]
    slots, at_p, at_q = _slots(pairs, K)
    pts = _interface_points(pairs, n)  # (P, n, 2) global (x, y)
    probe = torch.stack([pts, pts + torch.tensor([1.0, 0.0]), pts + torch.tensor([0.0, 1.0])], 1)  # (P, 3, n, 2)
    inputs = torch.zeros(K, slots, *probe.shape[1:], dtype=torch.float64)
    inputs[at_p[:, 0], at_p[:, 1]] = probe - origin[at_p[:, 0]][:, None, None]
    inputs[at_q[:, 0], at_q[:, 1]] = probe - origin[at_q[:, 0]][:, None, None]
    return inputs, at_p, at_q


def _interface_gaps(field: PatchField, probes: tuple[Tensor, Tensor, Tensor], scale: float) -> Tensor:
    """(P, 3, n): on each overlap's pixels, the gap in height (µm) and in its x and y pixel
    gradients (µm/px) between the two patches."""
    inputs, at_p, at_q = probes
    K, slots, _, n, _ = inputs.shape
    vals = field(inputs.reshape(K, -1, 2)).reshape(K, slots, 3, n)
    d = scale * (vals[at_p[:, 0], at_p[:, 1]] - vals[at_q[:, 0], at_q[:, 1]])  # (P, 3, n)
    return torch.stack([d[:, 0], d[:, 1] - d[:, 0], d[:, 2] - d[:, 0]], 1)  # value, x and y gradient gaps


@torch.no_grad()
def _stitch_and_measure(field: PatchField, h0: Tensor, wins: list[Window], pairs: list,
                        scale: float) -> tuple[np.ndarray, dict[str, float]]:
    H, W = h0.shape
    out = np.empty((H, W), np.float32)
    nets = field.export()

    def height(k: int, r0: int, r1: int, c0: int, c1: int) -> Tensor:
        yy, xx = torch.meshgrid(torch.arange(r0, r1, dtype=torch.float64), torch.arange(c0, c1, dtype=torch.float64),
                                indexing="ij")
        xy = torch.stack([xx.reshape(-1) - wins[k].c0, yy.reshape(-1) - wins[k].r0], 1)
        delta = torch.cat([nets[k](chunk)[:, 0] for chunk in xy.split(1 << 16)])
        return h0[r0:r1, c0:c1] + scale * delta.reshape(r1 - r0, c1 - c0)

    for k, win in enumerate(wins):
        r0, r1, c0, c1 = win.core
        out[r0:r1, c0:c1] = height(k, r0, r1, c0, c1).numpy()
    sq, count, worst = 0.0, 0, 0.0
    for p, q, box in pairs:
        diff = height(p, *box) - height(q, *box)
        sq += float(diff.square().sum())
        count += diff.numel()
        worst = max(worst, float(diff.abs().max()))
    rms_h = float(np.sqrt(np.mean(out.astype(np.float64) ** 2)))
    seam_rms = math.sqrt(sq / count) if count else 0.0
    return out, {"seam_rms_um": seam_rms, "seam_max_um": worst, "seam_l2": seam_rms / rms_h}
