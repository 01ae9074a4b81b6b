"""Sensor placement (QR pivoting, GappyPOD+E past the rank), the linear estimate, bad input,
and the physics guard failing planted violations by name."""

import math
import statistics
from dataclasses import replace

import numpy as np
import pytest
import torch

from cpikan.sensors import SensorError, flows, place, pod_basis, reconstruct
from cpikan.sensors.guard import CHECKS, FlowCase, check_flow, load_thresholds
from cpikan.sensors.placement import Placement, from_coordinates
from cpikan.sensors.pod import stack_snapshots


@pytest.fixture(scope="module")
def family():
    x, grid, _ = flows.snapshots("kovasznay", 48, 30, dtype=np.float64)
    test = np.stack([flows.kovasznay(*grid.mesh(), re)[0].ravel() for re in (27.3, 51.7, 77.1)])
    return pod_basis(x, 6), test, grid


def _err(basis, p, test, noise=0.0, seed=0):
    y = test[:, list(p.indices)]
    y = y + noise * np.random.default_rng(seed).standard_normal(y.shape) * np.abs(test).max()
    rec = reconstruct(basis, p, y)
    return np.linalg.norm(rec - test) / np.linalg.norm(test)


def test_qr_beats_random_and_uniform_and_the_randomized_basis_agrees(family):
    basis, test, _ = family
    qr = _err(basis, place(basis, 6), test, noise=0.01)
    rand = np.median([_err(basis, place(basis, 6, "random", seed=s), test, noise=0.01) for s in range(7)])
    uni = _err(basis, place(basis, 6, "uniform"), test, noise=0.01)
    assert qr < 0.5 * rand and qr < uni
    x, _, _ = flows.snapshots("kovasznay", 48, 30, dtype=np.float64)
    exact = pod_basis(x, 6, method="svd")
    for method in ("gram", "randomized"):  # the same modes as the thin SVD, up to sign
        assert np.allclose(np.abs(pod_basis(x, 6, method=method).modes.T @ exact.modes), np.eye(6), atol=1e-6)


def test_more_sensors_than_modes_keeps_adding_stable_points(family):
    basis, test, _ = family
    p = place(basis, 12)
    assert len(set(p.indices)) == 12 and p.indices[:6] == place(basis, 6).indices
    theta = basis.modes[list(p.indices)]
    assert np.linalg.svd(theta, compute_uv=False)[-1] >= np.linalg.svd(basis.modes[list(p.indices[:6])],
                                                                        compute_uv=False)[-1]
    assert _err(basis, p, test, noise=0.01) <= _err(basis, place(basis, 6), test, noise=0.01)


def test_placement_round_trips_and_refuses_another_basis(family, tmp_path):
    basis, _, _ = family
    p = place(basis, 8)
    p.save(tmp_path / "p.json")
    q = Placement.from_json((tmp_path / "p.json").read_text())
    assert q == p
    other = pod_basis(flows.snapshots("kovasznay", 48, 31, dtype=np.float64)[0], 6)
    with pytest.raises(SensorError, match="placement: chosen on basis"):
        reconstruct(other, q, np.zeros(8))


