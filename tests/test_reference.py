"""A PDE with no closed form, measured against a reference solver's solution kept in a file
(``problem_kwargs={"reference": "burgers.npz"}``): the layouts read, the files refused, the
conditions such a problem gives itself, and the file recorded and checked by replay."""

import math

import numpy as np
import pytest
import scipy.io
import torch

from cpikan.experiment import ModelConfig, build_model
from cpikan.pde import Problem
from cpikan.pde.check import check_problem
from cpikan.pde.reference import load_reference
from tests.helpers import run_main, trial_run

POISSON = '''
"""u'' = -pi^2 sin(pi x) on [0, 1], u(0) = u(1) = 0: no exact(x), measured against a file."""
import math

import torch

from cpikan.pde import Problem


class Poisson1D(Problem):
    name = "poisson1d_ref"
    coords = ("x",)

    def __init__(self, **kw):
        kw.setdefault("n_interior", 200)
        kw.setdefault("n_boundary", 2)
        super().__init__((0.0,), (1.0,), **kw)
        self.residual_scale = math.pi ** 2

    def boundary_values(self, x):
        return torch.zeros(len(x), dtype=x.dtype)

    def residual(self, d, x):
        return d.dxx(0) + math.pi ** 2 * torch.sin(math.pi * x[:, 0])
'''


class Burgers(Problem):
    """Viscous Burgers on [-1, 1] × [0, 1], as a lab writes it: no closed form."""

    name = "burgers"
    coords = ("x", "t")
    time_dependent = True

    def __init__(self, **kw):
        super().__init__((-1.0, 0.0), (1.0, 1.0), **kw)

    def boundary_values(self, x):
        return torch.zeros(len(x), dtype=x.dtype)

    def initial_values(self, x):
        return -torch.sin(math.pi * x[:, 0])

    def residual(self, d, x):
        return d.dx(1) + d.u[:, 0] * d.dx(0) - 0.01 / math.pi * d.dxx(0)


X, T = np.linspace(-1, 1, 9), np.linspace(0, 1, 5)
U = -np.sin(np.pi * X)[:, None] * np.exp(-T)[None, :]  # a stand-in solution on the (x, t) grid


def _model(problem):
    return build_model(ModelConfig(hidden=(6,), degree=3, dtype="float64"), problem, 0)


