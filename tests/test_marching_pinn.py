"""Time marching for any time-dependent PDE, the lab's own included: ``--set time_windows=K``
trains K networks one after another, each from the one before's end (``cpikan.marching``),
through the pinn study, recorded, replayed and exported like any run."""

import numpy as np
import pytest
import torch

from cpikan.experiment import run_pinn
from cpikan.train import History
from tests.helpers import run_main, tiny_config, trial_run

HEAT = '''
"""u_t = u_xx / pi^2 on [0, 1] x [0, 1], u = 0 at x = 0, 1, u(x, 0) = sin(pi x): no exact(x) here."""
import math

import torch

from cpikan.pde import Problem


class Heat(Problem):
    name = "heat_lab"
    coords = ("x", "t")
    time_dependent = True

    def __init__(self, **kw):
        kw.setdefault("n_interior", 1000)  # more residuals than parameters: LM fits no points exactly
        kw.setdefault("n_boundary", 100)
        kw.setdefault("n_initial", 100)
        super().__init__((0.0, 0.0), (1.0, 1.0), **kw)

    def boundary_values(self, x):
        return torch.zeros(len(x), dtype=x.dtype)

    def initial_values(self, x):
        return torch.sin(math.pi * x[:, 0])

    def residual(self, d, x):
        return d.dx(1) - d.dxx(0) / math.pi ** 2
'''


def test_marched_steps_run_on_across_windows_and_end_once():
    from dataclasses import replace

    history = History()
    ends = []

    class Ends(History):
        def on_train_end(self, result):
            ends.append(result.steps)

    cfg = replace(tiny_config("diffusion", adam_steps=20, lm_steps=5), time_windows=3)
    result, model, problem = run_pinn(cfg, [history, Ends()])
    steps = [s for s, _ in history.steps]
    assert steps == sorted(set(steps)) and len(steps) == result.steps == 3 * 25 and ends == [75]
    assert {"rel_l2", "window_rel_l2_0", "window_rel_l2_2"} <= set(result.metrics)
    assert history.evals[-1] == (75, result.metrics)
    with torch.no_grad():
        assert model(problem.eval_grid()[:5]).shape == (5, 1)
    from cpikan.pde import make_problem

    inverse = make_problem("reaction_diffusion_inverse")  # its observations: each window those made in it
    seen = inverse.window(0.5, 1.0, start=lambda p: p[:, 0]).data()["data"][0]
    assert 0 < len(seen) < len(inverse.data()["data"][0]) and seen[:, 1].min() >= 0.5
    from cpikan.multistage import MultiStageConfig

    with pytest.raises(ValueError, match=r"base.time_windows: multi-stage training fits one network per stage"):
        MultiStageConfig(replace(tiny_config("diffusion"), time_windows=2))
    with pytest.raises(ValueError, match=r"time_windows: helmholtz1d is not time-dependent; allowed: 1"):
        run_pinn(replace(tiny_config("helmholtz1d"), time_windows=2))


def test_a_lab_pde_marches_in_the_pinn_study_replays_and_exports(tmp_path):
    from reports.vtk import main as vtk
    from studies.run import main as study
    from tracking.replay import main as replay

    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "heat.py").write_text(HEAT)
    x, t = np.linspace(0, 1, 21), np.linspace(0, 1, 11)
    np.savez(lab / "ref.npz", x=x, t=t, u=np.sin(np.pi * x)[:, None] * np.exp(-t)[None, :])
    args = ["pinn", "--set", "problem=heat.py:Heat", "--set", 'problem_kwargs={"reference": "ref.npz"}',
            "--set", "time_windows=2", "--set", "model.hidden=[8]", "--set", "train.adam_steps=0",
            "--set", "train.lm_steps=20"]
    out = run_main(study, args, tmp_path / "mlruns", lab)
    assert out.returncode == 0, out.stderr
    c, run = trial_run(tmp_path / "mlruns", "studies/pinn")
    figures = {a.path for a in c.list_artifacts(run.info.run_id, "figures")}
    m = run.data.metrics
    assert run.data.params["time_windows"] == "2" and m["rel_l2"] < 5e-3, m
    assert m["window_rel_l2_0"] < 5e-3 and m["window_rel_l2_1"] < 5e-3
    assert "figures/error_over_time.html" in figures
    again = run_main(replay, [run.info.run_id], tmp_path / "mlruns", tmp_path)
    assert again.returncode == 0 and f"reproduced run {run.info.run_id}" in again.stdout, again.stderr
    exported = run_main(vtk, [run.info.run_id, "--out", tmp_path / "vtk", "--no-attach", "--problem", "heat.py:Heat"],
                        tmp_path / "mlruns", lab)  # the marched model rebuilt from the store: its windows
    assert exported.returncode == 0, exported.stderr
    import meshio

    mesh = meshio.read(tmp_path / "vtk" / run.info.run_id / "solution.vtu")
    assert mesh.cells[0].type == "quad" and len(mesh.points) == 21 * 11
    assert np.abs(mesh.point_data["error"]).max() < 5e-3
