"""PDE benchmarks by name (docs/domain.md §2)."""

from __future__ import annotations

from cpikan.pde.allen_cahn import AllenCahn
from cpikan.pde.base import Collocation, Problem, Term
from cpikan.pde.diffusion import Diffusion, ReactionDiffusion, ReactionDiffusionInverse
from cpikan.pde.helmholtz import Helmholtz1D, Helmholtz2D
from cpikan.pde.poisson import Poisson2DPeak, Poisson3D
from cpikan.pde.regression import Regression1D

PROBLEMS: dict[str, type[Problem]] = {
    cls.name: cls
    for cls in (Helmholtz1D, Helmholtz2D, Diffusion, Poisson3D, ReactionDiffusion,
                ReactionDiffusionInverse, Regression1D, AllenCahn, Poisson2DPeak)
}


def make_problem(name: str, **kwargs: object) -> Problem:
    """Build a problem by its id; unknown ids raise a ValueError listing the known ones."""
    if name not in PROBLEMS:
        raise ValueError(f"problem: unknown {name!r}; allowed: {', '.join(PROBLEMS)}")
    return PROBLEMS[name](**kwargs)


__all__ = ["PROBLEMS", "Collocation", "Problem", "Term", "make_problem"]
