"""Domain decomposition (XPINN style): one Scaled-cPIKAN per subdomain, trained as one
least-squares problem whose expensive parts run in parallel, one process per subdomain group.

The domain is cut into ``parts`` strips along one axis. Strip i has its own network, the
problem's collocation points that fall in it (the same points a single-domain solve with the
same seed uses), and the interface points it shares with its neighbours, where two terms
couple the networks: the value gap u_i − u_{i+1} and the normal-derivative gap (scaled by the
strip width). The joint loss is the single-domain loss plus those gaps.

- Adam: the joint loss's gradient with respect to network i needs only its neighbours'
  interface values, exchanged each step (one all-reduce of parts × 2 × 2 × n numbers).
- Levenberg–Marquardt: the damped normal matrix is block-diagonal plus a low-rank coupling,
  H + μD = blockdiag(M_i) + BᵀB with B the k = 2n(parts − 1) interface rows. Woodbury solves
  it exactly: one Cholesky of each M_i on the process that owns strip i, and one k × k
  capacitance system summed by one all-reduce. The step is the joint LM step (what one
  process holding every network would take), not an alternating-Schwarz approximation; its
  cost per process falls with the cube of the strip's parameter count.

Every process runs the same damping decisions on all-reduced losses, so they stay in step.
With a world of one (no ``torchrun``, or ``Shard()``) the same code trains every strip here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from cpikan.config import bounded, canonical_json, validate
from cpikan.distributed import Shard, reduce_sum
from cpikan.nn.chebykan import ScaledCPIKAN
from cpikan.pde.base import Collocation, Problem, Term
from cpikan.train.lm import ResidualJacobian, add_flat, nielsen

LEFT, RIGHT = 0, 1


@dataclass
class XPINNConfig:
    """Strips, their networks and the training budget (Adam, then joint LM)."""

    parts: int = bounded(2, ge=2)
    axis: int = bounded(0, ge=0)
    hidden: tuple[int, ...] = (8, 8)
    degree: int = bounded(8, ge=1, le=64)
    n_interface: int = bounded(100, ge=1)
    adam_steps: int = bounded(1000, ge=0)
    lr: float = bounded(1e-2, gt=0)
    lr_final_factor: float = bounded(0.01, gt=0)
    lm_steps: int = bounded(500, ge=0)
    lm_damping: float = bounded(1e-3, gt=0)
    loss_weights: dict[str, float] = field(
        default_factory=lambda: {"pde": 1.0, "bc": 10.0, "interface": 0.1, "flux": 0.01})
    seed: int = 0

    def __post_init__(self) -> None:
        validate(self)
        self.hidden = tuple(int(h) for h in self.hidden)

    def to_json(self) -> str:
        return canonical_json(self)


class Strip:
    """One subdomain: its network, its own loss terms and its interface faces."""

    def __init__(self, index: int, model: nn.Module, terms: dict[str, Term],
                 faces: dict[int, Tensor], axis: int, width: float) -> None:
        self.index, self.model, self.terms, self.faces = index, model, terms, faces
        self.axis, self.width = axis, width
        self.params = [p for p in model.parameters() if p.requires_grad]

    def face_values(self, grad: bool) -> dict[int, Tensor]:
        """(2, n): value and width-scaled normal derivative on each interface face."""
        with torch.set_grad_enabled(grad):
            out = {}
            for side, pts in self.faces.items():
                d = self.model.derivatives(pts)
                out[side] = torch.stack([d.u[:, 0], self.width * d.dx(self.axis)])
            return out


def _cuts(problem: Problem, parts: int, axis: int) -> list[float]:
    lo, hi = problem.lo[axis], problem.hi[axis]
    return [lo + (hi - lo) * i / parts for i in range(parts + 1)]


def _owner(x: Tensor, cuts: list[float], axis: int) -> Tensor:
    """The strip each point falls in (a point on a cut goes to the strip on its left)."""
    inner = torch.tensor(cuts[1:-1], dtype=x.dtype)
    return torch.searchsorted(inner, x[:, axis].contiguous(), right=False)


class XPINN:
    """``parts`` strips of ``problem``; this process trains the strips ``shard`` owns
    (contiguous blocks: parts must be a multiple of the world size)."""

    def __init__(self, problem: Problem, config: XPINNConfig, shard: Shard | None = None) -> None:
        shard = shard or Shard()
        if problem.outputs > 1:  # its interfaces match one field's value and flux
            raise ValueError(f"problem: {problem.name!r} is a system of {problem.outputs} fields; the strips' "
                             "interfaces match one field (train it on one domain)")
        if config.axis >= problem.dim:
            raise ValueError(f"axis: must be < the problem's {problem.dim} dimensions, got {config.axis}")
        if config.parts % shard.world:
            raise ValueError(f"parts: must be a multiple of the {shard.world} processes, got {config.parts}")
        missing = {"pde", "interface", "flux"} - set(config.loss_weights)
        if missing:
            raise ValueError(f"loss_weights: missing {sorted(missing)}")
        self.problem, self.config, self.shard = problem, config, shard
        self.cuts = _cuts(problem, config.parts, config.axis)
        gen = torch.Generator().manual_seed(config.seed)
        batch = problem.sample(gen).to(torch.float64)
        self.faces = self._interface_points(gen)
        self.n_terms = {"pde": len(batch.interior),
                        **{k: len(p) for k, (p, _) in batch.conditions.items()}}
        per = config.parts // shard.world
        self.strips = [self._strip(i, batch) for i in range(shard.rank * per, (shard.rank + 1) * per)]
        n, k = config.n_interface, config.parts - 1
        self.k = 2 * n * k
        self.gap_scale = {"interface": math.sqrt(config.loss_weights["interface"] / (n * k)),
                          "flux": math.sqrt(config.loss_weights["flux"] / (n * k))}
        #: (2, 1): multiplies a (2, n) stack of value and derivative gaps
        self._gap_scales = torch.tensor([[self.gap_scale["interface"]], [self.gap_scale["flux"]]],
                                        dtype=torch.float64)

    # -- set-up ------------------------------------------------------------------------
    def _interface_points(self, gen: torch.Generator) -> list[Tensor]:
        out = []
        for c in self.cuts[1:-1]:
            pts = self.problem.sample_interior(self.config.n_interface, gen).to(torch.float64)
            pts[:, self.config.axis] = c
            out.append(pts)
        return out

    def _strip(self, i: int, batch: Collocation) -> Strip:
        cfg, p, ax = self.config, self.problem, self.config.axis
        lo, hi = list(p.lo), list(p.hi)
        lo[ax], hi[ax] = self.cuts[i], self.cuts[i + 1]
        model = ScaledCPIKAN([p.dim, *cfg.hidden, 1], cfg.degree, lo, hi, dtype=torch.float64,
                             seed=cfg.seed + i)
        # the problem's u = 0 faces stay exact; across the cut axis only the strip's outer face
        model.zero_faces = tuple(f for f in p.zero_faces if f != ax)
        if ax in p.zero_faces:
            model.zero_ends = ((ax, -1),) * (i == 0) + ((ax, 1),) * (i == cfg.parts - 1)
        mine = Collocation(batch.interior[_owner(batch.interior, self.cuts, ax) == i], {})
        for name, (pts, vals) in batch.conditions.items():
            keep = _owner(pts, self.cuts, ax) == i
            if name == "bc":  # points on exactly imposed faces add nothing
                for f in p.zero_faces:
                    keep &= (pts[:, f] != p.lo[f]) & (pts[:, f] != p.hi[f])
            mine.conditions[name] = (pts[keep], vals[keep])
        terms = {k: t for k, t in p.terms(mine).items() if len(t)}
        unknown = set(terms) - set(cfg.loss_weights)
        if unknown:
            raise ValueError(f"loss_weights: no weight for the problem's terms {sorted(unknown)}")
        faces = {}
        if i > 0:
            faces[LEFT] = self.faces[i - 1]
        if i < cfg.parts - 1:
            faces[RIGHT] = self.faces[i]
        return Strip(i, model, terms, faces, ax, hi[ax] - lo[ax])

    def _scale(self, name: str) -> float:
        """√(w/N) with N the term's count over the whole domain: the joint loss is the
        single-domain loss plus the interface gaps."""
        n = self.n_terms.get(name, 1)
        return math.sqrt(self.config.loss_weights[name] / n)

    # -- the interface, exchanged ------------------------------------------------------
    def _all_faces(self, grad: bool) -> tuple[Tensor, dict[int, dict[int, Tensor]]]:
        """Every strip's face values (parts, 2 sides, 2 quantities, n), summed over processes,
        and this process's own (with graph when ``grad``)."""
        table = torch.zeros(self.config.parts, 2, 2, self.config.n_interface, dtype=torch.float64)
        mine = {}
        for s in self.strips:
            mine[s.index] = s.face_values(grad)
            for side, v in mine[s.index].items():
                table[s.index, side] = v.detach()
        return table, mine

    def _gap_rows(self, e: int) -> slice:
        n2 = 2 * self.config.n_interface
        return slice(e * n2, (e + 1) * n2)

    def _gaps(self, table: Tensor) -> Tensor:
        """The k scaled interface residuals: per interface, n value gaps then n flux gaps."""
        gap = table[:-1, RIGHT] - table[1:, LEFT]  # (parts − 1, 2, n)
        return (gap * self._gap_scales).reshape(-1)

    def _own_loss(self, s: Strip) -> Tensor:
        return sum(self._scale(k) ** 2 * t.residuals(s.model).square().sum() for k, t in s.terms.items())

    @torch.no_grad()
    def loss(self) -> float:
        """The joint loss (the same number on every process)."""
        table, _ = self._all_faces(grad=False)
        own = torch.stack([self._own_loss(s) for s in self.strips]).sum().reshape(1)
        table, own = reduce_sum([table, own], self.shard)
        return float(own[0] + self._gaps(table).square().sum())

    # -- training ----------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        cfg = self.config
        params = [p for s in self.strips for p in s.params]
        if cfg.adam_steps:
            opt = torch.optim.Adam(params, lr=cfg.lr)
            gamma = cfg.lr_final_factor ** (1.0 / cfg.adam_steps)
            sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
            for _ in range(cfg.adam_steps):
                self._adam_step(opt)
                sched.step()
        mu, moved = cfg.lm_damping, True
        for _ in range(cfg.lm_steps):
            mu, moved = self._lm_step(mu)
            if not moved:
                break
        return {"loss": self.loss(), **self.evaluate()}

    def _adam_step(self, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        table, mine = self._all_faces(grad=True)
        (table,) = reduce_sum([table], self.shard)
        loss = torch.zeros((), dtype=torch.float64)
        for s in self.strips:
            loss = loss + self._own_loss(s)
            for side, v in mine[s.index].items():
                other = table[s.index + 1, LEFT] if side == RIGHT else table[s.index - 1, RIGHT]
                loss = loss + ((v - other) * self._gap_scales).square().sum()
        loss.backward()
        opt.step()

    def _linearize(self, s: Strip) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Own residuals r, their Jacobian J, and the strip's interface rows of B (k_s × P)
        with their positions in the k-vector."""
        terms = dict(s.terms)
        for side, pts in s.faces.items():
            terms[f"value{side}"] = Term(lambda m, x: m(x)[:, 0], (pts,))
            terms[f"flux{side}"] = Term(lambda m, x, w=s.width: w * m.derivatives(x).dx(s.axis), (pts,))
        weights = {k: (self._scale(k) ** 2 * len(t) if k in s.terms else float(len(t)))
                   for k, t in terms.items()}
        r, J = ResidualJacobian(s.model, self.problem, s.params)(terms, weights)
        n_own = sum(len(t) for t in s.terms.values())
        n = self.config.n_interface
        rows, B = [], J[n_own:].clone()
        for j, side in enumerate(s.faces):
            e = s.index if side == RIGHT else s.index - 1
            sign = 1.0 if side == RIGHT else -1.0
            blk = B[2 * n * j : 2 * n * (j + 1)]
            blk[:n] *= sign * self.gap_scale["interface"]
            blk[n:] *= sign * self.gap_scale["flux"]
            rows.append(torch.arange(self._gap_rows(e).start, self._gap_rows(e).stop))
        return r[:n_own], J[:n_own], B, torch.cat(rows)

    @torch.no_grad()
    def _lm_step(self, mu: float) -> tuple[float, bool]:
        """One joint LM step (every process the same decisions); the next damping, and whether
        the loss fell."""
        lin = {s.index: self._linearize(s) for s in self.strips}
        table, _ = self._all_faces(grad=False)
        own = torch.stack([lin[s.index][0].square().sum() for s in self.strips]).sum().reshape(1)
        table, own = reduce_sum([table, own], self.shard)
        rB = self._gaps(table)
        loss = float(own[0] + rB.square().sum())
        pre = {}
        for s in self.strips:
            r, J, B, rows = lin[s.index]
            g = J.T @ r + B.T @ rB[rows]
            H = J.T @ J
            diag = (H.diagonal() + B.square().sum(0)).clamp_min(1e-300)
            pre[s.index] = (g, H, diag)
        base = {s.index: [p.detach().clone() for p in s.params] for s in self.strips}
        nu = 2.0
        for _ in range(30):
            delta, predicted = self._solve(lin, pre, mu)
            if delta is not None:
                for s in self.strips:
                    add_flat(s.params, base[s.index], delta[s.index])
                new = self.loss()
                if math.isfinite(new) and new < loss:
                    return nielsen(mu, loss, new, predicted), True
                for s in self.strips:
                    for p, b in zip(s.params, base[s.index]):
                        p.copy_(b)
            mu, nu = mu * nu, nu * 2.0
        return min(mu, 1e30), False

    def _solve(self, lin: dict, pre: dict, mu: float) -> tuple[dict[int, Tensor] | None, float]:
        """δ = −(blockdiag(M_i) + BᵀB)⁻¹ g by Woodbury, and the predicted fall of the loss."""
        C = torch.zeros(self.k, self.k, dtype=torch.float64)
        b = torch.zeros(self.k, dtype=torch.float64)
        failed = torch.zeros(1, dtype=torch.float64)
        solved = {}
        for s in self.strips:
            _, _, B, rows = lin[s.index]
            g, H, diag = pre[s.index]
            chol, info = torch.linalg.cholesky_ex(H + torch.diag(mu * diag))
            if int(info):
                failed += 1
                continue
            X = torch.cholesky_solve(torch.cat([B.T, g[:, None]], dim=1), chol)
            solved[s.index] = X
            C[rows[:, None], rows[None, :]] += B @ X[:, :-1]
            b[rows] += B @ X[:, -1]
        C, b, failed = reduce_sum([C, b, failed], self.shard)
        if float(failed[0]):
            return None, 0.0
        C.diagonal().add_(1.0)
        chol, info = torch.linalg.cholesky_ex(C)
        if int(info):
            return None, 0.0
        y = torch.cholesky_solve(b[:, None], chol)[:, 0]
        delta, Bd = {}, torch.zeros(self.k, dtype=torch.float64)
        parts = torch.zeros(2, dtype=torch.float64)  # gᵀδ, ‖J_own δ‖²
        for s in self.strips:
            r, J, B, rows = lin[s.index]
            X = solved[s.index]
            d = -(X[:, -1] - X[:, :-1] @ y[rows])
            delta[s.index] = d
            Bd[rows] += B @ d
            parts += torch.stack([pre[s.index][0] @ d, (J @ d).square().sum()])
        parts, Bd = reduce_sum([parts, Bd], self.shard)
        predicted = -(2.0 * float(parts[0]) + float(parts[1]) + float(Bd.square().sum()))
        return delta, predicted

    # -- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """u at ``x`` (N, dim), each point from the strip it falls in (all processes)."""
        x = x.to(torch.float64)
        owner = _owner(x, self.cuts, self.config.axis)
        out = torch.zeros(len(x), dtype=torch.float64)
        for s in self.strips:
            m = owner == s.index
            if m.any():
                out[m] = torch.cat([s.model(c)[:, 0] for c in x[m].split(65536)])
        (out,) = reduce_sum([out], self.shard)
        return out

    def evaluate(self) -> dict[str, float]:
        grid, ref = self.problem.reference_solution()
        pred = self.predict(grid)
        table, _ = self._all_faces(grad=False)
        (table,) = reduce_sum([table], self.shard)
        gap = (table[:-1, RIGHT, 0] - table[1:, LEFT, 0]).abs()
        return {"rel_l2": float(torch.linalg.vector_norm(pred - ref) / torch.linalg.vector_norm(ref)),
                "interface_max_gap": float(gap.max())}


__all__ = ["XPINN", "XPINNConfig"]
