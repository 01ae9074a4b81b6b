"""Sensors on the user's own snapshot files: place_sensors and estimate_field.

The families here are not the project's flows: a vortex carried down a channel on an
unstructured (jittered, triangulated) mesh saved as VTU files, with a 3-component velocity
whose third component is zero; and an exactly rank-3 family on a 9 × 14 grid, so an
estimate from exact readings can be checked to round-off.
"""

import csv
import json
import shutil

import meshio
import numpy as np
import pytest

from cpikan.sensors.data import read_family
from cpikan.sensors.placement import SensorError
from studies import estimate_field, place_sensors


def _mesh(nx: int = 25, ny: int = 13) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x, y = np.meshgrid(np.linspace(0, 2, nx), np.linspace(0, 1, ny))
    pts = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], 1)
    inner = (np.abs(pts[:, 0] - 1) < 0.95) & (np.abs(pts[:, 1] - 0.5) < 0.45)
    pts[inner, :2] += rng.uniform(-0.01, 0.01, (int(inner.sum()), 2))
    a = (np.arange(ny - 1)[:, None] * nx + np.arange(nx - 1)[None, :]).ravel()
    tri = np.concatenate([np.stack([a, a + 1, a + nx + 1], 1), np.stack([a, a + nx + 1, a + nx], 1)])
    return pts, tri


def _vortex(pts: np.ndarray, t: float) -> dict[str, np.ndarray]:
    cx, cy = 0.3 + 1.4 * t, 0.5 + 0.15 * np.sin(6 * t)
    x, y = pts[:, 0], pts[:, 1]
    g = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.05)
    u, v = 1 - 4 * (y - 0.5) ** 2 + 2 * (y - cy) * g, -2 * (x - cx) * g
    return {"U": np.stack([u, v, 0 * u], 1), "p": 101325 + 50 * g - 10 * x}


@pytest.fixture
def vtu_family(tmp_path):
    """16 VTU snapshots, unpadded names (flow_2 before flow_10)."""
    pts, tri = _mesh()
    folder = tmp_path / "cfd"
    folder.mkdir()
    for i in range(16):
        meshio.write(folder / f"flow_{i}.vtu", meshio.Mesh(pts, [("triangle", tri)], point_data=_vortex(pts, i / 15)))
    return folder, pts


@pytest.fixture
def rank3_family(tmp_path):
    """30 snapshots of a·φ₁ + b·φ₂ + c·φ₃ on a 9 × 14 grid; a 31st member kept back."""
    yy, xx = np.mgrid[0:9, 0:14] / 10
    patterns = np.stack([np.sin(3 * xx + yy), np.cos(2 * yy) * xx, np.exp(-((xx - 0.6) ** 2 + (yy - 0.4) ** 2) * 5)])
    coef = np.random.default_rng(0).normal(size=(31, 3))
    snaps = np.einsum("mk,kij->mij", coef, patterns)
    np.save(tmp_path / "heat.npy", snaps[:30])
    return tmp_path / "heat.npy", snaps[30]


