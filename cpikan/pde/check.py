"""A problem tried on a few points before it is trained.

A lab's own PDE is code the project has never seen. Mistakes in it surface late and
cryptically: ``d.u * d.dx(0)`` multiplies an (N, 1) by an (N,) into an (N, N) that Adam
averages without complaint (the wrong equation, trained for minutes) and that the
Levenberg–Marquardt phase rejects from inside ``vmap``; a problem with no exact solution
trains to the end and then fails where it is measured (one with no closed form names a
reference solver's file instead, and gives its boundary and initial values itself).
:func:`check_problem` runs each piece once on a few points and names what is wrong, before
any training.
"""

from __future__ import annotations

import torch
from torch import nn

from cpikan.pde.base import Problem


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def has_exact(problem: Problem) -> bool:
    return type(problem).exact is not Problem.exact


def _check_exact(problem: Problem, name: str, rows: int) -> None:
    grid = problem.eval_grid()[:rows]
    try:
        ref = problem.exact(grid)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"problem: {name}'s exact(x) failed on the evaluation grid ({_first_line(exc)})") from None
    if not isinstance(ref, torch.Tensor):
        raise ValueError(f"problem: {name}'s exact(x) gives a {type(ref).__name__}; return a torch tensor "
                         "(torch.as_tensor(values) for a reference computed with numpy)")
    want = (len(grid),) if problem.outputs == 1 else (len(grid), problem.outputs)
    if tuple(ref.shape) != want:
        raise ValueError(f"problem: {name}'s exact(x) gives shape {tuple(ref.shape)} for {len(grid)} points; "
                         f"expected {want} ({problem.outputs} output{'s' if problem.outputs > 1 else ''})")


def _check_region(problem: Problem, name: str) -> None:
    """``inside(x)``: a bool per point; and the boundary sampled on the domain, not the box."""
    pts = torch.tensor([problem.lo, problem.hi], dtype=torch.float64)
    try:
        mask = problem.inside(pts)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"problem: {name}'s inside(x) failed ({_first_line(exc)})") from None
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (len(pts),):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"problem: {name}'s inside(x) gives {got} for {len(pts)} points; expected a bool tensor "
                         f"of shape ({len(pts)},)")
    if problem.n_boundary and type(problem).sample_boundary is Problem.sample_boundary:
        raise ValueError(f"problem: {name} defines inside(x) but samples its boundary on the box's faces; define "
                         "sample_boundary(n, gen) on the domain's boundary (or n_boundary=0)")
    if problem.reference_file is not None:  # measured there: a point outside would count where no equation holds
        every, values = problem._reference
        unknown = ~values.reshape(len(values), -1).isfinite().all(1)
        gap = unknown & problem.inside(every).to(torch.bool)
        if gap.any():  # NaN is allowed outside the region only
            first = [round(v, 6) for v in every[int(gap.nonzero()[0])].tolist()]
            raise ValueError(f"problem: {name}'s reference is NaN at {int(gap.sum())} point(s) inside its domain "
                             f"(the first at {first}); NaN marks the points outside it only")
        pts, _ = problem.reference_solution()
        out = ~problem.inside(pts).to(torch.bool)
        if out.any():
            first = [round(v, 6) for v in pts[int(out.nonzero()[0])].tolist()]
            raise ValueError(f"problem: {name}'s reference holds {int(out.sum())} point(s) outside its domain "
                             f"(inside(x) is False; the first at {first}); give the solution on the domain only")
    elif not len(problem.eval_grid()):
        raise ValueError(f"problem: {name}'s inside(x) keeps none of the {problem.eval_resolution}-point-per-axis "
                         "evaluation grid; check inside(x), or raise eval_resolution")


def _check_conditions(problem: Problem, name: str, conditions: dict) -> None:
    """Each condition's values: a tensor, one value per point (or one per field)."""
    for cond, (pts, vals) in conditions.items():
        hook = {"bc": "boundary_values", "ic": "initial_values"}.get(cond, "data")
        if not isinstance(vals, torch.Tensor):
            raise ValueError(f"problem: {name}'s {hook}(x) gives a {type(vals).__name__}; return a torch tensor")
        shapes = [(len(pts),)] + ([(len(pts), problem.outputs)] if problem.outputs > 1 else [])
        if tuple(vals.shape) not in shapes:
            raise ValueError(f"problem: {name}'s {hook}(x) gives shape {tuple(vals.shape)} for {len(pts)} points; "
                             f"expected {' or '.join(map(str, shapes))}")


def check_problem(problem: Problem, model: nn.Module, rows: int = 4) -> None:
    """Evaluate ``problem``'s exact solution on the evaluation grid's first ``rows`` points
    (or require a reference file), then sample its points, check each condition's values and
    evaluate each loss term on ``rows`` of them; a ValueError names the piece and the cause
    (a residual must be one value per point, shape (N,))."""
    name = problem.name or type(problem).__name__
    if problem.has_region():
        _check_region(problem, name)
    if has_exact(problem):
        _check_exact(problem, name, rows)
    elif problem.reference_file is None:
        raise ValueError(f"problem: {name} defines no exact(x) and names no reference: a run is measured by its "
                         "relative L2 error against one; define exact(x), or give a reference solver's solution, "
                         "problem_kwargs={\"reference\": \"FILE.npz\"} (docs/howto.md, 'Add a PDE')")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float64)
    try:
        batch = problem.sample(torch.Generator().manual_seed(0))
    except Exception as exc:  # the user's code: say which part of it
        raise ValueError(f"problem: {name}'s points could not be made ({_first_line(exc)})") from None
    _check_conditions(problem, name, batch.conditions)
    try:
        terms = problem.terms(batch.to(dtype))
    except ValueError:  # a loss that is no sum of squares (Deep Ritz): the trainer refuses LM on it, by name
        terms = {}
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"problem: {name}'s loss terms could not be made ({_first_line(exc)})") from None
    for term_name, term in terms.items():
        inputs = tuple(t[:rows] for t in term.inputs)
        n = len(inputs[0])
        try:
            r = term.fn(model, *inputs)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"problem: {name}'s {term_name!r} term failed on {n} points ({_first_line(exc)})") from None
        if not isinstance(r, torch.Tensor):  # numpy, a float: no gradient reaches the network
            raise ValueError(f"problem: {name}'s {term_name!r} term gives a {type(r).__name__}; it must be a torch "
                             "tensor computed from the model's output (torch.sin, not np.sin)")
        if tuple(r.shape) != (n,):
            hint = (" (d.u is (N, outputs): write d.u[:, 0], as d.dx(j) is; a system of equations sets "
                    "outputs = the number of fields)") if r.ndim == 2 and term_name == "pde" else ""
            raise ValueError(f"problem: {name}'s {term_name!r} term gives shape {tuple(r.shape)} for {n} points; "
                             f"a term is one residual per point, shape ({n},){hint}")
