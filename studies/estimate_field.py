"""Whole fields from the sensors' readings, on a placement made by ``studies.place_sensors``.

    python -m studies.estimate_field DIR READINGS.csv --out FIELDS.npz|FIELDS.vtu [--without 3,7]

DIR: the folder ``place_sensors`` wrote (placement.json, basis.npz). READINGS.csv: a header
``sensor`` and the fields the sensors were placed for (DIR/summary.json lists them, e.g.
``U[0],U[1],p``), then a row per sensor (numbered as in DIR/sensors.csv); with a
``snapshot`` column, several snapshots, each estimated on its own (as a spreadsheet saves it
too: a byte-order mark, semicolons with decimal commas, or tabs). A sensor that did not read
in a snapshot (its row absent, or the cell empty or NaN: a dropout) is left out of that
snapshot's estimate, which is made from the sensors that did; one that read in none is
named, with ``--without`` (a faulty or missing sensor: left out of every snapshot).

The estimate is the linear one the placement was scored with: each field's POD modes
fitted to the readings by least squares, added to the family's mean. With more sensors
than modes the fit leaves a residual at the sensors; readings whose residual is over twice
what the family's own snapshots and the sensor noise (place_sensors' ``--noise``) explain
(a faulty sensor, a flow unlike the snapshots) are warned about: the estimate is then an
extrapolation. The warning names the sensor whose reading alone explains it (with that one
left out, the others fit the family), so ``--without N`` gives the estimate without it;
with no more sensors than modes left, the others cannot tell, and it says so.

Each field's standard error from the sensor noise place_sensors assumed (σ√(φᵀ(ΘᵀΘ)⁻¹φ):
where the sensors pin the field and where they amplify the noise; truncation not counted)
is written beside it as FIELD_sd. Writes FIELDS.npz (each field as (snapshots, ny, nx) or
(snapshots, n), FIELD_sd as (ny, nx) or (n,), or per snapshot when a snapshot lacks a
reading, and ``points``) or,
for one snapshot, FIELDS.vtu (the fields as point data on the snapshots' own mesh and cells,
or on bare points when they came without a mesh), under a temporary name first. Exit status: 0 done, 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cpikan.arguments import ArgumentParser
from cpikan.sensors.data import dialect
from cpikan.sensors.placement import Placement, SensorError, reconstruct, residual, standard_error
from cpikan.sensors.pod import Basis

#: warn when the readings' residual at the sensors is this many times what the family and the noise explain
WARN_RESIDUAL = 2.0


@dataclass(frozen=True)
class Placed:
    """What place_sensors left in its folder."""

    placement: Placement
    bases: dict[str, Basis]  # per field
    points: np.ndarray  # (n, d) coordinates
    grid: tuple[int, ...]  # (ny, nx) for images, () otherwise
    family_residual: dict[str, float]  # per field, the largest sensor residual among the family's snapshots
    noise_sd: dict[str, float]  # per field, the sensor noise place_sensors assumed (its --noise × the field's range)
    mesh_points: np.ndarray | None  # (n, 3) and cells: the mesh the snapshots were on, if any
    cells: list[tuple[str, np.ndarray]]
    on_cells: bool  # the fields are cell data
    outside: np.ndarray | None = None  # (n,) bool: points outside the flow (NaN in every snapshot)


def load(folder: Path) -> Placed:
    """The placement and bases in ``folder``; refused unless the bases are the placement's."""
    try:
        placement = Placement.from_json((folder / "placement.json").read_text())
        with np.load(folder / "basis.npz", allow_pickle=False) as z:
            names = [str(n) for n in z["fields"]]
            bases = {n: Basis(z[f"modes:{n}"], z[f"mean:{n}"], z[f"singular_values:{n}"], float("nan")) for n in names}
            cells = [(key.split(":", 2)[2], z[key]) for key in sorted(z.files, key=_cell_order) if key.startswith("cells:")]
            placed = Placed(placement, bases, z["points"], tuple(int(g) for g in z["grid"]),
                            {n: float(z[f"sensor_residual:{n}"]) for n in names},
                            {n: float(z[f"noise_sd:{n}"]) for n in names},
                            z["mesh_points"] if "mesh_points" in z.files else None, cells,
                            bool(z["on_cells"]) if "on_cells" in z.files else False,
                            z["outside"] if "outside" in z.files else None)
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise SensorError(f"DIR: {folder} is not a folder place_sensors wrote ({exc})") from None
    for b in bases.values():
        placement.check(b)  # the basis file is the one the sensors were placed on
    return placed