def test_grid_mat_and_scattered_files_give_the_same_points_and_error(tmp_path):
    np.savez(tmp_path / "grid.npz", x=X, t=T, u=U)
    scipy.io.savemat(tmp_path / "shock.mat", {"x": X[:, None], "t": T[:, None], "usol": U})  # burgers_shock.mat's layout
    xx, tt = np.meshgrid(X, T, indexing="ij")
    np.savez(tmp_path / "points.npz", points=np.stack([xx.ravel(), tt.ravel()], 1), u=U.ravel())
    read = [load_reference(tmp_path / f, Burgers.coords, (-1, 0), (1, 1)) for f in ("grid.npz", "shock.mat", "points.npz")]
    for pts, vals in read:
        assert torch.equal(pts, read[0][0]) and torch.equal(vals, read[0][1])
    assert pts.shape == (45, 2) and float(vals[9 * 0 + 1]) == U[0, 1]  # ij order: x slowest
    np.savez(tmp_path / "system.npz", x=X, t=T, u=np.stack([U, 2 * U], -1))  # a system: a trailing axis of fields
    pts2, vals2 = load_reference(tmp_path / "system.npz", Burgers.coords, (-1, 0), (1, 1), outputs=2)
    assert torch.equal(pts2, pts) and torch.equal(vals2, torch.stack([vals, 2 * vals], 1))

    class Pair(Burgers):
        outputs = 2

    scipy.io.savemat(tmp_path / "nls.mat", {"x": X[None], "t": T[None], "uu": U + 2j * U})  # NLS.mat: ψ complex
    pts3, vals3 = load_reference(tmp_path / "nls.mat", Burgers.coords, (-1, 0), (1, 1), outputs=2)
    assert torch.equal(pts3, pts) and torch.equal(vals3, vals2)  # real and imaginary parts: a system's two fields
    with pytest.raises(ValueError, match="uu is complex; a complex field is a system of two real ones"):
        load_reference(tmp_path / "nls.mat", Burgers.coords, (-1, 0), (1, 1))

    from reports.vtk import pinn_mesh

    pair = Pair(reference=str(tmp_path / "system.npz"))
    mesh = pinn_mesh(_model(pair), pair)  # on the reference's grid, each field with its reference and error
    assert mesh.cells[0].type == "quad" and len(mesh.points) == 45
    assert sorted(mesh.point_data) == ["error_0", "error_1", "u_0", "u_0_reference", "u_1", "u_1_reference"]
    assert np.array_equal(mesh.point_data["u_1_reference"], 2 * U.ravel())

    problem = Burgers(reference=str(tmp_path / "shock.mat"))
    model = _model(problem)
    check_problem(problem, model)
    with torch.no_grad():
        pred = model(pts)[:, 0]
    want = float(torch.linalg.vector_norm(pred - vals) / torch.linalg.vector_norm(vals))
    assert problem.evaluate(model)["rel_l2"] == pytest.approx(want, rel=1e-12)  # at the file's points, no interpolation
    times, err = problem.error_over_time(model)  # where the error grows: each time of the grid
    assert torch.equal(times, torch.as_tensor(T))
    for j in range(len(T)):
        at = pts[:, 1] == T[j]
        assert float(err[j]) == pytest.approx(float(torch.linalg.vector_norm((pred - vals)[at])
                                                    / torch.linalg.vector_norm(vals[at])), rel=1e-12)
    times2, err2 = problem.error_over_time(model, bins=2)  # scattered times: equal spans
    assert torch.equal(times2, torch.tensor([0.25, 0.75], dtype=torch.float64))
    first = pts[:, 1] < 0.5
    assert float(err2[0]) == pytest.approx(float(torch.linalg.vector_norm((pred - vals)[first])
                                                  / torch.linalg.vector_norm(vals[first])), rel=1e-12)


@pytest.mark.parametrize("arrays, message", [
    ({"x": X, "t": T, "u": U.T}, "reference: u has shape (5, 9); on the axes x (9), t (5) it must be (9, 5) (ij order"),
    ({"x": 2 * X, "t": T, "u": U}, "reference: x spans [-2, 2], outside the problem's [-1, 1]; is it the same problem?"),
    ({"x": X, "t": T, "u": np.where(U > 0.5, np.nan, U)}, "is not finite at point 5 ([-0.75, 0.0]); 7 such point(s)"),
    ({"x": X, "t": T, "usol": U, "v": U}, "holds t, usol, v, x; name the solution 'u' (besides t, x)"),
    ({"x": X, "u": U[:, 0]}, "holds u, x; expected the axes x, t (arrays named as the problem's coords) and the values"),
    ({"x": X, "t": T, "u": 0 * U}, "solution is zero everywhere; a relative error needs one that is not"),
    ({"x": X, "t": T, "u": np.array([None, 1.0], dtype=object)}, "holds Python objects"),
])
def test_unreadable_references_are_refused_naming_the_cause(tmp_path, arrays, message):
    path = tmp_path / "ref.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="^reference: ") as err:
        Burgers(reference=str(path))
    assert message in str(err.value)


def test_a_single_precision_reference_says_what_it_cannot_measure(tmp_path):
    np.savez(tmp_path / "ref32.npz", x=X, t=T, u=U.astype(np.float32))
    with pytest.warns(UserWarning, match=r"u holds float32 values; a relative error below ~1e-07 cannot be measured"):
        Burgers(reference=str(tmp_path / "ref32.npz"))


def test_a_reference_is_an_npz_or_mat_file_that_exists(tmp_path):
    with pytest.raises(ValueError, match=r"reference: ref.csv is not a reference file; allowed: .npz, .mat"):
        Burgers(reference=str(tmp_path / "ref.csv"))
    with pytest.raises(ValueError, match=r"reference: .*gone.npz does not exist"):
        Burgers(reference=str(tmp_path / "gone.npz"))


