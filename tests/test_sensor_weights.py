"""A family on a graded mesh is the same family: the POD and the held-out errors weigh each
point by its share of the domain, so the answer no longer depends on where the mesher put
its points (a graded mesh's many small cells, counted point by point, made the errors
1.2-1.7× too good)."""

import json
from dataclasses import replace

import meshio
import numpy as np
import pandas as pd
import pytest

from cpikan.sensors import holdout, measure
from cpikan.sensors.data import read_family
from cpikan.sensors.placement import reconstruct
from studies import place_sensors

RNG = np.random.default_rng(0)
CENTRES = RNG.uniform([0, 0], [2, 1], (30, 2))
COEFS = RNG.normal(size=(30, 30)) * np.exp(-np.arange(30) / 6)


def _triangles(gx: np.ndarray, ny: int) -> tuple[np.ndarray, np.ndarray]:
    nx = len(gx)
    x, y = np.meshgrid(gx, np.linspace(0, 1, ny))
    pts = np.stack([x.ravel(), y.ravel(), 0 * x.ravel()], 1)
    a = (np.arange(ny - 1)[:, None] * nx + np.arange(nx - 1)[None, :]).ravel()
    return pts, np.concatenate([np.stack([a, a + 1, a + nx + 1], 1), np.stack([a, a + nx + 1, a + nx], 1)])


def _family(folder, gx, ny=21, boundary=False):
    """30 snapshots of Gaussian bumps on [0, 2] × [0, 1], meshed with columns at ``gx``."""
    pts, tri = _triangles(gx, ny)
    cells = [("triangle", tri)]
    if boundary:  # the line cells a mesher adds to mark the walls
        bottom = np.arange(len(gx))
        cells.append(("line", np.stack([bottom[:-1], bottom[1:]], 1)))
    bumps = np.exp(-((pts[:, None, :2] - CENTRES[None]) ** 2).sum(-1) / (2 * 0.2**2))
    folder.mkdir()
    for i, c in enumerate(COEFS):
        meshio.write(folder / f"s_{i}.vtu", meshio.Mesh(pts, cells, point_data={"T": bumps @ c}))
    return folder


def test_cell_measures_are_lengths_areas_and_volumes():
    cube = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], float)
    cases = {("hexahedron", (0, 1, 2, 3, 4, 5, 6, 7)): 1.0, ("wedge", (0, 1, 2, 4, 5, 6)): 0.5,
             ("pyramid", (0, 1, 2, 3, 6)): 1 / 3, ("tetra", (0, 1, 3, 4)): 1 / 6, ("quad", (0, 1, 2, 3)): 1.0,
             ("triangle", (0, 1, 2)): 0.5, ("line", (0, 6)): np.sqrt(3)}
    for (kind, nodes), expected in cases.items():
        assert measure.cell_measures(cube, kind, np.array([nodes])) == pytest.approx([expected]), kind
    pts, tri = _triangles(2 * np.linspace(0, 1, 9) ** 3, 5)  # graded: cells from 0.003 to 0.9 wide
    assert measure.cell_measures(pts, "triangle", tri).sum() == pytest.approx(2.0)
    quadratic = np.array([[0, 1, 2, 7, 7, 7]])  # triangle6: the corners make the area
    assert measure.cell_measures(cube, "triangle6", quadratic) == pytest.approx([0.5])
    with pytest.raises(ValueError, match="'polyhedron8': their measure is not computed"):
        measure.point_weights(cube, [("polyhedron8", np.array([list(range(8))]))])


def test_the_boundary_markers_of_a_mesh_are_not_domain(tmp_path):
    with_lines = read_family([_family(tmp_path / "a", np.linspace(0, 2, 11), 6, boundary=True)])
    without = read_family([_family(tmp_path / "b", np.linspace(0, 2, 11), 6)])
    assert np.allclose(with_lines.weights, without.weights) and with_lines.weights.mean() == pytest.approx(1.0)
    corner, middle = without.weights[0], without.weights[3 * 11 + 5]  # in 2 triangles, in 6 alike
    assert middle == pytest.approx(3 * corner)