def test_joint_placement_reads_every_field_and_is_qr_on_one_basis(family, tmp_path):
    basis, _, grid = family
    from cpikan.sensors.placement import joint_pivots, qr_pivots

    # one basis: the greedy volume picks are pivoted QR's
    assert list(joint_pivots([basis.modes], 6)) == list(qr_pivots(basis.modes, 6))
    fields = [basis] + [pod_basis(flows.snapshots("kovasznay", 48, 30, name, dtype=np.float64)[0], 6)
                        for name in ("v", "p")]
    tests = [np.stack([flows.kovasznay(*grid.mesh(), re)[k].ravel() for re in (27.3, 51.7, 77.1)])
             for k in range(3)]
    u_only, joint = place(basis, 12), place(fields, 12)
    # QR on u alone puts every sensor where v = 0 (cos 2πy = ±1): v is then noise amplified
    v_err = [_err(fields[1], Placement(p.indices, "qr", fields[1].digest, p.points), tests[1], noise=0.01)
             for p in (u_only, joint)]
    assert v_err[1] < 0.5 * v_err[0]
    for b, t in zip(fields, tests):  # a joint placement reconstructs each field with its own basis
        assert _err(b, joint, t) < 1e-6
    joint.save(tmp_path / "j.json")
    assert Placement.from_json((tmp_path / "j.json").read_text()) == joint
    with pytest.raises(SensorError, match="placement: chosen on basis"):
        reconstruct(pod_basis(flows.snapshots("kovasznay", 48, 31, dtype=np.float64)[0], 6), joint, np.zeros(12))
    coarse = pod_basis(flows.snapshots("kovasznay", 32, 30, "v", dtype=np.float64)[0], 6)
    with pytest.raises(SensorError, match="basis: the bases are on grids of"):
        place([basis, coarse], 4)


@pytest.mark.parametrize("case, message", [
    ("k_grid", "k: 3000 sensors but the grid has only 2304 points"), ("nan", "basis: contains NaN"),
    ("shapes", "snapshot 1 has shape (4, 5), snapshot 0 has (4, 4)"), ("outside", "lies outside the domain"),
    ("method", "method: unknown 'best'"),
])
def test_bad_input_names_the_field(family, case, message):
    basis, _, grid = family
    with pytest.raises((SensorError, ValueError)) as info:
        if case == "k_grid":
            place(basis, 3000)
        elif case == "nan":
            modes = basis.modes.copy()
            modes[3, 1] = np.nan
            place(type(basis)(modes, basis.mean, basis.singular_values, basis.energy), 4)
        elif case == "shapes":
            stack_snapshots([np.zeros((4, 4)), np.zeros((4, 5))])
        elif case == "outside":
            from_coordinates(grid.points(), [[0.2, 0.3], [1.7, 0.0]], tolerance=0.05)
        else:
            place(basis, 4, "best")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_thresholds_file_with_an_unknown_check_is_refused(tmp_path):
    text = (load_thresholds.__globals__["DEFAULT_THRESHOLDS"]).read_text() + "\n[checks.vorticity]\nred = 1\n"
    (tmp_path / "t.toml").write_text(text)
    with pytest.raises(SensorError, match="unknown check 'vorticity'"):
        load_thresholds(tmp_path / "t.toml")


# --------------------------------------------------------------------------- the guard
CASE = FlowCase("kovasznay", re=40.0, n=24)


def exact_model(pts):
    return torch.stack(flows.kovasznay(pts[:, 0], pts[:, 1], CASE.re), 1)


def _planted(check):
    """The exact flow, broken in the one way ``check`` exists to catch."""
    def model(pts):
        u, v, p = exact_model(pts).unbind(1)
        x, y = pts[:, 0], pts[:, 1]
        if check == "momentum_residual":
            p = p + 0.01 * x  # a pressure gradient nothing balances
        elif check == "divergence":
            bump = torch.sin(math.pi * (x + 0.5) / 1.5) ** 2 * torch.sin(math.pi * (y + 0.5) / 2) ** 2
            u = u + 1e-4 * bump * x  # zero on the boundary, ∇·u ≈ 1e-4 inside
        elif check == "dirichlet_error":
            u = u + 5e-4
        elif check == "neumann_error":
            u = u + 1e-3 * torch.sin(math.pi * (x + 0.5) / 1.5)  # zero on x-sides, slope there
        elif check == "reconstruction_error":
            p = 1.5 * p + 0.3
        elif check == "nonfinite":
            u = u + torch.sqrt(x - x.detach().min())  # infinite derivative at the corner
        return torch.stack([u, v, p], 1)
    return model