def _cell_order(key: str) -> tuple[int, str]:
    parts = key.split(":")
    return (int(parts[1]), key) if key.startswith("cells:") else (-1, key)


def read_readings(path: Path, fields: list[str], k: int,
                  without: frozenset[int] = frozenset()) -> tuple[list[str], np.ndarray]:
    """(the snapshots' names, (snapshots, fields, sensors) readings) from the CSV, sensors
    1 … k but those ``without`` (their rows, if any, are not read); NaN where a snapshot
    lacks a sensor's reading (its row absent, the cell empty or NaN: a sensor that dropped
    out). Every error names the row or column."""
    try:  # as a spreadsheet saves it too: a byte-order mark, semicolons and decimal commas, or tabs
        with path.open(newline="", encoding="utf-8-sig") as f:
            sep, decimal = dialect(f.readline())
            f.seek(0)
            reader = csv.DictReader(f, delimiter=sep, skipinitialspace=True)
            rows, header = list(reader), [c.strip() for c in reader.fieldnames or []]
            rows = [{str(k).strip(): v for k, v in row.items()} for row in rows]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SensorError(f"readings: {path} cannot be read ({exc})") from None
    if "sensor" not in header:
        raise SensorError(f"readings: {path} needs a 'sensor' column (found {', '.join(header) or 'nothing'})")
    missing = [f for f in fields if f not in header]
    if missing:
        raise SensorError(f"readings: {path} has no column {missing[0]!r}; the sensors read {', '.join(fields)}")
    unknown = [c for c in header if c not in (*fields, "sensor", "snapshot")]
    if unknown:
        raise SensorError(f"readings: {path}: column {unknown[0]!r} is not a field the sensors were placed for "
                          f"({', '.join(fields)})")
    snaps: dict[str, dict[int, list[float]]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            s = int(row["sensor"])
            values = [float(row[f].replace(decimal, ".")) if (row[f] or "").strip() else np.nan  # empty: not read
                      for f in fields]
        except (TypeError, ValueError):
            raise SensorError(f"readings: {path} line {line}: expected a sensor number and numbers, got {row}") from None
        if not 1 <= s <= k:
            raise SensorError(f"readings: {path} line {line}: sensor {s}; the placement has sensors 1 to {k}")
        if s in without:
            continue
        if np.isinf(values).any():
            raise SensorError(f"readings: {path} line {line}: sensor {s} reads Inf "
                              f"(leave it out: --without {s}; an empty cell or NaN is a reading not made)")
        snap = snaps.setdefault(row.get("snapshot") or "", {})
        if s in snap:
            raise SensorError(f"readings: {path} line {line}: sensor {s} read twice"
                              + (f" in snapshot {row['snapshot']}" if row.get("snapshot") else ""))
        snap[s] = values
    if not snaps:
        raise SensorError(f"readings: {path} has no rows")
    used = [s for s in range(1, k + 1) if s not in without]
    nan = [np.nan] * len(fields)
    out = np.array([[[snap.get(s, nan)[i] for s in used] for i in range(len(fields))] for snap in snaps.values()])
    read = np.isfinite(out)
    for j, s in enumerate(used):
        if not read[:, :, j].any():
            where = "" if len(snaps) == 1 else " in any snapshot"
            raise SensorError(f"readings: {path}: no reading from sensor {s}{where}; to estimate without it: "
                              f"--without {','.join(map(str, sorted(without | {s})))}")
    unread = np.argwhere(~read.any(axis=2))  # (snapshot, field) pairs no sensor read
    if len(unread):
        t, i = unread[0]
        where = f" in snapshot {list(snaps)[t]}" if len(snaps) > 1 else ""
        raise SensorError(f"readings: {path}: no sensor read {fields[i]}{where}")
    return list(snaps), out


def sensors_used(placed: Placed, without: frozenset[int]) -> Placement:
    """The placement without the sensors numbered in ``without`` (1 … K, as in sensors.csv)."""
    k = len(placed.placement.indices)
    bad = sorted(s for s in without if not 1 <= s <= k)
    if bad:
        raise SensorError(f"--without: sensor {bad[0]}; the placement has sensors 1 to {k}")
    if len(without) == k:
        raise SensorError(f"--without: leaves no sensor of the {k}")
    return replace(placed.placement, indices=tuple(i for s, i in enumerate(placed.placement.indices, 1)
                                                   if s not in without))


def _groups(readings: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(snapshot rows, sensors that read in them) for each set of sensors that read together
    in ``readings`` ((snapshots, sensors), NaN: not read): one group when every sensor read."""
    read = np.isfinite(readings)
    patterns, which = np.unique(read, axis=0, return_inverse=True)
    return [(np.flatnonzero(which.ravel() == g), pattern) for g, pattern in enumerate(patterns)]


def _subset(placement: Placement, read: np.ndarray) -> Placement:
    return replace(placement, indices=tuple(i for i, ok in zip(placement.indices, read) if ok))


def misfit(placed: Placed, placement: Placement, readings: np.ndarray) -> float:
    """The worst sensor residual as a multiple of what the family and the sensor noise
    explain: √(family's largest² + σ²(K − r)), the second term the expected residual of K
    noisy readings fitted with r modes (0 with no more sensors than modes: nothing to tell).
    A snapshot that lacks readings is fitted with the sensors that read in it."""
    worst = 0.0
    for i, (name, basis) in enumerate(placed.bases.items()):
        for rows, read in _groups(readings[:, i, :]):
            k = int(read.sum())
            off = float(residual(basis, _subset(placement, read), readings[rows][:, i, read]).max())
            explained = np.hypot(placed.family_residual[name], placed.noise_sd[name] * np.sqrt(max(k - basis.rank, 0)))
            worst = max(worst, off / explained if explained > 0 else 0.0 if off == 0 else np.inf)
    return worst


def estimate(placed: Placed, placement: Placement,
             readings: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """(field → (snapshots, n) estimate from ``placement``'s sensors, field → its standard
    error from the sensor noise place_sensors assumed, their :func:`misfit`). The standard
    error is (n,), or (snapshots, n) when some snapshot lacks a reading (NaN in
    ``readings``): each is estimated from the sensors that read in it."""
    out, sd = {}, {}
    each = not np.isfinite(readings).all()
    for i, (name, basis) in enumerate(placed.bases.items()):
        out[name] = np.empty((len(readings), basis.points))
        sd[name] = np.empty((len(readings), basis.points))
        for rows, read in _groups(readings[:, i, :]):
            used = _subset(placement, read)
            out[name][rows] = reconstruct(basis, used, readings[rows][:, i, read])
            sd[name][rows] = standard_error(basis, used, placed.noise_sd[name])
        if not each:
            sd[name] = sd[name][0]
        if placed.outside is not None:
            out[name][:, placed.outside] = np.nan  # not in the flow, as in the snapshots
            sd[name][..., placed.outside] = np.nan
    return out, sd, misfit(placed, placement, readings)


def culprits(placed: Placed, placement: Placement, readings: np.ndarray,
             numbers: list[int]) -> list[tuple[int, float]] | None:
    """The sensors (by number) whose reading alone explains a misfit: with that one left
    out, the others fit the family (misfit ≤ WARN_RESIDUAL), and what they then fit to;
    empty when none does. None when one fewer sensor leaves no more readings than modes (the
    others then fit anything: a sensor cannot be told from its neighbours)."""
    if len(numbers) - 1 <= max(b.rank for b in placed.bases.values()) or not np.isfinite(readings).all():
        return None  # (leaving one out of snapshots that lack others: not tried)
    found = []
    for j, s in enumerate(numbers):
        rest = replace(placement, indices=placement.indices[:j] + placement.indices[j + 1:])
        left = misfit(placed, rest, np.delete(readings, j, axis=2))
        if left <= WARN_RESIDUAL:
            found.append((s, left))
    return found


def write(path: Path, fields: dict[str, np.ndarray], placed: Placed, sd: dict[str, np.ndarray] | None = None) -> None:
    """FIELDS.npz, or FIELDS.vtu on the snapshots' own mesh (points alone when they had none);
    each field's standard error ``sd`` beside it as FIELD_sd."""
    fields = {**fields, **{f"{n}_sd": v if v.ndim == 2 else v[None] for n, v in (sd or {}).items()}}
    tmp = path.with_name(path.name + ".part" + path.suffix)
    if path.suffix == ".vtu":
        import meshio

        pts = placed.mesh_points
        if pts is None:
            pts = np.zeros((len(placed.points), 3))
            pts[:, : placed.points.shape[1]] = placed.points
        cells = placed.cells or [("vertex", np.arange(len(pts))[:, None])]
        if placed.on_cells:  # back into the cell blocks they were read from
            ends = np.cumsum([len(c) for _, c in cells])[:-1]
            data = {"cell_data": {n: np.split(v[0], ends) for n, v in fields.items()}}
        else:
            data = {"point_data": {n: v[0] for n, v in fields.items()}}
        meshio.write(tmp, meshio.Mesh(pts, cells, **data))
    else:
        shaped = {n: v.reshape(len(v), *placed.grid) if placed.grid else v for n, v in fields.items()}
        shaped.update({f"{n}_sd": shaped[f"{n}_sd"][0] for n, v in (sd or {}).items() if v.ndim == 1})
        with tmp.open("wb") as f:
            np.savez(f, points=placed.points, **shaped)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m studies.estimate_field", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", metavar="DIR", help="a folder written by python -m studies.place_sensors")
    ap.add_argument("readings", metavar="READINGS.csv")
    ap.add_argument("--out", required=True, help="FIELDS.npz, or FIELDS.vtu for one snapshot")
    ap.add_argument("--without", default="", metavar="N,…", help="sensors (numbers as in sensors.csv) to leave out: "
                    "faulty or not read; the estimate is made from the others")
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        if out.suffix not in (".npz", ".vtu"):
            raise SensorError(f"--out: {out.name} should end in .npz or .vtu")
        if not out.parent.is_dir():
            raise SensorError(f"--out: the folder {out.parent} does not exist")
        try:
            without = frozenset(int(s) for s in args.without.split(",") if s.strip())
        except ValueError:
            raise SensorError(f"--without: expected sensor numbers like 3,7, got {args.without!r}") from None
        placed = load(Path(args.folder))
        placement = sensors_used(placed, without)
        numbers = [s for s in range(1, len(placed.placement.indices) + 1) if s not in without]
        snapshot_names, readings = read_readings(Path(args.readings), list(placed.bases), len(placed.placement.indices),
                                                 without)
        if out.suffix == ".vtu" and len(readings) > 1:
            raise SensorError(f"--out: {len(readings)} snapshots do not fit one .vtu; write .npz")
    except SensorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fields, sd, worst = estimate(placed, placement, readings)
    write(out, fields, placed, sd)
    lacking = ~np.isfinite(readings).all(axis=1)  # (snapshots, sensors): a field or more not read
    if lacking.any():
        t, j = (int(v[0]) for v in np.nonzero(lacking))
        where = f" in snapshot {snapshot_names[t]}" if len(readings) > 1 else ""
        print(f"note: {int(lacking.any(axis=1).sum())} snapshot(s) lack readings (sensor {numbers[j]}{where} first): each "
              "is estimated from the sensors that read in it, with its own standard error (FIELD_sd per snapshot)",
              file=sys.stderr)
    left_out = f" (without {', '.join(map(str, sorted(without)))})" if without else ""
    print(f"{len(readings)} snapshot(s) of {', '.join(fields)} from {len(placement.indices)} sensors{left_out} → {out}")
    print("  standard error from the sensor noise place_sensors assumed (FIELD_sd in the output): " + "; ".join(
        f"{n} median {np.nanmedian(v):.3g}, largest {np.nanmax(v):.3g}" for n, v in sd.items()))
    if worst > WARN_RESIDUAL:
        found = culprits(placed, placement, readings, numbers)
        if found is None:
            why = "too few sensors beside the modes to tell whether one of them is at fault"
        elif len(found) == 1:
            (s, left), = found
            why = (f"sensor {s} alone explains it (without it the others lie {left:.2g}× off: as the family does); "
                   f"to estimate without it: --without {','.join(map(str, sorted(without | {s})))}")
        elif found:
            ranks = max(b.rank for b in placed.bases.values())
            why = (f"any one of sensors {', '.join(str(s) for s, _ in sorted(found, key=lambda f: f[1]))} (best "
                   f"fit without it first) explains it; {len(numbers)} sensors for {ranks} modes cannot tell which")
        else:
            why = "no single sensor explains it: a flow unlike the snapshots the placement was made on, or several faults"
        print(f"warning: the readings lie {worst:.3g}× further from the family's modes at the sensors than "
              f"the family's own snapshots and the sensor noise explain; {why}; the estimate may be far off",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
