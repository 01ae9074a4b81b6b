"""The lab's own PDE in the PINN study: ``python -m studies.run pinn --set
problem=poisson.py:Poisson1D`` from the lab's folder, its files recorded by content, a
replay from elsewhere, an edit refused, the store never choosing code to import, bad input."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "model.hidden=[8,8]", "--set", "train.adam_steps=0", "--set", "train.lm_steps=15"]

POISSON = '''
"""u'' = -pi^2 sin(pi x) on [0, 1], u(0) = u(1) = 0; u = sin(pi x)."""
import math

import torch

from cpikan.pde import Problem
from helpers.forcing import source


class Poisson1D(Problem):
    name = "poisson1d_lab"
    coords = ("x",)

    def __init__(self, **kw):
        kw.setdefault("n_interior", 200)
        kw.setdefault("n_boundary", 2)
        super().__init__((0.0,), (1.0,), **kw)
        self.residual_scale = math.pi ** 2

    def exact(self, x):
        return torch.sin(math.pi * x[:, 0])

    def residual(self, d, x):
        return d.dxx(0) - source(x[:, 0])
'''


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("mylab")
    (root / "helpers").mkdir()
    (root / "helpers" / "__init__.py").write_text("")
    (root / "helpers" / "forcing.py").write_text(textwrap.dedent('''
        import math

        import torch


        def source(x):
            return -(math.pi ** 2) * torch.sin(math.pi * x)
    '''))
    (root / "poisson.py").write_text(POISSON)
    # the same PDE with u·u' in it: d.u is (N, 1), so d.u * d.dx(0) is (N, N), which Adam averaged silently
    (root / "broadcast.py").write_text(POISSON.replace("return d.dxx(0) - source(x[:, 0])",
                                                      "return d.dxx(0) - source(x[:, 0]) + 0 * d.u * d.dx(0)"))
    (root / "noexact.py").write_text(POISSON.replace("def exact(self, x):", "def solution(self, x):"))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(CPIKAN_MLRUNS=str(root / "mlruns"), PYTHONPATH=str(ROOT))
    return root, env


def _run(module, args, env, cwd):
    return subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=cwd, capture_output=True, text=True)


def test_your_pde_runs_is_recorded_by_content_and_replays(lab, monkeypatch):
    root, env = lab
    out = _run("studies.run", ["pinn", "--set", "problem=poisson.py:Poisson1D", *TINY], env, root)  # as typed
    assert out.returncode == 0, out.stderr
    monkeypatch.setenv("CPIKAN_MLRUNS", str(root / "mlruns"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from tracking import models, store

    c = store.client()
    exp = c.get_experiment_by_name("studies/pinn").experiment_id
    (run,) = [r for r in c.search_runs([exp]) if "optuna.trial_number" in r.data.tags]
    assert run.data.params["problem"] == f"{root / 'poisson.py'}:Poisson1D"  # absolute: replays from anywhere
    assert run.data.metrics["rel_l2"] < 1e-3
    code = sorted(i.dataset.name for i in run.inputs.dataset_inputs)
    assert code == ["helpers/__init__.py", "helpers/forcing.py", "poisson.py"]
    # replayed from another folder: the same file, the same numbers
    again = _run("tracking.replay", [run.info.run_id], env, ROOT)
    assert again.returncode == 0 and f"reproduced run {run.info.run_id}" in again.stdout, again.stdout + again.stderr
    # a model in the store never has the store choose code to import
    with pytest.raises(store.TrackingError, match="its problem is code of the lab's own"):
        models.load_model(run.info.run_id)
    # an edit to a helper module is seen
    forcing = root / "helpers" / "forcing.py"
    forcing.write_text(forcing.read_text() + "\n# edited\n")
    edited = _run("tracking.replay", [run.info.run_id], env, ROOT)
    assert edited.returncode == 2 and "helpers/forcing.py" in edited.stderr, edited.stderr


@pytest.mark.parametrize("args, message", [
    (["pinn", "--set", "problem=nofile.py:Poisson1D"], "problem: nofile.py: no such file"),
    (["pinn", "--set", "problem=poisson.py:Nope"], "problem: '{root}/poisson.py:Nope' cannot be imported (AttributeError"),
    (["pinn", "--set", "problem=bogus"], "allowed: helmholtz1d, helmholtz2d,"),
    (["pinn", "--set", "problem=broadcast.py:Poisson1D"], "problem: poisson1d_lab's 'pde' term gives shape (4, 4) for 4 "
                                                          "points; a term is one residual per point, shape (4,) (d.u is"),
    (["pinn", "--set", "problem=noexact.py:Poisson1D"], "problem: poisson1d_lab defines no exact(x) and names no reference: a run is measured"),
    # built before any run: not a failed trial per retry
    (["pinn", "--set", "problem=helpers/forcing.py:source"], "forcing.py:source failed (TypeError: source() missing"),
    (["helmholtz1d", "--set", 'problem_kwargs={"n_interor": 50}'], "unexpected keyword argument 'n_interor'"),
    (["pinn", "--set", "problem=reaction_diffusion_inverse", "--set", 'problem_kwargs={"data_file": "gone.npz"}'],
     "problem_kwargs: [Errno 2] No such file or directory: 'gone.npz'"),
    (["helmholtz1d", "--set", "problem=poisson.py:Poisson1D"], "the helmholtz1d study runs 'helmholtz1d' only"),
    (["poisson3d", "--set", "problem=helmholtz1d"], "python -m studies.run pinn --set problem="),
    # a benchmark's problem as its KPI defines it: its points may change, not its wavenumber nor its measure
    (["helmholtz1d", "--set", 'problem_kwargs={"n_interior": 50, "k": 3.0}'], "problem_kwargs.k: defines the helmholtz1d"),
    (["diffusion", "--set", 'problem_kwargs={"eval_resolution": 11}'], "problem_kwargs.eval_resolution: defines"),
])
def test_bad_problems_are_one_line_exit_2_and_create_nothing(lab, tmp_path, args, message):
    root, env = lab
    env = {**env, "CPIKAN_MLRUNS": str(tmp_path / "mlruns")}
    out = _run("studies.run", args, env, root)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert message.format(root=root) in out.stderr, out.stderr
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()
