"""Snapshot families from the user's own files: what a sensor placement is fitted to.

A family is m snapshots of one or more fields on one set of n points, read from
- one ``.npy``: (m, ny, nx) images on a grid, or (m, n) fields on points in a fixed order;
- one ``.npz``: one such array per field, and optionally ``points`` (n, d), their coordinates;
- one XDMF time series (``.xdmf``, a time step per snapshot, as FEniCS writes them);
- several files (or a folder of them), one snapshot each, in name order (numbers read as
  numbers, ``t2`` before ``t10``): ``.npy`` arrays of one shape; CSV tables with a row per
  point (ParaView's "Save Data": coordinates ``Points:0…`` or ``x, y, z``, components
  ``U:0``); or meshes that meshio reads (``.vtu``, ``.vtk``, ``.xdmf``, …) on the same
  points, fields from their point data (a mesh with cell data only, as a finite-volume
  solver writes it: at the cells' centroids). A vector field is split into its components,
  ``U[0]``, ``U[1]``, ….
A field that is the same in every snapshot holds nothing a sensor could tell, so it is left
out with a note (or refused, when asked for by name). Points NaN in every snapshot are
outside the flow (:attr:`Family.outside`); a NaN in some snapshots only is refused. Every
error names the file and the field; nothing is unpickled.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cpikan.sensors.placement import SensorError


@dataclass(frozen=True)
class Layout:
    """Where a family's n values sit."""

    points: np.ndarray | None = None  # (n, d) coordinates, flat axes dropped; None: a grid or the order
    axis_names: tuple[str, ...] = ()  # of points' columns
    grid: tuple[int, ...] | None = None  # (ny, nx) when the snapshots are images
    mesh_points: np.ndarray | None = None  # (n, 3) as read, for writing fields back onto the mesh
    cells: tuple[tuple[str, np.ndarray], ...] = ()  # the mesh's cells (type, connectivity), as read
    on_cells: bool = False  # values are cell data (points are the cells' centroids)
    # each point's share of the domain (mean 1; cpikan.sensors.measure), None: all alike
    weights: np.ndarray | None = None


def _located(points: np.ndarray) -> Layout:
    """Coordinates as read: axes along which every point is the same (a 2-D mesh stored in
    3-D) dropped, the others named x, y, z by position."""
    keep = [d for d in range(points.shape[1]) if np.ptp(points[:, d]) > 0] or [0]
    return Layout(points[:, keep], tuple("xyz"[d] for d in keep), mesh_points=points)


@dataclass(frozen=True)
class Family:
    fields: dict[str, np.ndarray]  # name → (m, n) snapshots as rows
    layout: Layout
    files: tuple[Path, ...]
    notes: tuple[str, ...] = field(default=())  # what was left out, and why
    outside: np.ndarray | None = None  # (n,) bool: points NaN in every snapshot (a solid, a mask), set to 0

    @property
    def points(self) -> np.ndarray | None:
        return self.layout.points

    @property
    def grid(self) -> tuple[int, ...] | None:
        return self.layout.grid

    @property
    def weights(self) -> np.ndarray | None:
        return self.layout.weights

    @property
    def snapshots(self) -> int:
        return int(next(iter(self.fields.values())).shape[0])

    @property
    def size(self) -> int:
        return int(next(iter(self.fields.values())).shape[1])

    def coordinates(self) -> np.ndarray:
        """(n, d) positions: the given coordinates, else (row, col) on the grid, else the index."""
        if self.points is not None:
            return self.points
        if self.grid is not None:
            rows, cols = np.divmod(np.arange(self.size), self.grid[1])
            return np.stack([rows, cols], 1).astype(np.float64)
        return np.arange(self.size, dtype=np.float64)[:, None]

    def axes(self) -> tuple[str, ...]:
        """Names of :meth:`coordinates`' columns."""
        if self.points is not None:
            return self.layout.axis_names
        return ("row", "col") if self.grid is not None else ("index",)


