"""A PDE on a domain less than its box (a disk, an L-shape): ``inside(x)`` keeps the
interior and initial points and the evaluation grid in it. Measured on the box, a disk's
error counted the corners, where no equation holds (27× the error on the disk, tried)."""

import math

import pytest
import torch

from cpikan.experiment import ModelConfig, build_model
from cpikan.pde import Problem
from cpikan.pde.check import check_problem


class DiskHeat(Problem):
    """u_t = Δu on the unit disk with u = 0 on the circle (its exact is a stand-in: the test measures, not trains)."""

    name = "disk_heat"
    coords = ("x", "y", "t")
    time_dependent = True

    def __init__(self, **kw):
        kw.setdefault("eval_resolution", 21)
        super().__init__((-1.0, -1.0, 0.0), (1.0, 1.0, 1.0), **kw)

    def inside(self, x):
        return x[:, 0] ** 2 + x[:, 1] ** 2 < 1

    def exact(self, x):
        return (1 - x[:, 0] ** 2 - x[:, 1] ** 2) * torch.exp(-x[:, 2])

    def residual(self, d, x):
        return d.dx(2) - d.dxx(0) - d.dxx(1)

    def sample_boundary(self, n, gen):
        th = torch.rand(n, generator=gen, dtype=torch.float64) * 2 * math.pi
        t = torch.rand(n, generator=gen, dtype=torch.float64)
        return torch.stack([th.cos(), th.sin(), t], 1)


def _model(problem):
    return build_model(ModelConfig(hidden=(6,), degree=3, dtype="float64"), problem, 0)


def test_points_and_the_measure_stay_inside_the_domain():
    problem = DiskHeat()
    batch = problem.sample(torch.Generator().manual_seed(0))
    r2 = batch.interior[:, :2].square().sum(1)
    assert len(batch.interior) == problem.n_interior and r2.max() < 1
    ic, _ = batch.conditions["ic"]
    assert len(ic) == problem.n_initial and ic[:, :2].square().sum(1).max() < 1 and (ic[:, 2] == 0).all()
    grid = problem.eval_grid()
    assert 0 < len(grid) < 21 ** 3 and grid[:, :2].square().sum(1).max() < 1
    model = _model(problem)
    check_problem(problem, model)
    with torch.no_grad():
        pred = model(grid)[:, 0]
    ref = problem.exact(grid)
    want = float(torch.linalg.vector_norm(pred - ref) / torch.linalg.vector_norm(ref))
    assert problem.evaluate(model)["rel_l2"] == pytest.approx(want, rel=1e-12)
    from reports.vtk import pinn_mesh

    mesh = pinn_mesh(model, problem, resolution=11)  # vertices inside the disk only: outside, the network means nothing
    assert mesh.cells[0].type == "vertex" and 0 < len(mesh.points) < 11 ** 3
    assert (mesh.points[:, 0] ** 2 + mesh.points[:, 1] ** 2).max() < 1
    assert sorted(mesh.point_data) == ["error", "u", "u_exact"]


def test_a_box_problem_samples_as_before():
    class Box(DiskHeat):
        inside = Problem.inside

    a, b = Box().sample(torch.Generator().manual_seed(3)), Box().sample(torch.Generator().manual_seed(3))
    assert torch.equal(a.interior, b.interior)
    from cpikan import sampling

    gen = torch.Generator().manual_seed(3)
    assert torch.equal(a.interior, sampling.sample("lhs", 2000, (-1.0, -1.0, 0.0), (1.0, 1.0, 1.0), gen))
    assert len(Box().eval_grid()) == 21 ** 3


def test_a_region_needs_its_own_boundary_and_a_mask_that_keeps_something(tmp_path):
    class FacesOnly(DiskHeat):
        sample_boundary = Problem.sample_boundary

    p = FacesOnly()
    with pytest.raises(ValueError, match=r"disk_heat defines inside\(x\) but samples its boundary on the box's faces"):
        check_problem(p, _model(p))

    class Floats(DiskHeat):
        def inside(self, x):
            return (x[:, :2].square().sum(1) < 1)[:, None]

    p = Floats()
    with pytest.raises(ValueError, match=r"inside\(x\) gives \(2, 1\) for 2 points; expected a bool tensor"):
        check_problem(p, _model(p))

    class Nowhere(DiskHeat):
        def inside(self, x):
            return x[:, 0] > 2

    p = Nowhere()
    with pytest.raises(ValueError, match="inside(x) keeps none of the 21-point-per-axis evaluation grid".replace("(", r"\(")
                       .replace(")", r"\)")):
        check_problem(p, _model(p))
    import numpy as np

    axis = np.linspace(-1, 1, 5)
    np.savez(tmp_path / "ref.npz", x=axis, y=axis, t=np.linspace(0, 1, 3), u=np.ones((5, 5, 3)))  # the whole box
    p = DiskHeat(reference=str(tmp_path / "ref.npz"))
    with pytest.raises(ValueError, match=r"reference holds 48 point\(s\) outside its domain \(inside\(x\) is False; "
                                         r"the first at \[-1.0, -1.0, 0.0\]\)"):
        check_problem(p, _model(p))
    xx, yy = np.meshgrid(axis, axis, indexing="ij")
    masked = np.where((xx**2 + yy**2 < 1)[..., None], 1.0, np.nan) * np.ones(3)  # a grid solver's: NaN outside
    np.savez(tmp_path / "ref.npz", x=axis, y=axis, t=np.linspace(0, 1, 3), u=masked)
    p = DiskHeat(reference=str(tmp_path / "ref.npz"))
    check_problem(p, _model(p))  # NaN outside the disk: those points are not the domain's
    pts, values = p.reference_solution()
    assert len(pts) == 27 and torch.isfinite(values).all() and (pts[:, 0] ** 2 + pts[:, 1] ** 2).max() < 1
    masked[2, 2, 1] = np.nan  # the disk's centre: a NaN where the domain is
    np.savez(tmp_path / "ref.npz", x=axis, y=axis, t=np.linspace(0, 1, 3), u=masked)
    p = DiskHeat(reference=str(tmp_path / "ref.npz"))
    with pytest.raises(ValueError, match=r"reference is NaN at 1 point\(s\) inside its domain \(the first at "
                                         r"\[0.0, 0.0, 0.5\]\); NaN marks the points outside it only"):
        check_problem(p, _model(p))
    p = Nowhere()
    with pytest.raises(ValueError, match=r"inside: 0 of \d+ points drawn in the box lie inside the domain"):
        p.sample_interior(10, torch.Generator().manual_seed(0))