def test_the_exact_flows_pass_every_check():
    assert check_flow(exact_model, CASE).ok
    tg = FlowCase("taylor_green", re=100.0, n=16)
    res = check_flow(lambda q: torch.stack(flows.taylor_green(q[:, 0], q[:, 1], q[:, 2], 100.0), 1), tg)
    assert res.ok, res.summary()


@pytest.mark.parametrize("check", CHECKS)
def test_the_guard_fails_each_planted_violation_by_name(check):
    res = check_flow(_planted(check), CASE)
    assert check in res.failed, res.summary()


def test_boundary_checks_run_on_the_sides_the_model_was_given():
    def outlet_off(pts):  # exact except near the outlet x = 1, where the boundary data was withheld
        out = exact_model(pts)
        x, y = pts[:, 0], pts[:, 1]
        bump = 0.1 * torch.relu(x - 0.9) * torch.sin(math.pi * (y + 0.5) / 2) ** 2  # 0 on the other sides
        return out + torch.stack([bump, 0 * bump, 0 * bump], 1)

    kept = FlowCase("kovasznay", re=40.0, n=24, sides="bottom,top,left", neumann_sides="bottom,top,left")
    assert {"dirichlet_error", "neumann_error"} <= set(check_flow(outlet_off, CASE).failed)
    res = check_flow(outlet_off, kept)
    assert "dirichlet_error" not in res.failed and "neumann_error" not in res.failed, res.summary()
    # an outflow side with Neumann data only: the slope there is checked, the values are not
    outflow = FlowCase("kovasznay", re=40.0, n=24, sides="bottom,top,left", neumann_sides="right")
    res = check_flow(outlet_off, outflow)
    assert "neumann_error" in res.failed and "dirichlet_error" not in res.failed, res.summary()
    # no side with Neumann data: nothing to check, and nothing logged as if it had been
    none = check_flow(exact_model, FlowCase("kovasznay", re=40.0, n=24, neumann_sides=""))
    assert none.status["neumann_error"] == "n/a" and none.ok and "guard/neumann_error" not in none.metrics()
    with pytest.raises(SensorError, match="sides: unknown side 'outlet'"):
        FlowCase("kovasznay", re=40.0, sides="left,outlet")
    with pytest.raises(SensorError, match="neumann_sides: unknown side 'outlet'"):
        FlowCase("kovasznay", re=40.0, neumann_sides="outlet")


# --------------------------------------------------------------------------- the studies
def _runs(experiment):
    from tracking import store

    c = store.client()
    return c.search_runs([c.get_experiment_by_name(experiment).experiment_id], "attributes.status = 'FINISHED'")


def test_sensor_placement_study_logs_error_guard_and_a_replayable_placement(mlruns):
    from studies.run import main

    assert main(["sensor_placement", "--trials", "3", "--set", "grid=32"]) == 0
    runs = [r for r in _runs("studies/sensor_placement") if "rel_l2" in r.data.metrics]
    assert len(runs) == 3
    for r in runs:
        assert {"rel_l2", "guard/reconstruction_error", "guard/red_count"} <= set(r.data.metrics)
        assert len(r.data.tags["basis_digest"]) == 64
        from tracking import store

        path = store.client().download_artifacts(r.info.run_id, "sensors/placement.json")
        assert Placement.from_json(open(path).read()).basis_digest == r.data.tags["basis_digest"]
    # the weekly report's error-vs-K panel: one point per (method, K), the median of its runs
    from reports.sensors import error_vs_k, figures
    from tracking import store

    lines = error_vs_k(store.client(), "studies/sensor_placement", "method")
    by_key = {}
    for r in runs:
        by_key.setdefault((r.data.params["method"], int(r.data.params["k"])), []).append(r.data.metrics["rel_l2"])
    assert {(m, k) for m, pts in lines.items() for k, _ in pts} == set(by_key)
    for m, pts in lines.items():
        assert [k for k, _ in pts] == sorted(k for k, _ in pts)
        for k, err in pts:
            assert err == pytest.approx(statistics.median(by_key[(m, k)]))
    assert [t for t, _ in figures(store.client())][0].startswith("sensor_placement")