def candidate_points(family: Family, path: Path) -> np.ndarray:
    """Indices of the points a CSV names as places a sensor may go: an ``index`` column, or
    the family's coordinate columns (``x, y`` / ``row, col``), each matched to a point of the
    family (within 1e-6 of the domain's size; a coordinate that is no point is an error)."""
    import scipy.spatial

    table = _read_table(path, "candidates")
    axes = list(family.axes())
    named = _axis_columns(list(table))  # a solver's own names (x-coordinate, X (m), …) for x, y, z
    if not set(axes) <= set(table) and all(a in "xyz" and "xyz".index(a) in named for a in axes):
        axes = [named["xyz".index(a)] for a in axes]
    if "index" in table:
        idx = table["index"].to_numpy()
        if idx.dtype.kind not in "iu":
            raise SensorError(f"candidates: {path}: the index column holds {idx.dtype}, not point numbers")
        return idx.astype(np.int64)
    if not set(axes) <= set(table):
        raise SensorError(f"candidates: {path} needs an 'index' column or the coordinates {', '.join(axes)} "
                          f"(found {', '.join(map(str, table)) or 'nothing'})")
    coords = table[axes].to_numpy(np.float64)
    points = family.coordinates()
    size = float(np.linalg.norm(np.ptp(points, 0))) or 1.0
    dist, idx = scipy.spatial.cKDTree(points).query(coords)
    far = np.flatnonzero(dist > 1e-6 * size)
    if len(far):
        where = ", ".join(f"{c:g}" for c in coords[far[0]])
        raise SensorError(f"candidates: {path} line {far[0] + 2}: ({where}) is no point of the "
                          f"snapshots (the nearest is {dist[far[0]]:.3g} away; {len(far)} such rows)")
    return idx.astype(np.int64)


