"""The KPI report: values equal MLflow's, 'no data' on an empty store, bad input exit 2."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tracking import store
from tracking.tracker import Tracker

ROOT = Path(__file__).resolve().parent.parent


def _kpi(mlruns, out, *args):
    return _cli("reports.kpi", mlruns, "--out", str(out), *args)


def _data(page):
    m = re.search(r'<script type="application/json" id="kpi-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_kpi_values_equal_mlflow(mlruns, tmp_path):
    values = {}
    for i, (rel, mpix, seam) in enumerate([(3e-4, 4.19, 2e-5), (1.5e-7, 65.4, 0.0), (2e-3, 4.19, 5e-4)]):
        with Tracker("studies/tiling_overlap_sweep", run_name=f"t{i}") as run:
            run.log_results({"rel_l2": rel, "image_mpix": mpix, "seam_rel": seam},
                            {"inference_seconds": 100.0 + i, "peak_memory_mb": 900.0 - i})
        values[run.run_id] = rel
    for n, rel in ((800, 2e-4), (400, 5e-3)):
        with Tracker("studies/helmholtz1d") as run:
            run.log_params({"problem_kwargs.n_interior": n})
            run.log_results({"rel_l2": rel})
    # replays check runs, they measure nothing: neither a third seed for the success rate
    # nor, replaying an old run with its old code, the "latest" guard figure
    with Tracker("studies/helmholtz1d", tags={"replay_of": run.run_id}) as replay:
        replay.log_params({"problem_kwargs.n_interior": 100})
        replay.log_results({"rel_l2": 1e-4})
    for red, tags in ((0.0, {}), (2.0, {"replay_of": "0123"})):
        with Tracker("studies/flow_inverse", tags=tags) as run:
            run.log_results({"guard/red_count": red})
    out = tmp_path / "kpi.html"
    res = _kpi(mlruns, out)
    assert res.returncode == 0, res.stderr
    page = out.read_text()
    rows = {r["name"]: r for r in _data(page)}
    c = store.client()
    for r in rows.values():
        if r["value"] is None or r["aggregation"] in ("success_rate", "min_param"):
            continue
        assert c.get_run(r["run_id"]).data.metrics[r["metric"]] == r["value"], r["name"]
    assert rows["Tiled vs full relative L2"]["value"] == 1.5e-7
    assert rows["Largest image processed"]["value"] == 65.4
    assert rows["9344 × 7000 peak memory"]["value"] == 899.0  # the 65.4 Mpix run only
    assert rows["Helmholtz 1D relative L2"]["value"] == 2e-4
    assert rows["Training success rate over seeds (Helmholtz 1D, rel L2 ≤ 1e-3)"]["value"] == 0.5
    assert rows["Collocation points needed for rel L2 ≤ 1e-3 (Helmholtz 1D)"]["value"] == 800
    assert rows["3D Poisson time to 1e-3"]["status"] == "no data"
    assert rows["Flow inverse physics-guard red lines (latest run)"]["value"] == 0.0
    assert page.count("plotly.js v") == 1  # embedded once
    assert not re.search(r'<(script|link)[^>]+(src|href)="https?:', page)  # nothing fetched


def test_empty_store_says_no_data(mlruns, tmp_path):
    out = tmp_path / "kpi.html"
    res = _kpi(mlruns, out)
    assert res.returncode == 0, res.stderr
    rows = _data(out.read_text())
    assert rows and all(r["status"] == "no data" for r in rows)
    assert "no data" in out.read_text()
    # with no store there at all, the report says where it looked, and makes none
    assert f"no tracking store at {mlruns}" in res.stderr and not mlruns.exists()


@pytest.mark.parametrize("args, message", [(["--since", "seven days"], "--since: expected"),
                                           (["--kpis", "/nonexistent.toml"], "not found")])
def test_bad_input(mlruns, tmp_path, args, message):
    res = _kpi(mlruns, tmp_path / "kpi.html", *args)
    assert res.returncode == 2 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "kpi.html").exists()


def _cli(mod, mlruns, *args):
    """``python -m MOD ARGS``, its main() in this process (tests/helpers.py: run_main)."""
    import importlib

    from tests.helpers import run_main

    return run_main(importlib.import_module(mod).main, args, mlruns, ROOT)


def test_vtk_round_trip_for_pinn_and_psi_runs(mlruns, tmp_path):
    import meshio

    from studies import pde, psi_pretrain
    from tests.helpers import tiny_config

    cfg = tiny_config(adam_steps=5)
    with Tracker("studies/diffusion", config=cfg, entry_point=pde.ENTRY_POINT, seed=0) as run:
        pde.run(cfg, run)
    pinn_id = run.run_id
    pcfg = psi_pretrain.PSIPretrainConfig(steps=3, train_size=128, val_size=64, patch=32, batch_size=2,
                                          curriculum_steps=(2, 2))  # coarse levels: 32² and 64² wafers
    with Tracker("studies/psi_pretrain", config=pcfg, entry_point="studies.psi_pretrain:run", seed=0) as run:
        psi_pretrain.run(pcfg, run)
    psi_id = run.run_id
    from reports.common import get_run
    from reports.vtk import meshes_for_run

    for rid, name, fields in ((pinn_id, "solution.vtu", ("u", "u_exact", "error")),
                              (psi_id, "height.vtu", ("height", "error", "modulation"))):
        res = _cli("reports.vtk", mlruns, rid, "--out", str(tmp_path / "vtk"))
        assert res.returncode == 0, res.stderr
        back = meshio.read(tmp_path / "vtk" / rid / name)
        mesh = meshes_for_run(*get_run(rid))[name]
        assert np.array_equal(back.points, mesh.points)
        for f in fields:
            assert np.array_equal(back.point_data[f], mesh.point_data[f]), f
        assert f"vtk/{name}" in {a.path for a in store.client().list_artifacts(rid, "vtk")}
    from reports.vtk import main as vtk
    from tests.helpers import run_main

    unused = run_main(vtk, [pinn_id, "--problem", "mine.py:Mine", "--no-attach"], mlruns, tmp_path)  # not said: refused
    assert unused.returncode == 2 and "--problem: run" in unused.stderr and "names no code of the lab's own" in unused.stderr


def test_summary_of_a_replayed_run_names_the_original(mlruns, tmp_path):
    from studies import pde
    from tests.helpers import tiny_config

    cfg = tiny_config(adam_steps=5)
    with Tracker("studies/diffusion", config=cfg, entry_point=pde.ENTRY_POINT, seed=0) as run:
        pde.run(cfg, run)
    rep = _cli("tracking.replay", mlruns, run.run_id)
    assert rep.returncode == 0, rep.stderr
    new_id = rep.stdout.strip().splitlines()[-1].split()[2].rstrip(":")
    res = _cli("reports.summary", mlruns, new_id)
    assert res.returncode == 0, res.stderr
    assert f"replay of** `{run.run_id}`: reproduced" in res.stdout
    assert "summary.md" in {a.path for a in store.client().list_artifacts(new_id)}
    bad = _cli("reports.summary", mlruns, "feedfacefeedface")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_study_report_and_unknown_study(mlruns, tmp_path):
    bad = _cli("reports.study", mlruns, "nope")
    assert bad.returncode == 2 and "unknown study 'nope'" in bad.stderr
    sub = subprocess.run([sys.executable, "-m", "studies.run", "helmholtz1d", "--trials", "2", "--set",
                          "train.adam_steps=5", "--set", "train.lbfgs_steps=0",
                          "--set", "train.lm_steps=0"], capture_output=True, text=True,
                         env={**{k: v for k, v in os.environ.items() if k != store.ENV_URI},
                              "CPIKAN_MLRUNS": str(mlruns), "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert sub.returncode == 0, sub.stderr
    out = tmp_path / "study.html"
    res = _cli("reports.study", mlruns, "helmholtz1d", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert out.read_text().count("<tr>") == 3  # header + 2 trials


def test_the_weekly_job_fills_every_kpi():
    from reports import weekly
    from reports.kpi import load_kpis

    fed = [name for job in weekly.JOBS for name in weekly.fed_kpis(job)]
    assert sorted(fed) == sorted(k.name for k in load_kpis())  # each KPI by exactly one job
    out = subprocess.run([sys.executable, "-m", "reports.weekly", "--dry-run"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0 and out.stdout.count("--study-name weekly-") == len(weekly.JOBS)


def test_the_pinn_studys_convergence_plot_names_the_labs_pde(mlruns):
    """Each PDE benchmark's section is its own problem; the pinn study's runs any PDE, so its
    plot names the one its latest run solved (it said only 'studies/pinn')."""
    from reports.kpi import convergence_figures
    from tracking.tracker import Tracker

    for exp, problem in (("studies/pinn", "/lab/pdes/burgers.py:Burgers"), ("studies/helmholtz1d", "helmholtz1d")):
        with Tracker(exp, config={"problem": problem}) as run:
            run.log_metrics({"loss": 1.0}, step=0)
            run.log_metrics({"loss": 0.5}, step=1)
            run.log_results({"rel_l2": 1e-3})
    titles = {name: fig.layout.title.text for name, fig in convergence_figures(store.client())}
    assert titles == {"studies/pinn": "studies/pinn: latest run's loss (burgers.py:Burgers)",
                      "studies/helmholtz1d": "studies/helmholtz1d: latest run's loss"}