def test_flow_inverse_study_runs_carry_every_guard_figure(mlruns):
    from studies.run import main

    assert main(["flow_inverse", "--trials", "1", "--set", "lm_steps=2",
                 "--set", "n_interior=6", "--set", "width=4", "--set", "grid=16"]) == 0
    (run,) = [r for r in _runs("studies/flow_inverse") if "rel_l2" in r.data.metrics]
    # the default inverse case withholds the outlet and gives no Neumann data: that check is n/a
    assert {f"guard/{c}" for c in CHECKS if c != "neumann_error"} <= set(run.data.metrics)
    assert {"re", "re_error", "rel_l2_linear"} <= set(run.data.metrics)
    assert all(f"{c}=" in run.data.tags["guard.status"] for c in CHECKS)
    assert "neumann_error=n/a" in run.data.tags["guard.status"]
    # the weekly report's guard table: the run, each check's value in its status colour
    import datetime as dt

    from reports.kpi import render
    from reports.sensors import guard_rows
    from tracking import store

    (row,) = guard_rows(store.client())
    assert row["run_id"] == run.info.run_id and row["checks"]["neumann_error"] == (None, "n/a")
    value, status = row["checks"]["momentum_residual"]
    assert value == run.data.metrics["guard/momentum_residual"] and status in ("green", "yellow", "red")
    page = render([], [], dt.datetime.now(), dt.timedelta(days=7), guard_rows(store.client()))
    cls = {"green": "ok", "yellow": "warn", "red": "bad"}[status]
    assert f'<td class="{cls}">{value:.1e}</td>' in page and run.info.run_id[:8] in page


def test_sensor_placement_study_places_on_all_three_fields_at_once(mlruns):
    """field=uvp: one placement on the u, v and p bases (its digest names all three), its error
    over the three fields; sspor, which places on one basis, is refused by name."""
    from cpikan.config import ConfigError
    from studies.run import main
    from studies.sensors import SensorPlacementConfig
    from tracking import store

    with pytest.raises(ConfigError, match="method: sspor places on one field"):
        SensorPlacementConfig(field="uvp", method="sspor")
    assert main(["sensor_placement", "--trials", "2", "--set", "grid=16", "--set", "field=uvp"]) == 0
    runs = [r for r in _runs("studies/sensor_placement") if "rel_l2" in r.data.metrics]
    assert len(runs) == 2
    for r in runs:
        path = store.client().download_artifacts(r.info.run_id, "sensors/placement.json")
        placement = Placement.from_json(open(path).read())
        assert len(placement.field_digests) == 3 and placement.basis_digest == r.data.tags["basis_digest"]
        assert math.isfinite(r.data.metrics["rel_l2"]) and r.data.metrics["rel_l2"] > 0