def snapshot_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The files ``inputs`` name (a folder: its ``.npy``, ``.csv`` and mesh files), in name
    order; all of one kind."""
    from cpikan.psi.io import name_order

    suffixes = _suffixes()
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            inside = sorted((f for f in p.iterdir()  # not hidden: macOS's ._flow_1.vtu twins
                             if f.is_file() and _suffix(f) in suffixes and not f.name.startswith(".")), key=name_order)
            if not inside:
                raise SensorError(f"snapshots: {p} holds no .npy, .csv or mesh files (.vtu, .vtk, .xdmf, …)")
            files += inside
        elif p.is_file():
            if _suffix(p) not in suffixes and p.suffix != ".npz":
                raise SensorError(f"snapshots: {p} is neither .npy, .npz, .csv nor a mesh meshio reads")
            files.append(p)
        else:
            raise SensorError(f"snapshots: {p}: no such file or folder")
    if len(files) > 1 and any(f.suffix == ".npz" for f in files):
        raise SensorError("snapshots: an .npz holds a whole family; give it alone")
    kinds = sorted({_suffix(f) for f in files})
    if len(kinds) > 1:
        raise SensorError(f"snapshots: {' and '.join(kinds)} files together; give one kind (e.g. 'folder/*{kinds[-1]}')")
    return files


def read_family(inputs: Sequence[str | Path], fields: Sequence[str] | None = None) -> Family:
    """The snapshot family in ``inputs``; ``fields`` picks fields by name (``U`` is all of a
    vector's components, ``U[1]`` one), ``None`` takes every field that varies."""
    files = snapshot_files(inputs)
    reordered: list[str] = []
    if len(files) == 1 and files[0].suffix == ".npz":
        raw, layout = _read_npz(files[0])
    elif len(files) == 1 and files[0].suffix == ".npy":
        arr = _load_npy(files[0])
        if arr.ndim not in (2, 3):
            raise SensorError(f"snapshots: {files[0]} has shape {arr.shape}; expected (m, ny, nx) or (m, n)")
        raw, layout = {files[0].stem: arr}, Layout(grid=arr.shape[1:] if arr.ndim == 3 else None)
    elif all(f.suffix == ".npy" for f in files):
        raw, layout = _stack_npy(files)
    elif all(f.suffix == ".csv" for f in files):
        raw, layout, reordered = _stack_tables(files)
    else:
        raw, layout, reordered = _stack_meshes(files)
    m = next(iter(raw.values())).shape[0]
    if m < 2:
        raise SensorError(f"snapshots: {', '.join(f.name for f in files)} hold{'s' if len(files) == 1 else ''} "
                          f"{m} snapshot; a family needs at least 2")
    chosen, notes = _select(raw, fields, files)
    chosen, outside, more = _outside(chosen, files)
    layout, weighed = _weighed(layout, files[0])
    if reordered:
        notes.append(f"{len(reordered)} snapshot{'s' * (len(reordered) > 1)} list the points in another order than {files[0].name} "
                     f"({reordered[0]}{', …' if len(reordered) > 1 else ''}); matched by coordinates")
    return Family(chosen, layout, tuple(files), tuple(notes + more + weighed), outside)


def _match_points(points: np.ndarray, other: np.ndarray, tol: float) -> np.ndarray | None:
    """For each of ``points``, the row of ``other`` at the same place (within ``tol``), when
    ``other`` holds the same points in another order, as a solver running in parallel may
    write each time step; None when it holds other points, or when points repeat (then
    rows cannot be told apart by where they are)."""
    from scipy.spatial import cKDTree

    if other.shape != points.shape:
        return None
    dist, rows = cKDTree(other).query(points, distance_upper_bound=tol + np.finfo(float).tiny)
    if not np.all(dist <= tol) or len(np.unique(rows)) != len(rows):
        return None
    return rows


def _weighed(layout: Layout, path: Path) -> tuple[Layout, list[str]]:
    """The layout with each point's share of the domain from the mesh's cells, and a note
    saying so (or why the points weigh alike)."""
    from cpikan.sensors import measure

    if layout.weights is None and layout.cells:
        try:
            points = layout.mesh_points if layout.mesh_points is not None else layout.points
            weigh = measure.cell_weights if layout.on_cells else measure.point_weights
            layout = replace(layout, weights=weigh(points, layout.cells))
        except ValueError as exc:
            return layout, [f"{path.name}: {exc}, so every point weighs alike in the POD and the errors"]
    if layout.weights is None:
        return layout, _uneven(layout.points, path)
    w = layout.weights[layout.weights > 0]
    what = "given weights" if not layout.cells else "mesh's cell " + (
        "volumes" if max(measure.dimension(k) for k, _ in layout.cells) == 3 else "areas")
    return layout, [f"points weighted by their share of the domain ({what}; the largest {w.max() / w.min():.3g}× "
                    "the smallest): the POD and the errors are of the field over the domain, not per point"]


def _uneven(points: np.ndarray | None, path: Path, ratio: float = 3.0) -> list[str]:
    """A note when points with no cells to weigh them by are spaced unevenly (a graded
    mesh's points in a table): dense regions then count more in the POD and the errors."""
    import scipy.spatial

    if points is None or len(points) < 20:
        return []
    dist = scipy.spatial.cKDTree(points).query(points, k=9)[0]
    twins = int(np.count_nonzero(dist[:, 1] == 0))
    if twins:  # a multi-block export repeats the points its blocks share
        return [f"{path.name}: {twins} points sit where another point does, so their place counts twice in the "
                "POD and the errors"]
    # the density at 8 neighbours' scale: random points spread evenly stay within 1.8× (5th-95th
    # percentile), the nearest neighbour alone would spread 7.6×
    lo, hi = np.percentile(dist[:, -1], [5, 95])
    if hi / lo <= ratio:
        return []
    return [f"{path.name}: the points are spaced unevenly (8 neighbours within {lo:.3g} … {hi:.3g}) and nothing says "
            "how much of the domain each stands for, so each weighs alike and dense regions count more; a mesh "
            "file (VTU) or an .npz with 'weights' gives the POD and the errors over the domain"]


def _progress(files: list[Path]) -> Any:
    """A progress bar over many files (on a terminal only)."""
    from tqdm import tqdm

    return tqdm(files, desc="snapshots", unit="file", disable=None if len(files) > 20 else True, mininterval=1)


def _suffix(path: Path) -> str:
    return "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix


def _suffixes() -> set[str]:
    import meshio

    return {".npy", ".csv", *meshio.extension_to_filetypes}


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise SensorError(f"snapshots: {path} is not a readable .npy of numbers ({str(exc).splitlines()[0]})") from None
    if arr.dtype.kind not in "fiu":
        raise SensorError(f"snapshots: {path} holds {arr.dtype}, not numbers")
    return arr


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], Layout]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as exc:
        raise SensorError(f"snapshots: {path} is not a readable .npz of numbers ({str(exc).splitlines()[0]})") from None
    points = arrays.pop("points", None)
    weights = arrays.pop("weights", None)
    if not arrays:
        raise SensorError(f"snapshots: {path} holds no field arrays (only {', '.join(arrays) or 'points'})")
    shapes = {k: a.shape for k, a in arrays.items()}
    first = next(iter(shapes.values()))
    for k, s in shapes.items():
        if s != first:
            raise SensorError(f"snapshots: {path}: field {k!r} has shape {s}, {next(iter(shapes))!r} has {first}; "
                              "all fields must be (m, ny, nx) or (m, n) alike")
        if arrays[k].dtype.kind not in "fiu" or arrays[k].ndim not in (2, 3):
            raise SensorError(f"snapshots: {path}: field {k!r} is {arrays[k].dtype} {s}; expected numbers, "
                              "(m, ny, nx) or (m, n)")
    grid = first[1:] if len(first) == 3 else None
    n = int(np.prod(first[1:]))
    if weights is not None:  # each point's share of the domain (cell volumes), from the user's solver
        from cpikan.sensors.measure import check_weights

        try:
            weights = check_weights(np.ravel(weights) if grid else weights, n)
        except ValueError as exc:
            raise SensorError(f"snapshots: {path}: {exc}") from None
    if points is not None:
        points = np.asarray(points, np.float64)
        if points.ndim != 2 or points.shape[0] != n or not 1 <= points.shape[1] <= 3:
            raise SensorError(f"points: {path} has points of shape {points.shape}; expected ({n}, 1–3)")
        located = _located(points)
        return arrays, replace(located, mesh_points=None, weights=weights)  # an .npz has no mesh to write onto
    return arrays, Layout(grid=grid, weights=weights)


