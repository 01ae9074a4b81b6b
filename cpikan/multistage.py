"""Multi-stage training (Wang & Lai, J. Comput. Phys. 2024): each stage fits what the stages
before it left, so the sum of small networks approaches float64 precision.

Stage 1 is an ordinary PINN run (``base``). Stage k+1 is a new network N_{k+1}, frozen
stages in front of it, trained on the *same* problem: the solution is
u = Σ_i ε_i·N_i, and only N_{k+1} moves, so every residual the problem defines (PDE,
boundary, initial, data) is the residual left by stages 1..k. Two measurements set the new
stage up, because a network initialised to output O(1) values at its own frequencies
cannot learn a 1e-6 correction that oscillates ten times faster:
- its output scale ε_{k+1}: the RMS of the problem's normalised residuals (every term)
  left by stages 1..k, on fresh points;
- its input frequency: Fourier features with σ from the dominant frequency of that
  residual's spectrum (:func:`dominant_frequency`), when ``fourier_features > 0``.
Each stage ends with Levenberg–Marquardt in float64 on freshly sampled collocation points
(a new seed per stage, so the error measured on the fixed evaluation grid falls, not only
the training residual).

``stage_kind="spectral"`` makes the stages after the first a tensor-product Chebyshev
expansion (:class:`cpikan.nn.TensorChebyshev`, ``spectral_degrees`` per coordinate) instead:
linear in its coefficients, fitted by Gauss–Newton with a QR least-squares solve
(:mod:`cpikan.train.linear_fit`) on Chebyshev-distributed points, ``spectral_points`` per
coefficient. A small KAN stage cannot represent the broadband error a tanh-squashed stage 1
leaves on a 2-D or 3-D problem (docs/domain.md, multi-stage); this basis can, at a degree
the residual's resolution sets. Training stops at ``stages``, when the residual RMS is below
``tol``, or when a stage gains less than ``min_gain``× on it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cpikan import diff
from cpikan.config import bounded, canonical_json, choice, validate
from cpikan.experiment import PINNConfig, build, build_model
from cpikan.nn.tensor_chebyshev import BASES as CHEBYSHEV_BASES
from cpikan.nn.tensor_chebyshev import TensorChebyshev
from cpikan.pde import Collocation, Problem
from cpikan.train import Callback, Trainer, TrainResult
from cpikan.train.linear_fit import fit_linear
from cpikan.train.lm import SOLVERS as LM_SOLVERS


@dataclass
class MultiStageConfig:
    base: PINNConfig = field(default_factory=PINNConfig)  # stage 1: problem, model, trainer
    stages: int = bounded(3, ge=1, le=12)
    hidden: tuple[int, ...] = (16, 16)  # stages ≥ 2
    degree: int = bounded(8, ge=1, le=64)
    fourier_features: int = bounded(0, ge=0)  # stages ≥ 2; 0: plain Chebyshev input
    sigma: float = bounded(0.0, ge=0)  # Fourier σ (cycles per unit of x̂ ∈ [-1, 1]); 0: from the spectrum
    adam_steps: int = bounded(0, ge=0)  # stages ≥ 2
    lm_steps: int = bounded(300, ge=0)  # stages ≥ 2
    lm_solver: str = choice("svd", LM_SOLVERS, before="cholesky")  # stages ≥ 2 (stage 1: base.train.lm_solver)
    points_factor: float = bounded(1.0, gt=0)  # interior points of stage k: base × factor^(k−1)
    #: stages ≥ 2 (empty: the base's for network stages, 1 per term for spectral ones, which
    #: solve every term to the last digits). A weight chosen for stage 1's Adam phase can
    #: starve a later stage of the term it must fix (see docs/domain.md, multi-stage diffusion)
    loss_weights: dict[str, float] = field(default_factory=dict)
    #: stages ≥ 2: "network" (a Scaled-cPIKAN trained as above) or "spectral" (see the module doc)
    stage_kind: str = choice("network", ("network", "spectral"))
    spectral_degrees: tuple[int, ...] = ()  # per coordinate; () with "spectral": refused
    spectral_basis: str = choice("tensor", CHEBYSHEV_BASES)  # which multi-indices (TensorChebyshev)
    spectral_points: float = bounded(3.0, ge=1)  # collocation points per coefficient
    tol: float = bounded(1e-13, ge=0)  # stop when the residual RMS falls below
    min_gain: float = bounded(1.5, ge=1)  # stop when a stage lowers it by less than this factor

    def __post_init__(self) -> None:
        if isinstance(self.base, dict):
            self.base = PINNConfig.from_dict(self.base)
        self.hidden = tuple(int(h) for h in self.hidden)
        self.spectral_degrees = tuple(int(d) for d in self.spectral_degrees)
        validate(self)
        if self.base.time_windows != 1:  # each stage fits the whole span's residual
            raise ValueError(f"base.time_windows: multi-stage training fits one network per stage over the whole "
                             f"span; allowed: 1, got {self.base.time_windows}")
        if self.stage_kind == "spectral" and (not self.spectral_degrees or min(self.spectral_degrees) < 1):
            raise ValueError("spectral_degrees: one degree ≥ 1 per coordinate is needed with stage_kind "
                             f"'spectral', got {self.spectral_degrees}")

    def to_json(self) -> str:
        return canonical_json(self)

    @classmethod
    def from_json(cls, text: str) -> MultiStageConfig:
        import json

        return cls(**json.loads(text))


class StagedModel(nn.Module):
    """u = Σ_i scale_i · stage_i(x); values and jet derivatives add linearly."""

    def __init__(self, stages: Sequence[nn.Module] = (), scales: Sequence[float] = ()) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.register_buffer("scales", torch.tensor(list(scales), dtype=torch.float64))

    def add(self, stage: nn.Module, scale: float) -> None:
        for m in self.stages:
            m.requires_grad_(False)
        self.stages.append(stage)
        self.scales = torch.cat([self.scales, torch.tensor([scale], dtype=torch.float64)])

    def drop_last(self) -> None:
        """Remove the newest stage (one that made the residual worse)."""
        del self.stages[-1]
        self.scales = self.scales[:-1].clone()

    def forward(self, x: Tensor) -> Tensor:
        return sum(s * m(x) for s, m in zip(self.scales.tolist(), self.stages))  # type: ignore[return-value]

    def derivatives(self, x: Tensor) -> diff.Derivatives:
        parts = [(s, m.derivatives(x)) for s, m in zip(self.scales.tolist(), self.stages)]
        return diff.Derivatives(sum(s * d.u for s, d in parts), sum(s * d.du for s, d in parts),  # type: ignore[arg-type]
                                sum(s * d.d2u for s, d in parts))  # type: ignore[arg-type]


@dataclass(frozen=True)
class StageResult:
    stage: int
    scale: float  # ε: the residual RMS the stage started from (its output scale)
    sigma: float  # Fourier σ of its input (0: none)
    frequency: float  # dominant frequency of the residual it was given (cycles per unit of x̂)
    residual_rms: float  # after the stage, on fresh points
    rel_l2: float  # the sum so far, on the problem's evaluation grid
    seconds: float
    steps: int
    spectrum: tuple[tuple[float, ...], tuple[float, ...]]  # (frequencies, power) of its input residual
    losses: tuple[float, ...]  # the stage's training loss per step (the residual tracker)
    kept: bool = True  # False: it left a larger residual than it was given, and was removed


def residual_rms(problem: Problem, model: nn.Module, batch: Collocation) -> float:
    """RMS over every term's normalised residuals (PDE and conditions together)."""
    with torch.no_grad():
        res = torch.cat([t.residuals(model).reshape(-1) for t in problem.terms(batch).values()])
    return float(res.square().mean().sqrt())