# --------------------------------------------------------------------------- the inverse problem's residuals
@pytest.mark.parametrize("flow", ["kovasznay", "taylor_green"])
def test_inverse_residuals_equal_the_guards_autograd_navier_stokes(flow):
    """The jet-based momentum and boundary fluxes the solver trains on are the guard's
    autograd Navier–Stokes (steady and unsteady), for an untrained network and a wrong Re."""
    from cpikan.nn.chebykan import ScaledCPIKAN
    from cpikan.sensors.guard import navier_stokes
    from cpikan.sensors.inverse import DivergenceFree, FlowInverse, FlowInverseConfig, sensor_readings

    cfg = FlowInverseConfig(flow=flow, re=10.0, re_init=7.0, n_interior=4, n_times=2, n_boundary=5, grid=16,
                            kept_sides="bottom,left", neumann_sides="right,top", k=4)
    _, _, coords, readings, _ = sensor_readings(cfg)
    problem = FlowInverse(cfg, torch.as_tensor(coords), torch.as_tensor(readings), torch.Generator().manual_seed(0))
    x0, x1, y0, y1 = problem.case.bounds()
    lo, hi = ((x0, y0, 0.0), (x1, y1, 1.0)) if flow == "taylor_green" else ((x0, y0), (x1, y1))
    unsteady = flow == "taylor_green"
    model = DivergenceFree(ScaledCPIKAN([len(lo), 5, 2], 4, lo, hi, dtype="float64", seed=1), 3 if unsteady else -1)
    if unsteady:  # the pressure gauge g(t) moves p, never ∇p: the momentum must not see it
        with torch.no_grad():
            model.gauge.copy_(torch.tensor([0.3, -0.2, 0.1, 0.05], dtype=torch.float64))
    mom, div, _ = navier_stokes(model, problem.interior, 7.0, unsteady=flow == "taylor_green")
    fused = problem.residuals(model)
    for k, name in enumerate(("mom_x", "mom_y")):
        torch.testing.assert_close(fused[name], mom[:, k].detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(problem.terms()[name].residuals(model).detach(), fused[name])
    assert float(div.detach().abs().max()) < 1e-12
    pts = problem.neumann.detach().requires_grad_(True)
    out = model(pts)
    for k, name in enumerate(("u", "v")):
        grad = torch.autograd.grad(out[:, k].sum(), pts, retain_graph=True)[0][:, :2]
        want = (grad * problem.normals).sum(1) - problem.neumann_duv[:, k]
        torch.testing.assert_close(fused[f"bc_d{name}"], want.detach(), rtol=1e-10, atol=1e-12)
    assert len(problem.boundary) == 2 * 5 * (2 if flow == "taylor_green" else 1)
    assert coords.shape == (4 * (5 if flow == "taylor_green" else 1), 3 if flow == "taylor_green" else 2)


@pytest.mark.parametrize("kw, message", [
    ({"neumann_sides": "right,left"}, "neumann_sides: side 'left' is also in kept_sides"),
    ({"neumann_sides": "outlet"}, "neumann_sides: unknown side 'outlet'"),
    ({"flow": "poiseuille"}, "flow"),
])
def test_inverse_config_refuses_bad_input_naming_the_field(kw, message):
    from cpikan.config import ConfigError
    from cpikan.sensors.inverse import FlowInverseConfig

    with pytest.raises(ConfigError, match=message):
        FlowInverseConfig(**kw)


# --------------------------------------------------------------------------- the guarded case (make test's physics check)
def test_guarded_flow_case_keeps_every_red_line():
    """The reference model, knocked off (1 % weight noise: every boundary and residual line
    red) and trained back under the code as it is now, keeps every red line."""
    from cpikan.sensors.reference import guarded_case

    before, after = guarded_case(steps=0), guarded_case()
    assert {"momentum_residual", "dirichlet_error"} <= set(before.guard.failed)  # there is something to recover
    assert after.guard.ok, after.guard.summary()
    assert after.re_error < 1e-2 and after.rel_l2 < 1e-2


def test_the_guarded_case_fails_a_change_that_breaks_the_physics(monkeypatch):
    """A planted bug — the x-momentum's viscous term lost — is trained into the model within
    the guarded case's steps, and the guard fails it by name. (Kovasznay's pressure depends
    on x alone: a bug in ∂p/∂y would pass this case unseen; one flow cannot see everything.)"""
    from cpikan.sensors.inverse import FlowInverse
    from cpikan.sensors.reference import guarded_case

    right = FlowInverse.momentum

    def broken(self, j, dj, k):
        out = right(self, j, dj, k)  # ψ_xxy and ψ_yyy sit in slots 6 and 8, differentiated in y
        return out + self.nu() * (dj[:, 6, 1] + dj[:, 8, 1]) if k == 0 else out

    monkeypatch.setattr(FlowInverse, "momentum", broken)
    assert "momentum_residual" in guarded_case().guard.failed


def test_taylor_green_initial_condition_is_dirichlet_data_on_the_t0_face():
    from cpikan.sensors.inverse import FlowInverse, FlowInverseConfig, sensor_readings

    cfg = FlowInverseConfig(flow="taylor_green", re=10.0, n_interior=4, n_times=2, n_boundary=5, grid=16, k=4)
    _, _, coords, readings, _ = sensor_readings(cfg)
    args = (torch.as_tensor(coords), torch.as_tensor(readings), torch.Generator().manual_seed(0))
    without, with_ic = FlowInverse(cfg, *args), FlowInverse(replace(cfg, initial=True), *args)
    face = with_ic.boundary[len(without.boundary):]
    assert len(face) == 5 * 5 and bool((face[:, 2] == 0).all())
    u, v, _ = flows.taylor_green(face[:, 0], face[:, 1], face[:, 2], 10.0)
    torch.testing.assert_close(with_ic.boundary_uv[len(without.boundary):], torch.stack([u, v], 1))


@pytest.mark.parametrize("flow", ["kovasznay", "taylor_green"])
def test_prior_steps_start_the_network_at_the_linear_estimate(flow):
    """With ``prior_steps`` the network, before any physics, is the linear POD estimate from
    the sensors (steady, and at each sensor time of an unsteady flow); without, a random net."""
    from cpikan.sensors.inverse import FlowInverseConfig, solve

    cfg = FlowInverseConfig(flow=flow, re=10.0, re_init=10.0, grid=16, n_interior=4, n_times=2, n_boundary=4,
                            sensor_times=3, lm_steps=0, noise=0.0, width=6)
    _, cold = solve(cfg)
    _, warm = solve(replace(cfg, prior_steps=15))
    assert cold.rel_l2 > 0.5
    assert warm.rel_l2 < 0.1 and warm.rel_l2 < 0.3 * cold.rel_l2


def test_prior_mean_starts_every_placement_at_the_family_mean():
    """``prior="mean"`` fits the flow family's mean field, not the readings: QR and random
    sensors start from one network, nearer the flow than a random one."""
    from cpikan.sensors.inverse import FlowInverseConfig, solve

    cfg = FlowInverseConfig(re=40.0, grid=16, n_interior=4, n_boundary=4, lm_steps=0, width=6,
                            prior_steps=15, prior="mean")
    qr_model, qr = solve(cfg)
    random_model, random = solve(replace(cfg, placement="random"))
    _, cold = solve(replace(cfg, prior_steps=0))
    x = torch.rand(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(qr_model(x), random_model(x), rtol=0, atol=0)
    assert qr.rel_l2 == random.rel_l2 < 0.1 and cold.rel_l2 > 1  # measured: 0.025 and 7.1


def test_the_estimates_standard_error_is_what_noisy_readings_give():
    """σ √(φᵀ(ΘᵀΘ)⁻¹φ) at every point is the spread of estimates from readings with
    noise σ (4000 draws: within 6 % everywhere), and zero where every mode is (a wall)."""
    from cpikan.sensors.placement import standard_error

    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 300)
    snaps = np.array([sum(rng.standard_normal() * np.sin((m + 1) * np.pi * x) / (m + 1) for m in range(6))
                      for _ in range(60)])
    basis = pod_basis(snaps, 6)
    placement = place(basis, 8)
    at = list(placement.indices)
    clean = reconstruct(basis, placement, snaps[3][at])
    draws = reconstruct(basis, placement, snaps[3][at] + 0.05 * rng.standard_normal((4000, len(at))))
    predicted = standard_error(basis, placement, 0.05)
    inside = predicted > 1e-3
    assert np.abs((draws - clean).std(axis=0)[inside] / predicted[inside] - 1).max() < 0.06
    assert predicted[[0, -1]].max() < 1e-12 and inside.mean() > 0.95