def _stack_npy(files: list[Path]) -> tuple[dict[str, np.ndarray], Layout]:
    first = _load_npy(files[0])
    if first.ndim not in (1, 2):
        raise SensorError(f"snapshots: {files[0]} has shape {first.shape}; one snapshot per file is (ny, nx) or (n,)")
    out = np.empty((len(files), *first.shape), np.float64 if first.dtype.kind != "f" else first.dtype)
    for i, f in enumerate(files):
        a = _load_npy(f)
        if a.shape != first.shape:
            raise SensorError(f"snapshots: {f} has shape {a.shape}, {files[0].name} has {first.shape}; "
                              "all must be on one grid")
        out[i] = a
    return {"field": out}, Layout(grid=first.shape if first.ndim == 2 else None)


#: a coordinate column as solvers' exports name it: x; Points:0 (ParaView's "Save Data");
#: x-coordinate (Fluent); X (m) (STAR-CCM+); X [ m ] (CFD-Post); any case
_AXIS = re.compile(r"points[:_]([012])|([xyz])(?:[-_ ]?coordinate)?(?:\s*[(\[][^)\]]*[)\]])?", re.IGNORECASE)


def _axis_columns(columns: Sequence[str]) -> dict[int, str]:
    """A table's coordinate columns by axis (0: x), the first that names each."""
    found: dict[int, str] = {}
    for c in columns:
        m = _AXIS.fullmatch(c)
        if m:
            found.setdefault(int(m[1]) if m[1] else "xyz".index(m[2].lower()), c)
    return found


def dialect(header: str) -> tuple[str, str]:
    """(separator, decimal mark) of a table from its header line: commas; semicolons, as a
    spreadsheet writes where the comma is the decimal mark (its numbers read either way); or
    tabs, as LabVIEW writes a spreadsheet file."""
    for sep in (",", ";", "\t"):
        if sep in header:
            return sep, "," if sep == ";" else "."
    return ",", "."