def test_a_problem_without_exact_names_what_it_lacks(tmp_path):
    np.savez(tmp_path / "ref.npz", x=X, t=T, u=U)
    with pytest.raises(ValueError, match="burgers defines no exact.x. and names no reference"):
        check_problem(Burgers(), _model(Burgers()))

    class NoInitial(Burgers):
        initial_values = Problem.initial_values

    p = NoInitial(reference=str(tmp_path / "ref.npz"))
    with pytest.raises(ValueError, match=r"points could not be made \(NotImplementedError: burgers defines neither exact\(x\) nor initial_values"):
        check_problem(p, _model(p))

    class NumpyInitial(Burgers):
        def initial_values(self, x):
            return -np.sin(np.pi * x[:, 0].numpy())

    p = NumpyInitial(reference=str(tmp_path / "ref.npz"))
    with pytest.raises(ValueError, match=r"burgers's initial_values\(x\) gives a ndarray; return a torch tensor"):
        check_problem(p, _model(p))

    class ColumnBoundary(Burgers):
        def boundary_values(self, x):
            return torch.zeros(len(x), 1, dtype=x.dtype)

    p = ColumnBoundary(reference=str(tmp_path / "ref.npz"))
    with pytest.raises(ValueError, match=r"boundary_values\(x\) gives shape \(400, 1\) for 400 points; expected \(400,\)"):
        check_problem(p, _model(p))


def test_the_reference_is_recorded_and_replay_resume_and_vtk_check_it(tmp_path):
    from studies.run import main as study
    from tracking.replay import main as replay

    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "poisson.py").write_text(POISSON)
    x = np.linspace(0, 1, 101)
    np.savez(lab / "ref.npz", x=x, u=np.sin(np.pi * x))
    args = ["pinn", "--set", "problem=poisson.py:Poisson1D", "--set", 'problem_kwargs={"reference": "ref.npz"}',
            "--set", "model.hidden=[8,8]", "--set", "train.adam_steps=0", "--set", "train.lm_steps=15"]
    out = run_main(study, args, tmp_path / "mlruns", lab)
    assert out.returncode == 0, out.stderr
    c, run = trial_run(tmp_path / "mlruns", "studies/pinn")
    assert run.data.params["problem_kwargs.reference"] == str(lab / "ref.npz")  # absolute: replays from anywhere
    assert "ref.npz" in {i.dataset.name for i in run.inputs.dataset_inputs}
    assert run.data.metrics["rel_l2"] < 1e-3  # trained against the equation, measured against the file
    again = run_main(replay, [run.info.run_id], tmp_path / "mlruns", tmp_path)
    assert again.returncode == 0 and f"reproduced run {run.info.run_id}" in again.stdout, again.stderr
    # the solution in ParaView: at the reference's points, rebuilt from the file only when the user names it
    from reports.vtk import main as vtk

    vtk_args = [run.info.run_id, "--out", tmp_path / "vtk", "--no-attach"]
    refused = run_main(vtk, vtk_args, tmp_path / "mlruns", lab)
    assert refused.returncode == 2 and "reports.vtk" in refused.stderr and "--problem" in refused.stderr, refused.stderr
    wrong = run_main(vtk, [*vtk_args, "--problem", "other.py:Poisson1D"], tmp_path / "mlruns", lab)
    assert wrong.returncode == 2 and "other.py:Poisson1D is not it" in wrong.stderr, wrong.stderr
    named = run_main(vtk, [*vtk_args, "--problem", "poisson.py:Poisson1D"], tmp_path / "mlruns", lab)
    assert named.returncode == 0, named.stderr
    import meshio

    mesh = meshio.read(tmp_path / "vtk" / run.info.run_id / "solution.vtu")
    assert np.array_equal(mesh.points[:, 0], x) and mesh.cells[0].type == "line"
    assert np.array_equal(mesh.point_data["u_reference"], np.sin(np.pi * x))
    assert np.abs(mesh.point_data["error"]).max() < 1e-3
    lab.rename(tmp_path / "archive")  # the lab's folder archived: read where it is now, its files checked
    moved = run_main(vtk, [*vtk_args, "--problem", tmp_path / "archive" / "poisson.py:Poisson1D",
                           "--moved", f"{lab}={tmp_path / 'archive'}"], tmp_path / "mlruns", tmp_path)
    assert moved.returncode == 0, moved.stderr
    (tmp_path / "archive").rename(lab)
    np.savez(lab / "ref.npz", x=x, u=np.sin(np.pi * x) + 1e-6)  # the reference recomputed: another measure
    changed = run_main(replay, [run.info.run_id], tmp_path / "mlruns", tmp_path)
    assert changed.returncode == 2 and "dataset 'ref.npz'" in changed.stderr and "changed" in changed.stderr, changed.stderr
    stale = run_main(vtk, [*vtk_args, "--problem", "poisson.py:Poisson1D"], tmp_path / "mlruns", lab)
    assert stale.returncode == 2 and "dataset 'ref.npz'" in stale.stderr, stale.stderr  # not the run's reference
    # nor does the study resume: its trial #0 was measured against the old file, and would be ranked with new ones
    resumed = run_main(study, [*args, "--trials", "2"], tmp_path / "mlruns", lab)
    assert resumed.returncode == 2, resumed.stderr
    assert f"study 'pinn': {lab / 'ref.npz'} changed since its complete trial(s) #0 read it" in resumed.stderr
    fresh = resumed.stderr.split("--study-name ")[1].split()[0]
    assert run_main(study, [*args, "--study-name", fresh], tmp_path / "mlruns", lab).returncode == 0
    (lab / "poisson.py").write_text(POISSON.replace("u(0) = u(1) = 0", "u(0) = u(1) = 0 (edited)"))  # the PDE's own file too
    again = run_main(study, [*args, "--study-name", fresh, "--trials", "2"], tmp_path / "mlruns", lab)
    assert again.returncode == 2 and f"{lab / 'poisson.py'} changed since its complete trial(s) #0" in again.stderr