def _domain_error(family, k, weights):
    """The QR estimate's held-out error over the domain, computed point by point here."""
    fit, test = holdout.split(family.snapshots, 0.2)
    fitted = holdout.bases(family, k, fit)
    placement = holdout.place_on(family, fitted, k, "qr")
    x = np.asarray(family.fields["T"], np.float64)
    est = np.stack([reconstruct(fitted[0], placement, x[t, list(placement.indices)]) for t in test])
    d = x[test] - fitted[0].mean
    return float(np.sqrt((weights * (est - x[test]) ** 2).sum() / (weights * d**2).sum()))


def test_a_graded_mesh_gives_the_uniform_meshs_answer(tmp_path):
    uniform = read_family([_family(tmp_path / "uniform", np.linspace(0, 2, 41))])
    graded = read_family([_family(tmp_path / "graded", 2 * np.linspace(0, 1, 41) ** 3)])
    assert graded.weights.max() / graded.weights.min() > 1000
    assert any("points weighted by their share of the domain (mesh's cell areas" in n for n in graded.notes)
    for k in (4, 6, 10):
        scores = [holdout.score(f, k, k, ("qr",), noise=0, draws=1)[0].error for f in (uniform, graded)]
        # what is reported is the error over the domain ...
        assert scores[1] == pytest.approx(_domain_error(graded, k, graded.weights), rel=1e-9)
        # ... and the same on either mesh (measured: within 3.1 %)
        assert scores[1] == pytest.approx(scores[0], rel=0.05), (k, scores)
        # point by point, the graded mesh's fine columns said 1.2-1.4× better than it was
        flat = replace(graded, layout=replace(graded.layout, weights=None))
        per_point = holdout.score(flat, k, k, ("qr",), noise=0, draws=1)[0].error
        assert per_point < 0.85 * _domain_error(flat, k, graded.weights), (k, per_point)


def test_weights_given_in_an_npz_are_used_and_checked(tmp_path, capsys):
    pts, _ = _triangles(np.linspace(0, 2, 11), 6)
    bumps = np.exp(-((pts[:, None, :2] - CENTRES[None]) ** 2).sum(-1) / (2 * 0.2**2))
    weights = np.where(pts[:, 0] < 1, 1.0, 3.0)
    np.savez(tmp_path / "flow.npz", T=COEFS @ bumps.T, points=pts[:, :2], weights=weights)
    out = tmp_path / "out"
    assert place_sensors.main([str(tmp_path / "flow.npz"), "--k", "5", "--out", str(out), "--no-track"]) == 0
    assert "given weights; the largest 3×" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert any("given weights" in n for n in summary["notes"])
    np.savez(tmp_path / "bad.npz", T=COEFS @ bumps.T, weights=-weights)
    assert place_sensors.main([str(tmp_path / "bad.npz"), "--k", "5", "--out", str(tmp_path / "o2"), "--no-track"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights: each point's share of the domain" in err[0], err
    assert not (tmp_path / "o2").exists()


def test_a_table_of_unevenly_spaced_points_says_they_weigh_alike(tmp_path):
    """A ParaView table has no cells: nothing says how much of the domain a point stands for."""
    for name, gx in (("graded", 2 * np.linspace(0, 1, 21) ** 3), ("uniform", np.linspace(0, 2, 21))):
        pts, _ = _triangles(gx, 11)
        (tmp_path / name).mkdir()
        for i, c in enumerate(COEFS[:5]):
            bumps = np.exp(-((pts[:, None, :2] - CENTRES[None]) ** 2).sum(-1) / (2 * 0.2**2))
            pd.DataFrame({"Points:0": pts[:, 0], "Points:1": pts[:, 1], "T": bumps @ c}).to_csv(
                tmp_path / name / f"t_{i}.csv", index=False)
    (note,) = read_family([tmp_path / "graded"]).notes
    assert "spaced unevenly (8 neighbours within 0.0858 … 0.302)" in note and "'weights'" in note
    assert read_family([tmp_path / "uniform"]).notes == ()
    scattered = np.random.default_rng(1).uniform(0, 1, (400, 2))  # random, but evenly spread: no note
    np.savez(tmp_path / "scattered.npz", T=np.random.default_rng(2).normal(size=(5, 400)), points=scattered)
    assert read_family([tmp_path / "scattered.npz"]).notes == ()
    np.savez(tmp_path / "twins.npz", T=np.random.default_rng(2).normal(size=(5, 410)),
             points=np.concatenate([scattered, scattered[:10]]))
    assert "20 points sit where another point does" in read_family([tmp_path / "twins.npz"]).notes[0]