def _read_table(path: Path, field: str = "snapshots") -> Any:
    """A CSV table (a byte-order mark, semicolons or tabs as well), its column names stripped
    (Fluent pads them); a CFD-Post export's preamble ([Name] …) skipped to its [Data]
    section. Errors name ``field``."""
    import pandas as pd

    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            head = [f.readline() for _ in range(64)] if f.read(6) == "[Name]" else []
            data = next((i for i, line in enumerate(head) if line.strip() == "[Data]"), None)
            f.seek(0)
            lines = f.read(1 << 16).lstrip("\ufeff").splitlines()
        header = lines[0 if data is None else min(data + 1, len(lines) - 1)] if lines else ""
        sep, decimal = dialect(header)
        table = pd.read_csv(path, encoding="utf-8-sig", sep=sep, skipinitialspace=True,
                            skiprows=0 if data is None else data + 1, dtype=str if decimal == "," else None)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise SensorError(f"{field}: {path} is not a readable CSV table ({str(exc).splitlines()[0]})") from None
    table.columns = [str(c).strip() for c in table.columns]
    if decimal == ",":  # 0,5 or 0.5: numbers where every cell reads as one
        for c in table:
            as_numbers = pd.to_numeric(table[c].str.strip().str.replace(",", ".", regex=False), errors="coerce")
            if as_numbers.notna().sum() == table[c].notna().sum():
                table[c] = as_numbers
    return table


def _stack_tables(files: list[Path]) -> tuple[dict[str, np.ndarray], Layout, list[str]]:
    """CSV files, one snapshot each: a row per point, a column per field (``U:0`` is ``U[0]``),
    coordinate columns optional (then the rows' order is the points'; with them, a table
    listing the same points in another order is matched by coordinates). Also returns the
    names of the files so matched."""
    first: Any = None
    stacks: dict[str, np.ndarray] = {}
    reordered: list[str] = []
    for i, f in enumerate(_progress(files)):
        table = _read_table(f)
        if first is None:
            first = table
            axes = [c for _, c in sorted(_axis_columns(list(table)).items())]  # x, y, z order
            values = [c for c in table if c not in axes]
            bad = [c for c in values if table[c].dtype.kind not in "fiu"]
            if bad:
                raise SensorError(f"snapshots: {f}: column {bad[0]!r} is not numbers")
            if not values:
                raise SensorError(f"snapshots: {f} has no field columns (only {', '.join(axes)})")
            points = table[axes].to_numpy(np.float64) if axes else None
            stacks = {re.sub(r":(\d+)$", r"[\1]", c): np.empty((len(files), len(table))) for c in values}
        elif list(table) != list(first) or len(table) != len(first):
            raise SensorError(f"snapshots: {f} has columns {list(table)} and {len(table)} rows; "
                              f"{files[0].name} has {list(first)} and {len(first)}: every snapshot must be on one mesh")
        elif axes and not np.allclose(here := table[axes].to_numpy(np.float64), points, rtol=0, atol=1e-9):
            rows = _match_points(points, here, 1e-9)
            if rows is None:
                raise SensorError(f"snapshots: {f} is on other points than {files[0].name}"
                                  f"{_repeats(points)}; every snapshot must be on one mesh")
            table = table.iloc[rows]
            reordered.append(f.name)
        for stack, col in zip(stacks.values(), values):
            if table[col].dtype.kind not in "fiu":
                raise SensorError(f"snapshots: {f}: column {col!r} is not numbers")
            stack[i] = table[col].to_numpy(np.float64)
    return stacks, _located(points) if points is not None else Layout(), reordered


def _repeats(points: np.ndarray) -> str:
    """Why rows listing the same points in another order could not be matched, if so."""
    repeated = len(points) - len(np.unique(points, axis=0))
    return f" (or lists them in another order: {repeated} of its points repeat, so rows cannot be matched)" \
        if repeated else ""