def test_sensors_placed_on_a_mesh_family_are_mesh_points_and_qr_reads_it_best(vtu_family, tmp_path, capsys):
    folder, pts = vtu_family
    out = tmp_path / "sensors"
    (folder / "._flow_1.vtu").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # a Mac's hidden twin: not a snapshot
    assert place_sensors.main([str(folder), "--k", "10", "--out", str(out), "--no-track"]) == 0
    printed = capsys.readouterr()
    assert "left out U[2] is the same in every snapshot" in printed.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fields"] == ["U[0]", "U[1]", "p"] and summary["snapshots"] == 16 and summary["held_out"] == 3
    errors = summary["held_out_error"]
    assert errors["qr"]["all"] < errors["random"]["all"] and errors["qr"]["all"] < errors["uniform"]["all"]
    with (out / "sensors.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["sensor"] for r in rows] == [str(i) for i in range(1, 11)] and list(rows[0]) == ["sensor", "index", "x", "y"]
    for r in rows:  # coordinates are the mesh's own points (the flat z axis dropped)
        assert np.allclose([float(r["x"]), float(r["y"])], pts[int(r["index"]), :2], atol=1e-8)
    placement = json.loads((out / "placement.json").read_text())
    assert placement["indices"] == [int(r["index"]) for r in rows] and placement["method"] == "qr"
    assert not (tmp_path / "sensors.part").exists()
    # run again into the same folder: the earlier output is replaced whole
    assert place_sensors.main([str(folder), "--k", "5", "--out", str(out), "--no-track"]) == 0
    assert len((out / "sensors.csv").read_text().splitlines()) == 6


def test_modes_the_snapshots_do_not_span_are_not_fitted(rank3_family, tmp_path, capsys):
    """A rank-3 family asked for 6 modes: modes 4–6 would be round-off (σ ~1e-8 σ₁) fitted
    to noise; they are dropped, said, and the estimate from exact readings stays exact."""
    src, new = rank3_family
    out = tmp_path / "s"
    assert place_sensors.main([str(src), "--k", "6", "--rank", "6", "--out", str(out), "--no-track"]) == 0
    assert "span fewer than 6 directions in heat (3)" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["modes"] == {"heat": 3}
    with (out / "sensors.csv").open() as f:
        rows = list(csv.DictReader(f))
    (tmp_path / "r.csv").write_text("sensor,heat\n" + "".join(
        f"{r['sensor']},{float(new[int(r['row']), int(r['col'])])!r}\n" for r in rows))
    assert estimate_field.main([str(out), str(tmp_path / "r.csv"), "--out", str(tmp_path / "e.npz")]) == 0
    with np.load(tmp_path / "e.npz") as z:
        assert np.abs(z["heat"][0] - new).max() <= 1e-9 * np.abs(new).max()


def test_paraview_csv_tables_give_the_same_sensors_as_the_meshes_they_were_saved_from(vtu_family, tmp_path):
    """Also when each file after the first lists the points in another order, as a solver
    running in parallel may write them (tables and meshes: they were refused as 'on other
    points'); a shuffled table whose points repeat cannot be matched, and is refused saying so."""
    import pandas as pd

    folder, pts = vtu_family
    for d in ("csv", "shuffled_csv", "shuffled_vtu"):
        (tmp_path / d).mkdir()
    rng = np.random.default_rng(0)
    for i, f in enumerate(sorted(folder.iterdir())):  # ParaView's "Save Data": Points:0…2, U:0…2, a mask column
        mesh = meshio.read(f)
        u = mesh.point_data["U"]
        table = pd.DataFrame({"U:0": u[:, 0], "U:1": u[:, 1], "U:2": u[:, 2], "p": mesh.point_data["p"],
                              "vtkValidPointMask": 1, **{f"Points:{d}": mesh.points[:, d] for d in range(3)}})
        table.to_csv(tmp_path / "csv" / f"{f.stem}.csv", index=False)
        order = np.arange(len(pts)) if i == 0 else rng.permutation(len(pts))
        table.iloc[order].to_csv(tmp_path / "shuffled_csv" / f"{f.stem}.csv", index=False)
        where = np.argsort(order)  # new index of each old point, for the cells
        cells = [(c.type, where[c.data]) for c in mesh.cells]
        meshio.write(tmp_path / "shuffled_vtu" / f.name, meshio.Mesh(mesh.points[order], cells,
                                                                     point_data={k: v[order] for k, v in mesh.point_data.items()}))
    for name, src in (("mesh", folder), ("table", tmp_path / "csv"), ("shuffled table", tmp_path / "shuffled_csv"),
                      ("shuffled mesh", tmp_path / "shuffled_vtu")):
        assert place_sensors.main([str(src), "--k", "6", "--out", str(tmp_path / name), "--no-track"]) == 0
    mesh, table, shuffled = (json.loads((tmp_path / n / "summary.json").read_text())
                             for n in ("mesh", "table", "shuffled table"))
    assert table["fields"] == mesh["fields"] == shuffled["fields"] == ["U[0]", "U[1]", "p"]
    assert any("vtkValidPointMask" in note for note in table["notes"])
    assert f"{len(list(folder.iterdir())) - 1} snapshots list the points in another order than" in " ".join(shuffled["notes"])
    for name in ("table", "shuffled table", "shuffled mesh"):
        assert (tmp_path / name / "sensors.csv").read_text() == (tmp_path / "mesh" / "sensors.csv").read_text(), name
    for name, same in (("shuffled table", "table"), ("shuffled mesh", "mesh")):  # (a mesh's points are weighted)
        errors = (json.loads((tmp_path / n / "summary.json").read_text())["held_out_error"] for n in (name, same))
        assert next(errors) == next(errors), name
    first = sorted((tmp_path / "csv").iterdir())[0]
    rows = pd.read_csv(first)
    rows.iloc[[*range(len(rows)), 0]].to_csv(first, index=False)  # the first point twice
    rows = pd.read_csv(sorted((tmp_path / "csv").iterdir())[1])
    rows.iloc[[*rng.permutation(len(rows)), 0]].to_csv(sorted((tmp_path / "csv").iterdir())[1], index=False)
    with pytest.raises(SensorError, match="of its points repeat, so rows cannot be matched"):
        read_family([tmp_path / "csv"])


@pytest.mark.parametrize("tool", ["fluent", "cfd_post", "star"])
def test_fluent_cfd_post_and_star_tables_give_the_paraview_tables_sensors(vtu_family, tmp_path, tool):
    """Each solver's CSV export names its coordinates its own way (x-coordinate padded with
    spaces; X [ m ] after a [Name] … [Data] preamble; "X (m)"): read as coordinates, they
    give ParaView's sensors. Before, they were taken for fields (left out as the same in
    every snapshot), and the sensors came without coordinates."""
    import pandas as pd

    folder, _ = vtu_family
    names = {"fluent": ("nodenumber", "x-coordinate", "y-coordinate", "z-coordinate", "x-velocity", "y-velocity",
                        "z-velocity", "pressure"),
             "cfd_post": ("Node Number", "X [ m ]", "Y [ m ]", "Z [ m ]", "Velocity u [ m s^-1 ]",
                          "Velocity v [ m s^-1 ]", "Velocity w [ m s^-1 ]", "Pressure [ Pa ]"),
             "star": ("Node", "X (m)", "Y (m)", "Z (m)", "Velocity[i] (m/s)", "Velocity[j] (m/s)",
                      "Velocity[k] (m/s)", "Pressure (Pa)")}[tool]
    for d in ("paraview", tool):
        (tmp_path / d).mkdir()
    for f in sorted(folder.iterdir()):
        mesh = meshio.read(f)
        u, x = mesh.point_data["U"], mesh.points
        cols = [np.arange(1, len(x) + 1), x[:, 0], x[:, 1], x[:, 2], u[:, 0], u[:, 1], u[:, 2], mesh.point_data["p"]]
        pd.DataFrame({"U:0": u[:, 0], "U:1": u[:, 1], "U:2": u[:, 2], "p": mesh.point_data["p"],
                      **{f"Points:{d}": x[:, d] for d in range(3)}}).to_csv(tmp_path / "paraview" / f"{f.stem}.csv",
                                                                            index=False)
        out = tmp_path / tool / f"{f.stem}.csv"
        if tool == "star":
            pd.DataFrame(dict(zip(names, cols))).to_csv(out, index=False)
            continue
        rows = "".join(", ".join(f"{int(v):>10d}" if j == 0 else f"{v: .17e}" for j, v in enumerate(r)) + "\n"
                       for r in zip(*cols))
        header = ", ".join(f"{n:>24}" for n in names) if tool == "fluent" else ", ".join(names)
        preamble = "[Name]\nplane 1\n\n[Data]\n" if tool == "cfd_post" else ""
        out.write_text(preamble + header + "\n" + rows)
    for d in ("paraview", tool):
        assert place_sensors.main([str(tmp_path / d), "--k", "6", "--out", str(tmp_path / f"{d}_out"), "--no-track"]) == 0
    assert (tmp_path / f"{tool}_out" / "sensors.csv").read_text() == (tmp_path / "paraview_out" / "sensors.csv").read_text()
    assert "x" in (tmp_path / f"{tool}_out" / "sensors.csv").read_text().splitlines()[0].split(",")


SPREADSHEET = {  # how a spreadsheet or a DAQ saves a table: (byte-order mark, separator, decimal mark)
    "excel_utf8": ("\ufeff", ",", "."), "excel_comma_decimal": ("", ";", ","), "labview_tabs": ("", "\t", "."),
    "cfd_post_windows": ("\ufeff", ",", "."),
}


def _save_as(table, path, dialect, preamble=""):
    bom, sep, dec = SPREADSHEET[dialect]
    rows = [sep.join(map(str, table.columns))] + [sep.join(str(v) if isinstance(v, int) else repr(float(v)).replace(".", dec)
                                                           for v in r)
                                                  for r in table.itertuples(index=False)]
    path.write_text(bom + preamble + "\n".join(rows) + "\n", encoding="utf-8")


@pytest.mark.parametrize("dialect", sorted(SPREADSHEET))
def test_tables_as_spreadsheets_and_daqs_save_them_read_as_commas_do(vtu_family, rank3_family, tmp_path, capsys, dialect):
    """A byte-order mark (Excel's "CSV UTF-8", CFD-Post on Windows) made the first column
    'ï»¿sensor' ("needs a 'sensor' column (found sensor, …)"); semicolons with decimal commas
    (Excel where the comma is the decimal mark) and tabs (LabVIEW) were one column. Each now
    gives the comma table's sensors, and its readings the same estimate."""
    import pandas as pd

    folder, _ = vtu_family
    for d in ("plain", dialect):
        (tmp_path / d).mkdir()
    for f in sorted(folder.iterdir())[:12]:
        mesh = meshio.read(f)
        table = pd.DataFrame({"U:0": mesh.point_data["U"][:, 0], "U:1": mesh.point_data["U"][:, 1], "p": mesh.point_data["p"],
                              **{f"Points:{d}": mesh.points[:, d] for d in range(2)}})
        table.to_csv(tmp_path / "plain" / f"{f.stem}.csv", index=False)
        _save_as(table, tmp_path / dialect / f"{f.stem}.csv", dialect,
                 "[Name]\nplane 1\n\n[Data]\n" if dialect == "cfd_post_windows" else "")
    for d in ("plain", dialect):
        assert place_sensors.main([str(tmp_path / d), "--k", "6", "--out", str(tmp_path / f"{d}_out"), "--no-track"]) == 0
    assert (tmp_path / f"{dialect}_out" / "sensors.csv").read_text() == (tmp_path / "plain_out" / "sensors.csv").read_text()

    src, new = rank3_family
    out = tmp_path / "sensors"
    assert place_sensors.main([str(src), "--k", "6", "--rank", "3", "--out", str(out), "--no-track"]) == 0
    sensors = pd.read_csv(out / "sensors.csv")
    readings = pd.DataFrame({"sensor": sensors["sensor"], "heat": new[sensors["row"], sensors["col"]]})
    readings.to_csv(tmp_path / "plain.csv", index=False)
    _save_as(readings, tmp_path / "saved.csv", dialect)
    for name in ("plain", "saved"):
        assert estimate_field.main([str(out), str(tmp_path / f"{name}.csv"), "--out", str(tmp_path / f"{name}.npz")]) == 0, \
            capsys.readouterr().err
    with np.load(tmp_path / "plain.npz") as a, np.load(tmp_path / "saved.npz") as b:
        assert np.array_equal(a["heat"], b["heat"])


def test_an_estimate_from_exact_readings_of_a_new_member_is_exact_and_a_faulty_sensor_is_flagged(rank3_family, tmp_path,
                                                                                               capsys):
    src, new = rank3_family
    out = tmp_path / "sensors"
    assert place_sensors.main([str(src), "--k", "6", "--rank", "3", "--out", str(out), "--no-track"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["held_out_error"]["qr"]["rank"] == 3 and summary["fields"] == ["heat"]
    with (out / "sensors.csv").open() as f:
        sensors = list(csv.DictReader(f))
    assert list(sensors[0]) == ["sensor", "index", "row", "col"]
    readings = tmp_path / "readings.csv"

    def write(values):
        readings.write_text("sensor,heat\n" + "".join(f"{s['sensor']},{float(v)!r}\n" for s, v in zip(sensors, values)))

    exact = [new[int(s["row"]), int(s["col"])] for s in sensors]
    write(exact)
    assert estimate_field.main([str(out), str(readings), "--out", str(tmp_path / "est.npz")]) == 0
    with np.load(tmp_path / "est.npz") as z:
        est = z["heat"]
    assert est.shape == (1, 9, 14)
    assert np.abs(est[0] - new).max() <= 1e-9 * np.abs(new).max()
    assert "warning" not in capsys.readouterr().err
    # sensor noise of the size place_sensors assumed (1 % of the range) is not a fault, though
    # this family fits its own snapshots exactly (their residual at the sensors is ~0) ...
    spread = float(np.ptp(np.load(src)))
    for seed in range(5):
        write(np.asarray(exact) + 0.01 * spread * np.random.default_rng(seed).standard_normal(len(exact)))
        assert estimate_field.main([str(out), str(readings), "--out", str(tmp_path / "est.npz")]) == 0
        assert "warning" not in capsys.readouterr().err
    # several snapshots in one file, told apart by a snapshot column, each estimated on its own
    other = 0.5 * new - 0.2 * np.load(src)[0]
    readings.write_text("snapshot,sensor,heat\n" + "".join(
        f"{t},{s['sensor']},{float(f[int(s['row']), int(s['col'])])!r}\n" for t, f in (("a", new), ("b", other))
        for s in reversed(sensors)))
    assert estimate_field.main([str(out), str(readings), "--out", str(tmp_path / "both.npz")]) == 0
    with np.load(tmp_path / "both.npz") as z:
        assert z["heat"].shape == (2, 9, 14) and np.allclose(z["heat"], [new, other], rtol=0, atol=1e-9)
    # ... a sensor stuck high is, by its number; left out, the others give the exact field
    write([v + (5.0 if i == 2 else 0.0) for i, v in enumerate(exact)])
    assert estimate_field.main([str(out), str(readings), "--out", str(tmp_path / "est.npz")]) == 0
    err = capsys.readouterr().err
    assert "further from the family's modes" in err and "sensor 3 alone explains it" in err, err
    assert "--without 3" in err
    with np.load(tmp_path / "est.npz") as z:
        all_six = z["heat_sd"]
    assert all_six.shape == (9, 14) and (all_six >= 0).all()
    assert estimate_field.main([str(out), str(readings), "--out", str(tmp_path / "est.npz"), "--without", "3"]) == 0
    assert "warning" not in capsys.readouterr().err
    with np.load(tmp_path / "est.npz") as z:
        assert np.abs(z["heat"][0] - new).max() <= 1e-9 * np.abs(new).max()
        assert z["heat_sd"].max() > all_six.max()  # five sensors pin the field less well than six
    # a sensor that did not read: named with the way to go on; its row may be absent then
    readings.write_text("sensor,heat\n" + "".join(f"{s['sensor']},{float(v)!r}\n" for s, v in zip(sensors, exact)
                                                  if s["sensor"] != "5"))
    assert estimate_field.main([str(out), str(readings), "--out", str(tmp_path / "est.npz")]) == 2
    assert "no reading from sensor 5" in capsys.readouterr().err
    assert estimate_field.main([str(out), str(readings), "--out", str(tmp_path / "est.npz"), "--without", "5"]) == 0
    with np.load(tmp_path / "est.npz") as z:
        assert np.abs(z["heat"][0] - new).max() <= 1e-9 * np.abs(new).max()
    for bad, message in (("9", "--without: sensor 9; the placement has sensors 1 to 6"),
                         ("1,2,3,4,5,6", "--without: leaves no sensor of the 6"), ("x", "--without: expected")):
        assert estimate_field.main([str(out), str(readings), "--out", str(tmp_path / "e2.npz"), "--without", bad]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "e2.npz").exists()


def test_fields_estimated_on_a_mesh_are_written_onto_that_mesh_and_its_plane_keeps_its_axis_names(tmp_path):
    pts, tri = _mesh()
    plane = pts[:, [2, 0, 1]] + [0.3, 0, 0]  # the same mesh in the plane x = 0.3: axes y, z
    folder = tmp_path / "yz"
    folder.mkdir()
    for i in range(10):
        meshio.write(folder / f"s{i}.vtu", meshio.Mesh(plane, [("triangle", tri)], point_data=_vortex(pts, i / 9)))
    assert place_sensors.main([str(folder), "--k", "6", "--out", str(tmp_path / "s"), "--no-track"]) == 0
    with (tmp_path / "s" / "sensors.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["sensor", "index", "y", "z"]
    truth = _vortex(pts, 0.5)
    lines = ["sensor,U[0],U[1],p"] + [",".join([r["sensor"], *(repr(float(v)) for v in (*truth["U"][int(r["index"]), :2],
                                                                                      truth["p"][int(r["index"])]))])
                                      for r in rows]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    assert estimate_field.main([str(tmp_path / "s"), str(tmp_path / "r.csv"), "--out", str(tmp_path / "e.vtu")]) == 0
    est = meshio.read(tmp_path / "e.vtu")
    assert np.array_equal(est.points, plane) and [c.type for c in est.cells] == ["triangle"]
    assert np.array_equal(est.cells[0].data, tri) and set(est.point_data) == {"U[0]", "U[1]", "p", "U[0]_sd", "U[1]_sd", "p_sd"}


def test_cell_data_of_a_finite_volume_mesh_is_read_at_cell_centroids_and_written_back_as_cell_data(tmp_path):
    pts, _ = _mesh()
    nx, ny = 25, 13  # _mesh's grid: quads on the left half, triangles on the right (two cell blocks)
    a = (np.arange(ny - 1)[:, None] * nx + np.arange(nx - 1)[None, :])
    left, right = a[:, :12].ravel(), a[:, 12:].ravel()
    quads = np.stack([left, left + 1, left + nx + 1, left + nx], 1)
    tris = np.concatenate([np.stack([right, right + 1, right + nx + 1], 1), np.stack([right, right + nx + 1, right + nx], 1)])
    blocks = [("quad", quads), ("triangle", tris)]
    centres = np.concatenate([pts[quads].mean(axis=1), pts[tris].mean(axis=1)])
    shapes = np.stack([np.sin(3 * centres[:, 0]) * centres[:, 1], np.exp(-((centres[:, 0] - 1) ** 2) * 4)])
    coef = np.random.default_rng(1).normal(size=(13, 2))  # an exactly rank-2 family; the 13th kept back
    folder = tmp_path / "fv"
    folder.mkdir()
    for i in range(12):
        p = coef[i] @ shapes
        meshio.write(folder / f"t{i}.vtu", meshio.Mesh(pts, blocks, cell_data={"p": [p[: len(quads)], p[len(quads):]]}))
    assert place_sensors.main([str(folder), "--k", "4", "--rank", "2", "--out", str(tmp_path / "s"), "--no-track"]) == 0
    with (tmp_path / "s" / "sensors.csv").open() as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # each sensor at a cell's centroid
        assert np.allclose([float(r["x"]), float(r["y"])], centres[int(r["index"]), :2], atol=1e-8)
    new = coef[12] @ shapes
    (tmp_path / "r.csv").write_text("sensor,p\n" + "".join(f"{r['sensor']},{float(new[int(r['index'])])!r}\n" for r in rows))
    assert estimate_field.main([str(tmp_path / "s"), str(tmp_path / "r.csv"), "--out", str(tmp_path / "e.vtu")]) == 0
    est = meshio.read(tmp_path / "e.vtu")
    assert not est.point_data and [len(b) for b in est.cell_data["p"]] == [len(quads), len(tris)]
    assert [c.type for c in est.cells] == ["quad", "triangle"]
    assert np.abs(np.concatenate(est.cell_data["p"]) - new).max() <= 1e-9 * np.abs(new).max()


def test_an_xdmf_time_series_is_a_family_of_its_time_steps(vtu_family, tmp_path):
    """One XDMF file with a time step per snapshot (as FEniCS writes them), which meshio.read
    refuses ("only supports one grid"): the same sensors as the VTU files of those steps."""
    folder, pts = vtu_family
    _, tri = _mesh()
    with meshio.xdmf.TimeSeriesWriter(tmp_path / "run.xdmf", data_format="XML") as writer:
        writer.write_points_cells(pts, [("triangle", tri)])
        for i in range(16):
            writer.write_data(i / 15, point_data=meshio.read(folder / f"flow_{i}.vtu").point_data)
    for name, src in (("xdmf", tmp_path / "run.xdmf"), ("vtu", folder)):
        assert place_sensors.main([str(src), "--k", "6", "--out", str(tmp_path / name), "--no-track"]) == 0
    series = json.loads((tmp_path / "xdmf" / "summary.json").read_text())
    assert series["snapshots"] == 16 and series["fields"] == ["U[0]", "U[1]", "p"]
    assert (tmp_path / "xdmf" / "sensors.csv").read_text() == (tmp_path / "vtu" / "sensors.csv").read_text()


def test_an_npz_family_with_coordinates_reads_like_its_mesh(vtu_family, tmp_path):
    folder, pts = vtu_family
    meshes = [meshio.read(folder / f"flow_{i}.vtu") for i in range(16)]
    np.savez(tmp_path / "fam.npz", points=pts, p=np.stack([m.point_data["p"] for m in meshes]),
             u=np.stack([m.point_data["U"][:, 0] for m in meshes]))
    for name, src, fields in (("npz", tmp_path / "fam.npz", "u,p"), ("mesh", folder, "U[0],p")):
        assert place_sensors.main([str(src), "--k", "5", "--fields", fields, "--out", str(tmp_path / name),
                                   "--no-track"]) == 0
    npz, mesh = ((tmp_path / n / "sensors.csv").read_text() for n in ("npz", "mesh"))
    assert npz.splitlines()[0] == "sensor,index,x,y" and npz == mesh  # the flat z axis dropped, the same sensors


def test_uniform_placement_spreads_over_a_mesh_and_a_non_square_grid(vtu_family, rank3_family, tmp_path):
    folder, pts = vtu_family
    src, _ = rank3_family
    for name, data in (("mesh", folder), ("grid", src)):
        assert place_sensors.main([str(data), "--k", "6", "--method", "uniform", "--out", str(tmp_path / name),
                                   "--no-track"]) == 0
    mesh = json.loads((tmp_path / "mesh" / "placement.json").read_text())["indices"]
    spread = pts[mesh, :2]
    gaps = np.linalg.norm(spread[:, None] - spread[None], axis=-1) + np.eye(6) * 9
    assert gaps.min() > 0.45  # six points of a 2 × 1 channel, farthest-point apart
    grid = json.loads((tmp_path / "grid" / "placement.json").read_text())["indices"]
    assert len(set(np.divmod(grid, 14)[0])) >= 2 and len(set(np.divmod(grid, 14)[1])) >= 3


def test_sensors_go_only_where_the_candidates_allow(vtu_family, rank3_family, tmp_path):
    import pandas as pd

    folder, pts = vtu_family
    walls = np.flatnonzero((pts[:, 1] < 0.2) | (pts[:, 1] > 0.8))
    pd.DataFrame({"x": pts[walls, 0], "y": pts[walls, 1]}).to_csv(tmp_path / "walls.csv", index=False)
    for method in ("qr", "random", "uniform"):
        out = tmp_path / method
        assert place_sensors.main([str(folder), "--k", "6", "--method", method, "--candidates",
                                   str(tmp_path / "walls.csv"), "--out", str(out), "--no-track"]) == 0
        assert set(json.loads((out / "placement.json").read_text())["indices"]) <= set(walls)
        assert json.loads((out / "summary.json").read_text())["candidates"] == len(walls)
    # the walls as Fluent exports them: its own names for the coordinates, padded
    (tmp_path / "fluent.csv").write_text("nodenumber,   x-coordinate,   y-coordinate\n" + "".join(
        f"{n:>10d}, {pts[i, 0]: .17e}, {pts[i, 1]: .17e}\n" for n, i in enumerate(walls, 1)))
    assert place_sensors.main([str(folder), "--k", "6", "--candidates", str(tmp_path / "fluent.csv"),
                               "--out", str(tmp_path / "fluent"), "--no-track"]) == 0
    assert (tmp_path / "fluent" / "sensors.csv").read_text() == (tmp_path / "qr" / "sensors.csv").read_text()
    src, _ = rank3_family  # on a grid, by index: the left half only
    left = [i for i in range(9 * 14) if i % 14 < 7]
    pd.DataFrame({"index": left}).to_csv(tmp_path / "left.csv", index=False)
    assert place_sensors.main([str(src), "--k", "4", "--candidates", str(tmp_path / "left.csv"),
                               "--out", str(tmp_path / "grid"), "--no-track"]) == 0
    assert all(i % 14 < 7 for i in json.loads((tmp_path / "grid" / "placement.json").read_text())["indices"])


def test_a_sweep_over_k_scores_each_k_as_a_single_run_would_and_places_nothing(rank3_family, tmp_path, capsys):
    src, _ = rank3_family
    assert place_sensors.main([str(src), "--k", "2:8:2", "--out", str(tmp_path / "sweep"), "--no-track"]) == 0
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["error_vs_k.html", "summary.json"]
    assert "choose K and run again" in capsys.readouterr().out
    sweep = json.loads((tmp_path / "sweep" / "summary.json").read_text())["sweep"]
    assert [k for k, _, _ in sweep["qr"]] == [2, 4, 6, 8] and set(sweep) == {"qr", "random", "uniform"}
    assert place_sensors.main([str(src), "--k", "6", "--out", str(tmp_path / "one"), "--no-track"]) == 0
    one = json.loads((tmp_path / "one" / "summary.json").read_text())["held_out_error"]
    for method, points in sweep.items():
        assert points[2][1:] == [one[method]["all"], one[method]["rank"]]


def test_a_tracked_placement_records_its_files_and_replays(vtu_family, tmp_path, mlruns):
    import mlflow

    from tracking import replay

    folder, _ = vtu_family
    assert place_sensors.main([str(folder), "--k", "8", "--out", str(tmp_path / "s")]) == 0
    mlflow.set_tracking_uri(f"sqlite:///{mlruns / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["place_sensors"], output_format="list")
    assert len(json.loads(run.data.tags["cpikan.datasets"])) == 16
    assert run.data.tags["fields"] == "U[0],U[1],p" and "U[2]" in run.data.tags["notes"]
    assert run.data.metrics["rel_l2"] == run.data.metrics["rel_l2_qr"] < run.data.metrics["rel_l2_random"]
    ok, message = replay.replay(run.info.run_id)
    assert ok, message
    # a sweep is one run too: the error at each K as a result, and as a series the UI charts over K
    assert place_sensors.main([str(folder), "--k", "3,6", "--out", str(tmp_path / "sweep")]) == 0
    sweep = [r for r in mlflow.search_runs(experiment_names=["place_sensors"], output_format="list")
             if "rel_l2_qr_k6" in r.data.metrics]
    assert len(sweep) == 1
    history = mlflow.MlflowClient().get_metric_history(sweep[0].info.run_id, "rel_l2_qr")
    assert sorted((m.step, m.value) for m in history) == [(3, sweep[0].data.metrics["rel_l2_qr_k3"]),
                                                          (6, sweep[0].data.metrics["rel_l2_qr_k6"])]
    ok, message = replay.replay(sweep[0].info.run_id)
    assert ok, message


def test_a_run_over_many_snapshot_files_records_and_checks_every_one(tmp_path, mlruns):
    """90 files' paths and hashes outgrow an MLflow tag (8000 characters, truncated past
    that: the run failed at ~50 files); the map goes to an artifact, and replay still checks
    each file."""
    import mlflow

    from tracking import replay, tracker

    pts, tri = _mesh(9, 5)
    folder = tmp_path / "a_long_folder_name_as_a_cfd_case_directory_has"
    folder.mkdir()
    for i in range(90):
        meshio.write(folder / f"snapshot_of_the_channel_case_{i:04d}.vtu",
                     meshio.Mesh(pts, [("triangle", tri)], point_data=_vortex(pts, i / 89)))
    assert place_sensors.main([str(folder), "--k", "4", "--out", str(tmp_path / "s")]) == 0
    mlflow.set_tracking_uri(f"sqlite:///{mlruns / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["place_sensors"], output_format="list")
    recorded = tracker.recorded_datasets(mlflow.MlflowClient(), run)
    assert len(recorded) == 90 and "@artifact" in json.loads(run.data.tags["cpikan.datasets"])
    assert recorded["snapshot_of_the_channel_case_0042.vtu"]["path"].endswith("_0042.vtu")
    ok, message = replay.replay(run.info.run_id)
    assert ok, message
    with (folder / "snapshot_of_the_channel_case_0077.vtu").open("a") as f:
        f.write(" ")
    with pytest.raises(Exception, match="snapshot_of_the_channel_case_0077.vtu.*changed since the run"):
        replay.replay(run.info.run_id)


def test_points_nan_in_every_snapshot_are_outside_the_flow(rank3_family, tmp_path, capsys):
    """A solid body (or a PIV mask) exported as NaN at the same points in every snapshot: no
    sensor goes there, estimates are NaN there and exact elsewhere; a candidate inside it
    is refused by name (every NaN was refused before)."""
    src, new = rank3_family
    snaps = np.load(src)
    solid = np.zeros(new.shape, bool)
    solid[3:6, 4:8] = True
    snaps[:, solid] = np.nan
    np.save(tmp_path / "solid.npy", snaps)
    out = tmp_path / "sensors"
    assert place_sensors.main([str(tmp_path / "solid.npy"), "--k", "6", "--rank", "3", "--out", str(out),
                               "--no-track"]) == 0
    assert "12 point(s) NaN in every snapshot are outside the flow" in capsys.readouterr().err
    with (out / "sensors.csv").open() as f:
        sensors = list(csv.DictReader(f))
    assert len(sensors) == 6 and not any(solid[int(s["row"]), int(s["col"])] for s in sensors)
    (tmp_path / "r.csv").write_text("sensor,solid\n" + "".join(
        f"{s['sensor']},{float(new[int(s['row']), int(s['col'])])!r}\n" for s in sensors))
    assert estimate_field.main([str(out), str(tmp_path / "r.csv"), "--out", str(tmp_path / "est.npz")]) == 0
    with np.load(tmp_path / "est.npz") as z:
        est = z["solid"][0]
    assert np.isnan(est[solid]).all() and np.abs(est[~solid] - new[~solid]).max() <= 1e-9 * np.abs(new).max()
    (tmp_path / "c.csv").write_text("row,col\n0,0\n4,5\n8,13\n1,1\n2,2\n7,7\n6,12\n")
    assert place_sensors.main([str(tmp_path / "solid.npy"), "--k", "4", "--candidates", str(tmp_path / "c.csv"),
                               "--out", str(tmp_path / "o2"), "--no-track"]) == 2
    assert "is outside the flow (NaN in every snapshot); 1 such" in capsys.readouterr().err


def _bad(case: str, tmp_path, folder, pts, tri):
    """The command line for ``case``, after planting its fault under tmp_path."""
    out = ["--out", str(tmp_path / "out")]
    if case == "missing":
        return [str(tmp_path / "nowhere"), "--k", "4", *out]
    if case == "nan":
        data = _vortex(pts, 0.5)
        data["p"][7] = np.nan
        meshio.write(folder / "flow_7.vtu", meshio.Mesh(pts, [("triangle", tri)], point_data=data))
    if case == "other mesh":
        meshio.write(folder / "flow_9.vtu", meshio.Mesh(pts[:-1], [("triangle", tri[:1])],
                                                        point_data={k: v[:-1] for k, v in _vortex(pts, 0.5).items()}))
    if case == "mixed":
        np.save(folder / "extra.npy", np.zeros(len(pts)))
    if case.startswith("candidates"):
        rows = {"candidates off the mesh": "x,y\n0.5123,0.3\n", "candidates too few": "index\n1\n2\n",
                "candidates no columns": "a,b\n1,2\n", "candidates out of range": "index\n1\n99999\n"}[case]
        (tmp_path / "c.csv").write_text(rows)
        return [str(folder), "--k", "4", "--candidates", str(tmp_path / "c.csv"), *out]
    if case == "out is a data folder":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "thesis.tex").write_text("years of work")
    if case == "one snapshot":
        return [str(folder / "flow_3.vtu"), "--k", "4", *out]
    args = {"no field": ["--fields", "T"], "constant field": ["--fields", "U[2]"], "k > points": ["--k", "1000"],
            "k = 0": ["--k", "0"], "k not a range": ["--k", "2:x"], "k empty range": ["--k", "8:4"], "rank > snapshots": ["--rank", "40"], "hold-out": ["--hold-out", "1.5"],
            "method": ["--method", "sspor"]}.get(case, [])
    k = [] if "--k" in args else ["--k", "4"]
    return [str(folder), *k, *args, *out]


@pytest.mark.parametrize("case, message", [
    ("missing", "snapshots: "), ("nan", "NaN"), ("other mesh", "on other points"), ("mixed", ".npy and .vtu files together; give one kind"),
    ("one snapshot", "at least 2"), ("no field", "fields: 'T' is not in"), ("constant field", "fields: U[2] is the same"),
    ("k > points", "k: 1000 sensors"), ("k = 0", "--k: numbers of sensors are positive"),
    ("k not a range", "--k: a number of sensors (12), a range"), ("k empty range", "--k: the range '8:4' holds no K"), ("rank > snapshots", "rank: "), ("hold-out", "hold_out: "),
    ("method", "--method: unknown 'sspor'"), ("candidates off the mesh", "(0.5123, 0.3) is no point"),
    ("candidates too few", "candidates: 2 points"), ("candidates no columns", "needs an 'index' column or the coordinates x, y"),
    ("candidates out of range", "candidates: indices must lie in 0"), ("out is a data folder", "--out: "),
])
def test_bad_snapshot_input_is_one_line_naming_the_field_and_writes_nothing(vtu_family, tmp_path, capsys, case, message):
    folder, pts = vtu_family
    _, tri = _mesh()
    assert place_sensors.main([*_bad(case, tmp_path, folder, pts, tri), "--no-track"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    if case == "out is a data folder":  # refused, and left as it was
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["thesis.tex"]
    else:
        assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out.part").exists()


def test_a_sensor_that_dropped_out_of_some_snapshots_is_left_out_of_those_only(rank3_family, tmp_path, capsys):
    """A time series where sensor 2 did not read at t1 (its row absent) and sensor 5 at t2
    (an empty cell), as a DAQ logs a dropout: each snapshot is estimated from the sensors
    that read in it, as --without would for that snapshot alone, the others as if complete,
    and the standard error is per snapshot. Before, the whole file was refused."""
    import pandas as pd

    src, new = rank3_family
    out = tmp_path / "sensors"
    assert place_sensors.main([str(src), "--k", "6", "--rank", "3", "--out", str(out), "--no-track"]) == 0
    sensors = pd.read_csv(out / "sensors.csv")
    fields = {"t0": new, "t1": 0.5 * new - 0.2 * np.load(src)[0], "t2": np.load(src)[3]}
    table = pd.DataFrame([{"snapshot": t, "sensor": s, "heat": f[r, c]} for t, f in fields.items()
                          for s, r, c in zip(sensors["sensor"], sensors["row"], sensors["col"])])
    table = table[~((table.snapshot == "t1") & (table.sensor == 2))].astype({"heat": object})
    table.loc[(table.snapshot == "t2") & (table.sensor == 5), "heat"] = ""
    table.to_csv(tmp_path / "r.csv", index=False)
    assert estimate_field.main([str(out), str(tmp_path / "r.csv"), "--out", str(tmp_path / "all.npz")]) == 0
    assert "2 snapshot(s) lack readings (sensor 2 in snapshot t1 first)" in capsys.readouterr().err
    with np.load(tmp_path / "all.npz") as z:
        est, sd = z["heat"], z["heat_sd"]
    assert est.shape == sd.shape == (3, 9, 14)
    for t, (name, field) in enumerate(fields.items()):
        alone = table[table.snapshot == name].drop(columns="snapshot")
        alone = alone[alone.heat != ""]
        alone.to_csv(tmp_path / "one.csv", index=False)
        gone = sorted(set(sensors["sensor"]) - set(alone.sensor))
        args = ["--without", ",".join(map(str, gone))] if gone else []
        assert estimate_field.main([str(out), str(tmp_path / "one.csv"), "--out", str(tmp_path / "one.npz"), *args]) == 0
        with np.load(tmp_path / "one.npz") as z:
            assert np.array_equal(z["heat"][0], est[t]) and np.array_equal(z["heat_sd"], sd[t])
        assert np.abs(est[t] - field).max() <= 1e-9 * np.abs(field).max()  # 5 sensors still pin 3 modes
    assert sd[1].max() > sd[0].max() and sd[2].max() > sd[0].max()
    capsys.readouterr()
    table[table.sensor != 4].to_csv(tmp_path / "r.csv", index=False)  # a sensor that read in no snapshot: named
    assert estimate_field.main([str(out), str(tmp_path / "r.csv"), "--out", str(tmp_path / "x.npz")]) == 2
    assert "no reading from sensor 4 in any snapshot; to estimate without it: --without 4" in capsys.readouterr().err
    table.loc[table.snapshot == "t1", "heat"] = ""  # a snapshot nothing read in
    table.to_csv(tmp_path / "r.csv", index=False)
    assert estimate_field.main([str(out), str(tmp_path / "r.csv"), "--out", str(tmp_path / "x.npz")]) == 2
    assert "no sensor read heat in snapshot t1" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("missing sensor", "no reading from sensor 4"), ("unknown column", "column 'q'"), ("not a number", "line 3"),
    ("twice", "sensor 2 read twice"), ("out of range", "sensors 1 to 4"), ("other basis", "placement: chosen on basis"),
    ("suffix", "--out: est.csv"), ("no rows", "has no rows"), ("infinite", "line 4: sensor 3 reads Inf"),
])
def test_bad_readings_are_one_line_naming_the_field_and_write_nothing(rank3_family, tmp_path, capsys, case, message):
    src, _ = rank3_family
    out = tmp_path / "sensors"
    assert place_sensors.main([str(src), "--k", "4", "--out", str(out), "--no-track"]) == 0
    rows = ["sensor,heat", "1,0.5", "2,0.1", "3,0.2", "4,0.3"]
    rows = {"missing sensor": rows[:4], "unknown column": ["sensor,heat,q"] + [r + ",1" for r in rows[1:]],
            "not a number": [rows[0], rows[1], "2,warm", *rows[3:]], "twice": [*rows, "2,0.4"],
            "out of range": [*rows, "5,0.1"], "no rows": rows[:1], "infinite": [*rows[:3], "3,inf", rows[4]]}.get(case, rows)
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    if case == "other basis":  # a basis file from another placement
        assert place_sensors.main([str(src), "--k", "4", "--rank", "2", "--out", str(tmp_path / "b"), "--no-track"]) == 0
        shutil.copy(tmp_path / "b" / "basis.npz", out / "basis.npz")
    target = tmp_path / ("est.csv" if case == "suffix" else "est.npz")
    capsys.readouterr()
    assert estimate_field.main([str(out), str(tmp_path / "r.csv"), "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not target.exists() and not list(tmp_path.glob("est*"))
