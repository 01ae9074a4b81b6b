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
    """Build a problem by its id, or the user's own by reference (``burgers.py:Burgers``,
    ``mylab.pdes:Burgers(nu=0.01)``: a :class:`Problem` subclass or a callable returning
    one; ``kwargs`` go to it too). A ValueError names ``problem`` and the cause otherwise."""
    from cpikan import refs

    if refs.is_ref(name):
        where, attr, args, given = refs.split_ref(name, "problem")
        make = refs.resolve(where, attr, name, "problem", what="a cpikan.pde.Problem")
        try:
            problem = make(*args, **{**given, **kwargs})
        except Exception as exc:  # the user's code: whatever it raises, say where it came from
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ValueError(f"problem: {name} failed ({type(exc).__name__}: {first})") from None
        if not isinstance(problem, Problem):
            raise ValueError(f"problem: {name} gave a {type(problem).__name__}; expected a cpikan.pde.Problem "
                             "(docs/howto.md, 'Add a PDE')")
        return problem
    if name not in PROBLEMS:
        raise ValueError(f"problem: unknown {name!r}; allowed: {', '.join(PROBLEMS)}")
    return PROBLEMS[name](**kwargs)


__all__ = ["PROBLEMS", "Collocation", "Problem", "Term", "make_problem"]