def _stack_meshes(files: list[Path]) -> tuple[dict[str, np.ndarray], Layout, list[str]]:
    """Meshes on one set of points (a file each, or the time steps of one XDMF time series,
    as FEniCS writes them), their point data; a mesh with only cell data (a finite-volume
    solver's own values) is read at its cells' centroids instead. A mesh listing the same
    points in another order has its point data matched by coordinates (its names are
    returned too)."""
    series = _xdmf_series(files[0]) if len(files) == 1 and files[0].suffix in (".xdmf", ".xmf") else None
    meshes = series if series is not None else ((f.name, _read_mesh(f)) for f in _progress(files))
    count, first = (len(series), f"{files[0].name} {series[0][0]}") if series is not None else (len(files), files[0].name)
    points: np.ndarray | None = None
    stacks: dict[str, np.ndarray] = {}
    on_cells = False
    reordered: list[str] = []
    for i, (f, mesh) in enumerate(meshes):
        pts = np.asarray(mesh.points, np.float64)
        rows = None
        if points is None:
            points, cells = pts, tuple((c.type, np.asarray(c.data)) for c in mesh.cells)
            on_cells = not mesh.point_data and bool(mesh.cell_data)
            if not (mesh.point_data or mesh.cell_data):
                raise SensorError(f"snapshots: {f} has neither point nor cell data")
            stacks = {name: np.empty((count, *np.shape(v)), np.float32 if v.dtype == np.float32 else np.float64)
                      for name, v in _values(mesh, on_cells).items()}  # float32 files stay float32: half the memory
        elif pts.shape != points.shape or not np.allclose(pts, points, rtol=0, atol=(tol := 1e-9 * (1 + np.abs(points).max()))):
            rows = None if on_cells else _match_points(points, pts, tol)  # cells are matched by no coordinate here
            if rows is None:
                raise SensorError(f"snapshots: {f} is on other points than {first} ({len(pts)} vs {len(points)})"
                                  f"{_repeats(points) if len(pts) == len(points) else ''}; every snapshot must be on one mesh")
            reordered.append(f)
        values = _values(mesh, on_cells)
        for name, stack in stacks.items():
            v = values.get(name)
            if v is None:
                raise SensorError(f"snapshots: {f} has no {'cell' if on_cells else 'point'} data {name!r} "
                                  f"(found {', '.join(values) or 'none'})")
            if np.shape(v) != stack.shape[1:]:
                raise SensorError(f"snapshots: {f}: {name!r} has shape {np.shape(v)}, {first} has {stack.shape[1:]}")
            stack[i] = v if rows is None else np.asarray(v)[rows]
    assert points is not None
    fields: dict[str, np.ndarray] = {}
    for name, stack in stacks.items():
        if stack.ndim == 2:
            fields[name] = stack
        else:
            for c in range(stack.shape[2]):
                fields[f"{name}[{c}]"] = stack[:, :, c]
    if not on_cells:
        return fields, replace(_located(points), cells=cells), reordered
    centroids = np.concatenate([_centroids(points, kind, conn, files[0]) for kind, conn in cells])
    return fields, replace(_located(centroids), mesh_points=points, cells=cells, on_cells=True), reordered


def _read_mesh(path: Path) -> Any:
    import meshio

    try:
        return meshio.read(path)
    except Exception as exc:  # meshio raises many kinds; the cause goes to the user
        raise SensorError(f"snapshots: {path} is not a mesh meshio can read ({str(exc).splitlines()[0]})") from None


def _xdmf_series(path: Path) -> list[tuple[str, Any]] | None:
    """The time steps of an XDMF time series as meshes ("t=…", mesh), or None when the
    file is a single mesh (meshio.read takes that)."""
    import meshio

    try:
        with meshio.xdmf.TimeSeriesReader(path) as reader:
            points, cells = reader.read_points_cells()
            steps = [reader.read_data(k) for k in range(reader.num_steps)]
    except Exception:  # noqa: BLE001 — not a time series: read as one mesh, which says what is wrong
        return None
    if len(steps) < 2:
        return None
    return [(f"t={t:g}", meshio.Mesh(points, cells, point_data=pd, cell_data=cd)) for t, pd, cd in steps]