def spectrum_grid(problem: Problem, n: int | None = None) -> tuple[Tensor, int]:
    """A uniform grid over the domain for spectra: (points, points per axis)."""
    n = n or (1025 if problem.dim == 1 else 129 if problem.dim == 2 else 33)
    axes = [torch.linspace(a, b, n, dtype=torch.float64) for a, b in zip(problem.lo, problem.hi)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, problem.dim), n


def residual_spectrum(values: np.ndarray, dim: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(frequency in cycles per unit of x̂ ∈ [-1, 1], power) of a field sampled on an n^dim
    uniform grid: a Hann-windowed FFT along each axis, power averaged over the others and
    summed over axes (so a wave along any axis shows at its own frequency)."""
    field = np.asarray(values, dtype=np.float64).reshape((n,) * dim)
    window = np.hanning(n)
    power = np.zeros(n // 2 + 1)
    for axis in range(dim):
        f = np.moveaxis(field, axis, -1)
        f = (f - f.mean(axis=-1, keepdims=True)) * window
        p = np.abs(np.fft.rfft(f, axis=-1)) ** 2
        power += p.reshape(-1, p.shape[-1]).mean(0)
    freq = np.fft.rfftfreq(n, d=2.0 / (n - 1))  # x̂ spacing: 2 / (n − 1)
    return freq, power


def dominant_frequency(freq: np.ndarray, power: np.ndarray) -> float:
    """The frequency holding the most power, DC and the window's leakage bin excluded."""
    if len(power) < 3 or not np.isfinite(power).all() or power[2:].max() <= 0:
        return 0.0
    return float(freq[2 + int(np.argmax(power[2:]))])


def pde_residual_on(problem: Problem, model: nn.Module, pts: Tensor) -> np.ndarray:
    with torch.no_grad():
        term = problem.terms(Collocation(pts.to(next(model.parameters()).dtype)))["pde"]
        return term.residuals(model).double().numpy()


def spectral_batch(problem: Problem, stage: TensorChebyshev, per_coefficient: float, seed: int) -> Collocation:
    """Chebyshev-distributed collocation for a spectral stage: interior points
    ``per_coefficient`` × its coefficients, each face (and the initial line) as many times
    the coefficients its trace there keeps (the k with k_j = 0). Polynomial least squares on
    uniform points needs ~degree² points per axis to stay stable; on the Chebyshev density a
    few per coefficient do."""
    if len(stage.degrees) != problem.dim:
        raise ValueError(f"spectral_degrees: one degree per coordinate of {problem.name!r} "
                         f"({', '.join(problem.coords)}), got {stage.degrees}")
    trace = [int((stage.index[:, j] == 0).sum()) for j in range(problem.dim)]
    space = problem.dim - 1 if problem.time_dependent else problem.dim
    local = copy.copy(problem)  # the stage's point counts and sampler, not the problem's
    local.sampler = "chebyshev"
    local.n_interior = math.ceil(per_coefficient * stage.n_features)
    local.n_boundary = math.ceil(per_coefficient * 2 * sum(trace[:space])) if problem.n_boundary else 0
    local.n_initial = math.ceil(per_coefficient * trace[-1]) if problem.n_initial else 0
    return local.sample(torch.Generator().manual_seed(seed)).to(torch.float64)


def train_multistage(cfg: MultiStageConfig, callbacks: Sequence[Callback] = (),
                     on_stage: Any = None) -> tuple[StagedModel, Problem, list[StageResult]]:
    """Train stage 1 from ``cfg.base``, then add stages until a stopping rule holds.

    A stage that leaves a larger residual (on fresh points) than it was given is removed
    from the returned model and reported with ``kept=False``; the last kept stage's
    ``rel_l2`` is the returned model's.

    Args:
        cfg: the stage-1 experiment and the rules for the stages after it.
        callbacks: trainer hooks, given to every stage's trainer.
        on_stage: called with each :class:`StageResult` as it finishes (logging).
    """
    problem, first = build(cfg.base)
    if problem.outputs > 1:
        raise ValueError(f"base.problem: multi-stage training fits the spectrum of one equation's residual; "
                         f"{problem.name!r} is a system of {problem.outputs} fields (train it as one stage)")
    model = StagedModel()
    model.add(first, 1.0)
    grid, n = spectrum_grid(problem)
    results: list[StageResult] = []
    start_rms = math.inf
    for k in range(1, cfg.stages + 1):
        t0 = time.perf_counter()
        train_cfg = cfg.base.train if k == 1 else replace(
            cfg.base.train, adam_steps=cfg.adam_steps, lbfgs_steps=0, lm_steps=cfg.lm_steps, lm_solver=cfg.lm_solver,
            seed=cfg.base.train.seed + k - 1, loss_weights=cfg.loss_weights or cfg.base.train.loss_weights)
        freq, power, f_dom, sigma, scale = np.zeros(0), np.zeros(0), 0.0, 0.0, 1.0
        if k > 1:
            freq, power = residual_spectrum(pde_residual_on(problem, model, grid), problem.dim, n)
            f_dom = dominant_frequency(freq, power)
            probe = problem.sample(torch.Generator().manual_seed(10_000 + k)).to(torch.float64)
            scale = residual_rms(problem, model, probe)
            if scale <= cfg.tol:
                break
            start_rms = scale
            if cfg.stage_kind == "network":
                sigma = (cfg.sigma or max(f_dom, 0.5)) if cfg.fourier_features else 0.0
                mcfg = replace(cfg.base.model, hidden=cfg.hidden, degree=cfg.degree,
                               fourier_features=cfg.fourier_features, fourier_sigma=sigma or 1.0)
                problem.n_interior = max(1, round(problem.n_interior * cfg.points_factor))
                model.add(build_model(mcfg, problem, train_cfg.seed), scale)
            else:
                model.add(TensorChebyshev(problem.lo, problem.hi, cfg.spectral_degrees, cfg.spectral_basis), scale)
        if k > 1 and cfg.stage_kind == "spectral":
            batch = spectral_batch(problem, model.stages[-1], cfg.spectral_points, train_cfg.seed)
            terms = problem.terms(batch)
            losses = fit_linear(model, model.stages[-1], scale, terms,
                                {t: cfg.loss_weights.get(t, 1.0) for t in terms})
            steps = len(losses) - 1
        else:
            res: TrainResult = Trainer(model, problem, train_cfg, callbacks).fit()
            losses, steps = list(res.losses), res.steps
        probe = problem.sample(torch.Generator().manual_seed(20_000 + k)).to(torch.float64)
        rms = residual_rms(problem, model, probe)
        rel = problem.evaluate(model)["rel_l2"]
        worse = k > 1 and rms >= start_rms
        if worse:  # the sum before it was better: return that one, and say so
            model.drop_last()
        out = StageResult(k, scale, sigma, f_dom, rms, rel, time.perf_counter() - t0, steps,
                          (tuple(freq.tolist()), tuple(power.tolist())), tuple(losses), kept=not worse)
        results.append(out)
        if on_stage is not None:
            on_stage(out)
        if rms <= cfg.tol or (k > 1 and rms * cfg.min_gain > start_rms):
            break
    return model, problem, results


__all__ = ["MultiStageConfig", "StageResult", "StagedModel", "dominant_frequency", "residual_spectrum",
           "train_multistage"]
