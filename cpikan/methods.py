"""Method options as named changes to a PINN experiment, so that studies (``method_search``)
and ``bench/methods.py`` compare them against the preset on the same problems and seeds.

Each option is a plain config change (nothing here trains); ``transfer`` needs the weights of
a trained source network as well, which the caller supplies (``run_pinn(init_state=…)``):
:func:`transfer_source` says which source problem to train or pick for it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import Tensor

from cpikan.experiment import PINNConfig, run_pinn


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    #: the phase whose behaviour it changes: an option acting on Adam does nothing to an LM-only preset
    acts_on: str
    change: Callable[[PINNConfig], PINNConfig]


def _train(**kw: object) -> Callable[[PINNConfig], PINNConfig]:
    return lambda cfg: replace(cfg, train=replace(cfg.train, **kw))


def _model(**kw: object) -> Callable[[PINNConfig], PINNConfig]:
    return lambda cfg: replace(cfg, model=replace(cfg.model, **kw))


def _deep_ritz(cfg: PINNConfig) -> PINNConfig:
    if cfg.problem != "poisson3d":
        raise ValueError(f"method: 'deep_ritz' needs an energy; allowed for: poisson3d (got {cfg.problem!r})")
    # the energy is not a sum of squares (no LM), and a fixed quadrature sample is over-fitted
    # (L-BFGS on it: 0.19 error; measured): fresh points every Adam step, twice the Adam steps
    train = replace(cfg.train, adam_steps=2 * cfg.train.adam_steps, resample_every=1, lbfgs_steps=0, lm_steps=0)
    return replace(cfg, problem_kwargs={**cfg.problem_kwargs, "loss": "ritz"}, train=train)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("preset", "the problem's tuned preset, unchanged", "all", lambda cfg: cfg),
    Method("config", "ConFIG: conflict-free combination of the loss terms' gradients", "adam",
           _train(balancing="config")),
    Method("lra", "learning-rate annealing of the loss weights (gradient-magnitude balance)", "adam",
           _train(balancing="lra")),
    Method("rar_d", "RAR-D: 100 points drawn by residual every 250 Adam steps", "adam",
           _train(rar_every=250, rar_points=100)),
    Method("vw_rar_d", "RAR-D with volume-weighted residuals (VW-PINNs): crowded points count for less", "all",
           _train(rar_every=250, rar_points=100, volume_weights=True)),
    Method("augmented_lagrangian", "augmented-Lagrangian condition terms: targets move against the "
           "violation every 50 steps", "all", _train(al_every=50)),
    Method("deep_ritz", "Deep Ritz energy instead of the squared residual (Poisson only; Adam on fresh points)",
           "all", _deep_ritz),
    Method("fourier", "a Fourier-feature input layer (16 features, σ = 1) before the Chebyshev layers", "all",
           _model(fourier_features=16, fourier_sigma=1.0)),
    Method("wavelet_kan", "wavelet KAN layers (learned Mexican hats) instead of Chebyshev ones", "all",
           _model(basis="wavelet")),
    Method("transfer", "start from a network trained on a nearby problem (init_from)", "all", lambda cfg: cfg),
)}


def apply(cfg: PINNConfig, method: str) -> PINNConfig:
    """``cfg`` with ``method``'s change; an unknown name is a one-line error listing the allowed."""
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; allowed: {', '.join(METHODS)}")
    return METHODS[method].change(cfg)


#: transfer learning's source per problem: the same problem at a nearby parameter
_SOURCES = {"helmholtz1d": {"k": 3.5 * math.pi}, "helmholtz2d": {"a2": 3.0},
            "diffusion": {"D": 0.05}, "reaction_diffusion": {"D": 0.05}}


def transfer_source(cfg: PINNConfig) -> PINNConfig:
    """The config whose trained network ``transfer`` starts ``cfg`` from: the same model on a
    nearby problem (Helmholtz: another wavenumber), another seed."""
    if cfg.problem not in _SOURCES:
        raise ValueError(f"method: 'transfer' has no source problem for {cfg.problem!r}; "
                         f"allowed: {', '.join(_SOURCES)}")
    return replace(cfg, problem_kwargs={**cfg.problem_kwargs, **_SOURCES[cfg.problem]},
                   train=replace(cfg.train, seed=cfg.train.seed + 1000), init_from="")


def applicable(cfg: PINNConfig) -> dict[str, str]:
    """Every option by name → "" when it applies to ``cfg``'s problem, else why not."""
    out = {}
    for name in METHODS:
        try:
            changed = apply(cfg, name)
            if name == "transfer":
                transfer_source(changed)
            out[name] = ""
        except ValueError as exc:
            out[name] = str(exc)
    return out


def source_weights(cfg: PINNConfig) -> tuple[dict[str, Tensor], float]:
    """Train ``transfer``'s source network for ``cfg``: its weights and the seconds it took."""
    t0 = time.perf_counter()
    _, source, _ = run_pinn(transfer_source(cfg))
    return source.state_dict(), time.perf_counter() - t0


__all__ = ["METHODS", "Method", "applicable", "apply", "source_weights", "transfer_source"]