def test_a_reference_the_problem_names_itself_is_recorded_by_the_other_pinn_studies_too(tmp_path):
    """method_search (and multistage_search) train a PINNConfig of their own: their runs
    recorded no reference, so a replay or a resume could not check it. And a lab's class may
    name its reference itself (beside its file), not in problem_kwargs."""
    from studies.run import main as study

    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "poisson.py").write_text(POISSON.replace('kw.setdefault("n_boundary", 2)', 'kw.setdefault("n_boundary", 2)\n'
        '        kw.setdefault("reference", __file__.replace("poisson.py", "ref.npz"))\n'
        '        self.gauge = open(kw.pop("gauge")).read()'))  # a file the lab's class reads, by its own name
    (lab / "gauge.txt").write_text("calibration 1\n")
    x = np.linspace(0, 1, 101)
    np.savez(lab / "ref.npz", x=x, u=np.sin(np.pi * x))
    args = ["method_search", "--set", "base.problem=poisson.py:Poisson1D", "--set", 'base.problem_kwargs={"gauge": "gauge.txt"}',
            "--set", "base.model.hidden=[8]", "--set", "base.train.adam_steps=0", "--set", "base.train.lm_steps=10",
            "--set", "base.train.loss_weights={}", "--trials", "1"]
    out = run_main(study, args, tmp_path / "mlruns", lab)
    assert out.returncode == 0, out.stderr
    c, run = trial_run(tmp_path / "mlruns", "studies/method_search")
    assert {"poisson.py", "ref.npz", "gauge.txt"} <= {i.dataset.name for i in run.inputs.dataset_inputs}
    np.savez(lab / "ref.npz", x=x, u=np.sin(np.pi * x) + 1e-6)
    resumed = run_main(study, [*args[:-1], "2"], tmp_path / "mlruns", lab)
    assert resumed.returncode == 2 and "ref.npz changed since its complete trial(s) #0" in resumed.stderr, resumed.stderr