def _values(mesh: Any, on_cells: bool) -> dict[str, np.ndarray]:
    """The mesh's point data, or its cell data with the cell blocks joined in order."""
    if not on_cells:
        return dict(mesh.point_data)
    return {name: np.concatenate([np.asarray(b) for b in blocks]) for name, blocks in mesh.cell_data.items()}


def _outside(fields: dict[str, np.ndarray], files: list[Path]) -> tuple[dict[str, np.ndarray], np.ndarray | None,
                                                                     list[str]]:
    """Points NaN in every snapshot of some field (a solid body, a PIV mask) are outside the
    flow: every field is set to 0 there (no variation: no mode reaches them, no sensor goes
    there) and they are returned as a mask, so estimates can be NaN there again."""
    outside = np.zeros(next(iter(fields.values())).shape[1], bool)
    for a in fields.values():
        if a.dtype.kind == "f":
            outside |= ~np.isfinite(a[0])  # NaN in one snapshot means in all (checked by _select)
    if not outside.any():
        return fields, None, []
    if outside.all():
        raise SensorError(f"snapshots: every point is NaN in every snapshot ({files[0].name})")
    filled = {k: np.where(outside, 0, a).astype(a.dtype, copy=False) for k, a in fields.items()}
    return filled, outside, [f"{int(outside.sum())} point(s) NaN in every snapshot are outside the flow (a solid, "
                             "a mask): no sensor goes there, and estimated fields are NaN there"]


def _centroids(points: np.ndarray, kind: str, conn: np.ndarray, path: Path) -> np.ndarray:
    if conn.dtype == object or conn.ndim != 2:
        raise SensorError(f"snapshots: {path}: cell data on {kind} cells, whose centres are not read; "
                          "export the fields as point data")
    return points[conn].mean(axis=1)


def _select(raw: dict[str, np.ndarray], wanted: Sequence[str] | None,
            files: list[Path]) -> tuple[dict[str, np.ndarray], list[str]]:
    """(m, n) snapshots of the wanted fields; constant ones dropped with a note, or refused by name."""
    flat = {k: a.reshape(a.shape[0], -1) for k, a in raw.items()}
    notes: list[str] = []
    if wanted:
        chosen: dict[str, np.ndarray] = {}
        for name in wanted:
            parts = [k for k in flat if k == name or re.fullmatch(re.escape(name) + r"\[\d+\]", k)]
            if not parts:
                raise SensorError(f"fields: {name!r} is not in {files[0].name}; found {', '.join(flat)}")
            chosen.update({k: flat[k] for k in parts})
        explicit = {k for k in chosen if k in wanted}
    else:
        chosen, explicit = dict(flat), set()
    out: dict[str, np.ndarray] = {}
    for k, a in chosen.items():
        if a.dtype.kind == "f":
            finite = np.isfinite(a)
            partly = np.flatnonzero(~finite.all(0) & finite.any(0))  # points NaN in some snapshots only
            if len(partly):
                bad = int(np.flatnonzero(~finite[:, partly[0]])[0])
                where = files[bad].name if len(files) > 1 else f"{files[0].name}, snapshot {bad}"
                raise SensorError(f"snapshots: field {k!r} has NaN or Inf at {len(partly)} point(s) in some snapshots "
                                  f"only (first: point {partly[0]}, {where}); a point outside the flow is NaN in "
                                  "every snapshot: fill the gaps or leave those snapshots out")
        if np.array_equal(a, np.broadcast_to(a[:1], a.shape), equal_nan=a.dtype.kind == "f"):
            why = f"{k} is the same in every snapshot: no sensor reading of it can tell the snapshots apart"
            if k in explicit:
                raise SensorError(f"fields: {why}")
            notes.append(f"left out {why}")
            continue
        out[k] = a
    if not out:
        raise SensorError(f"fields: none varies between the snapshots ({', '.join(chosen)})")
    return out, notes
