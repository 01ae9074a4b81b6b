"""Place K sensors on your own snapshot family, and see how well they would read it.

    python -m studies.place_sensors SNAPSHOTS... --k 2:20 --out DIR      (how many sensors: error vs K)
    python -m studies.place_sensors SNAPSHOTS... --k 12 --out DIR [--fields U,p] [--rank R]
        [--method qr|random|uniform] [--noise 0.01] [--hold-out 0.2] [--candidates WHERE.csv] [--no-track]

SNAPSHOTS: one ``.npy`` (m, ny, nx) or (m, n); one ``.npz`` with an array per field (and
``points``, (n, d), and ``weights``, (n,) each point's share of the domain, both optional); one XDMF time series (a step per snapshot, as FEniCS writes
them); or several files / a folder, one snapshot each in name
order: ``.npy`` arrays, CSV tables with a row per point (ParaView's "Save Data":
``Points:0``, ``U:0``, …; Fluent's ``x-coordinate``, STAR-CCM+'s ``X (m)`` and CFD-Post's
``X [ m ]`` are coordinates too), or meshes meshio reads (``.vtu``, ``.vtk``, ``.xdmf``, …) with
the fields as point data, or as cell data only (a finite-volume solver's values: sensors
then sit at cell centroids). Tables and meshes that list the same points in another order
(a parallel solver's export) are matched by coordinates, with a note. A vector ``U`` is read as ``U[0]``, ``U[1]``, …; ``--fields U``
takes them all. Every sensor reads every field chosen; fields the same in every snapshot are
left out, with a note. Points NaN in every snapshot (a solid, a PIV mask) are outside the
flow: no sensor goes there, estimate_field answers NaN there. On a mesh, the POD and the
errors weigh each point by its share of the domain (its cells' area or volume), so a graded
mesh gives the answer a uniform one does.

``--candidates``: where a sensor can be mounted (a wall, a probe's reach), as a CSV of point
indices (``index``) or coordinates (``x, y`` / ``row, col``, or a solver's own names as for
the snapshots; each one of the snapshots' points); every method then places among them only.

First the held-out check: snapshots spread through the family are withheld, the basis is
fitted to the rest, and each method's linear estimate of the withheld snapshots from K noisy
readings is scored (1 = no better than the family's mean field; random: median of 5
placements). Then the sensors are placed with ``--method`` (QR pivoting by default) on the
basis of all the snapshots.

With several K (``--k 2:20``, ``4:16:2``, ``4,8,12``) only the check runs, at each K:
DIR/error_vs_k.html and summary.json show how many sensors the family needs.

Writes DIR/ (into DIR.part first, renamed when complete):
  sensors.csv     where to put them: sensor number, point index, coordinates
  sensors.html    the same on a map of how much the first field varies (opens offline)
  placement.json  the placement with the basis' sha256 (``python -m studies.estimate_field`` checks it)
  basis.npz       each field's mean and POD modes (plain arrays), for estimating fields from readings
  summary.json    the held-out errors per method and field, energy, rank, notes
One MLflow run (experiment ``place_sensors``) with the snapshot files by sha256, the held-out
errors and the placement; ``python -m tracking.replay RUN_ID`` places and scores again.

Exit status: 0 done, 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpikan.arguments import ArgumentParser
from studies import sensor_plots
from tracking import logs

EXPERIMENT = "place_sensors"
ENTRY_POINT = "studies.place_sensors:run"
METHODS = ("qr", "random", "uniform")
OUTPUTS = ("sensors.csv", "sensors.html", "placement.json", "basis.npz", "summary.json", "error_vs_k.html")


@dataclass
class PlaceSensorsConfig:
    inputs: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)  # empty: every field that varies
    k: int | list[int] = 12  # a list: the held-out check at each K (a sweep), no placement
    rank: int | None = None  # None: each method's best on the held-out check, up to k
    method: str = "qr"
    noise: float = 0.01
    hold_out: float = 0.2
    candidates: str | None = None  # CSV of the points where a sensor may go (default: anywhere)


def read(cfg: PlaceSensorsConfig) -> tuple[Any, Any, dict[str, Any]]:
    """(family, candidate point indices or None, what every summary says of them)."""
    import numpy as np

    from cpikan.sensors import holdout
    from cpikan.sensors.data import candidate_points, read_family
    from cpikan.sensors.placement import SensorError

    family = read_family(cfg.inputs, cfg.fields or None)
    cand = candidate_points(family, Path(cfg.candidates)) if cfg.candidates else None
    if family.outside is not None:  # no sensor inside a solid
        if cand is not None and family.outside[cand].any():
            bad = cand[family.outside[cand]]
            raise SensorError(f"candidates: {cfg.candidates}: point {bad[0]} is outside the flow (NaN in every "
                              f"snapshot); {len(bad)} such")
        cand = np.flatnonzero(~family.outside) if cand is None else cand
    return family, cand, {
        "snapshots": family.snapshots, "points": family.size, "fields": list(family.fields), "k": cfg.k,
        "rank_chosen": cfg.rank is None, "method": cfg.method, "noise": cfg.noise,
        "held_out": len(holdout.split(family.snapshots, cfg.hold_out)[1]),
        "candidates": family.size if cand is None else len(np.unique(cand)), "notes": list(family.notes)}


def place_family(cfg: PlaceSensorsConfig) -> tuple[Any, Any, list[Any], dict[str, Any]]:
    """(family, placement, bases, summary): the held-out scores, then ``cfg.method`` on all
    snapshots with the rank its score used."""
    from cpikan.sensors import holdout

    family, cand, summary = read(cfg)
    t0 = time.perf_counter()
    scores = holdout.score(family, cfg.k, cfg.rank, METHODS, noise=cfg.noise, hold_out=cfg.hold_out, candidates=cand)
    rank = next(s.rank for s in scores if s.method == cfg.method)
    bases = holdout.bases(family, rank)
    placement = holdout.place_on(family, bases, cfg.k, cfg.method, candidates=cand)
    return family, placement, bases, summary | {
        "rank": rank, "energy": {n: b.energy for n, b in zip(family.fields, bases)},
        "modes": {n: b.rank for n, b in zip(family.fields, bases)},
        "held_out_error": {s.method: {"all": s.error, "rank": s.rank, "fields": s.per_field} for s in scores},
        "seconds": time.perf_counter() - t0}


def write_outputs(work: Path, family: Any, placement: Any, bases: list[Any], summary: dict[str, Any]) -> None:
    import numpy as np

    from cpikan.sensors.placement import residual

    coords = family.coordinates()
    rows = [",".join(("sensor", "index", *family.axes()))]
    rows += [",".join((str(s + 1), str(i), *(f"{c:.9g}" for c in coords[i]))) for s, i in enumerate(placement.indices)]
    (work / "sensors.csv").write_text("\n".join(rows) + "\n")
    placement.save(work / "placement.json")
    arrays = {"fields": np.array(list(family.fields)), "points": coords,
              "grid": np.array(family.grid or (), np.int64)}
    if family.outside is not None:
        arrays["outside"] = family.outside
    idx = list(placement.indices)
    for (name, snaps), b in zip(family.fields.items(), bases):
        worst = float(residual(b, placement, np.asarray(snaps[:, idx], np.float64)).max())
        arrays |= {f"mean:{name}": b.mean, f"modes:{name}": b.modes, f"singular_values:{name}": b.singular_values,
                   f"sensor_residual:{name}": np.float64(worst),
                   f"noise_sd:{name}": np.float64(summary["noise"] * float(np.ptp(snaps)))}
    layout = family.layout
    if layout.mesh_points is not None:  # estimate_field writes fields back onto the mesh
        arrays["mesh_points"] = layout.mesh_points
        arrays["on_cells"] = np.bool_(layout.on_cells)
        arrays |= {f"cells:{i}:{kind}": conn for i, (kind, conn) in enumerate(layout.cells)}
    np.savez(work / "basis.npz", **arrays)
    (work / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    sensor_plots.sensor_map(family, placement).write_html(work / "sensors.html", include_plotlyjs=True)  # opens offline


def sweep_family(cfg: PlaceSensorsConfig) -> dict[str, Any]:
    """The held-out check at every K of ``cfg.k`` (a list): how many sensors the family needs."""
    from cpikan.sensors import holdout

    assert isinstance(cfg.k, list)
    family, cand, summary = read(cfg)
    t0 = time.perf_counter()
    curve: dict[str, list[list[float]]] = {m: [] for m in METHODS}
    for k in cfg.k:
        for s in holdout.score(family, k, cfg.rank, METHODS, noise=cfg.noise, hold_out=cfg.hold_out, candidates=cand):
            curve[s.method].append([k, s.error, s.rank])
    return summary | {"sweep": curve, "seconds": time.perf_counter() - t0}


def write_sweep(work: Path, summary: dict[str, Any]) -> None:
    (work / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    sensor_plots.error_vs_k(summary).write_html(work / "error_vs_k.html", include_plotlyjs=True)


def results_of(summary: dict[str, Any]) -> dict[str, float]:
    """The run's results: each method's held-out error, the chosen method's as ``rel_l2``."""
    from cpikan.sensors.guard import load_thresholds

    errors = {f"rel_l2_{m}": e["all"] for m, e in summary["held_out_error"].items()}
    rel = errors[f"rel_l2_{summary['method']}"]
    red = load_thresholds().red["reconstruction_error"]
    return {"rel_l2": rel, **errors, "energy": min(summary["energy"].values()),
            "guard/reconstruction_error": rel, "guard/red_count": float(rel > red)}


def run(cfg: PlaceSensorsConfig, ctx: Any, work: Path | None = None) -> dict[str, float]:
    """Place and score ``cfg``'s family on ``ctx`` (a Tracker); the entry point replay calls."""
    import tempfile

    from cpikan.sensors.data import snapshot_files

    ctx.log_datasets({f.name: f for f in snapshot_files(cfg.inputs)}, context="snapshots")
    if cfg.candidates:
        ctx.log_dataset(cfg.candidates, Path(cfg.candidates).name, context="candidates")
    if isinstance(cfg.k, list):
        return run_sweep(cfg, ctx, work)
    family, placement, bases, summary = place_family(cfg)
    results = results_of(summary)
    ctx.log_results(results, {"seconds": summary["seconds"]})
    ctx.set_tags({"basis_digest": placement.basis_digest, "fields": ",".join(family.fields),
                  **({"notes": "; ".join(family.notes)} if family.notes else {})})
    with tempfile.TemporaryDirectory() as tmp:
        out = work or Path(tmp)
        write_outputs(out, family, placement, bases, summary)
        for name in ("sensors.csv", "sensors.html", "placement.json", "summary.json"):
            ctx.log_artifact(out / name, "sensors")
    return results


def run_sweep(cfg: PlaceSensorsConfig, ctx: Any, work: Path | None) -> dict[str, float]:
    """A sweep as one run: each method's error at each K as a result (and as a series over
    K, which the MLflow UI charts), the plot and the summary as artifacts."""
    import tempfile

    summary = sweep_family(cfg)
    results = {f"rel_l2_{m}_k{k}": e for m, pts in summary["sweep"].items() for k, e, _ in pts}
    ctx.log_results(results, {"seconds": summary["seconds"]})
    for m, pts in summary["sweep"].items():
        for k, e, _ in pts:
            ctx.log_metrics({f"rel_l2_{m}": e}, step=k)
    with tempfile.TemporaryDirectory() as tmp:
        out = work or Path(tmp)
        write_sweep(out, summary)
        for name in ("error_vs_k.html", "summary.json"):
            ctx.log_artifact(out / name, "sensors")
    return results


def parse_k(text: str) -> int | list[int]:
    """``12``, a range ``4:16`` / ``4:16:2`` (inclusive), or a list ``4,8,12``."""
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] < 1):
                raise ValueError
            ks = list(range(parts[0], parts[1] + 1, parts[2] if len(parts) == 3 else 1))
        else:
            ks = [int(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(f"--k: a number of sensors (12), a range (4:16 or 4:16:2) or a list (4,8,12); got {text!r}") from None
    if not ks:
        raise ValueError(f"--k: the range {text!r} holds no K (from:to, to ≥ from)")
    if min(ks) < 1:
        raise ValueError(f"--k: numbers of sensors are positive; got {text!r}")
    return ks[0] if len(ks) == 1 and ":" not in text and "," not in text else sorted(set(ks))


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m studies.place_sensors", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", metavar="SNAPSHOTS")
    ap.add_argument("--k", required=True, help="number of sensors, or several (4:16, 4,8,12): the check at each, no placement")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--fields", default=None, help="comma-separated field names (default: every field that varies)")
    ap.add_argument("--rank", type=int, default=None, help="POD modes (default: for each method the number, up to k, with the lowest held-out error)")
    ap.add_argument("--method", default="qr", help="qr (default), random or uniform")
    ap.add_argument("--noise", type=float, default=0.01, help="sensor noise in the held-out check, fraction of range")
    ap.add_argument("--hold-out", type=float, default=0.2, help="fraction of snapshots withheld for the check")
    ap.add_argument("--candidates", default=None, help="CSV of the points where a sensor may go: an index column, "
                    "or the coordinates (x, y or row, col); default anywhere")
    ap.add_argument("--no-track", action="store_true", help="do not log an MLflow run")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logs.configure(args.verbose)
    from cpikan.psi.io import InputError, check_writable
    from cpikan.sensors.placement import SensorError
    from tracking.store import TrackingError

    out = Path(args.out)
    work = out.with_name(out.name + ".part")
    try:
        cfg = PlaceSensorsConfig(inputs=[str(Path(p).resolve()) for p in args.inputs],
                                 fields=[f.strip() for f in args.fields.split(",") if f.strip()] if args.fields else [],
                                 k=parse_k(args.k), rank=args.rank, method=args.method, noise=args.noise,
                                 hold_out=args.hold_out,
                                 candidates=str(Path(args.candidates).resolve()) if args.candidates else None)
        if args.method not in METHODS:
            raise SensorError(f"--method: unknown {args.method!r}; allowed: {', '.join(METHODS)}")
        if args.rank is not None and args.rank < 1:
            raise SensorError(f"--rank: a positive number of modes, got {args.rank}")
        check_writable(out.parent if out.parent != Path("") else Path("."))
        if out.exists() and not (out.is_dir() and set(p.name for p in out.iterdir()) <= set(OUTPUTS)):
            raise SensorError(f"--out: {out} exists and is not an earlier place_sensors output (only it is replaced); "
                              "name a new folder")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        if args.no_track and isinstance(cfg.k, list):
            summary = sweep_family(cfg)
            write_sweep(work, summary)
        elif args.no_track:
            family, placement, bases, summary = place_family(cfg)
            write_outputs(work, family, placement, bases, summary)
        else:
            from tracking.tracker import Tracker

            with Tracker(EXPERIMENT, config=cfg, entry_point=ENTRY_POINT, run_name=Path(cfg.inputs[0]).name) as ctx:
                run(cfg, ctx, work)
            summary = json.loads((work / "summary.json").read_text())
    except (SensorError, InputError, TrackingError, ValueError) as exc:
        shutil.rmtree(work, ignore_errors=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    (report_sweep if "sweep" in summary else report)(summary, out)
    return 0


def report_sweep(summary: dict[str, Any], out: Path) -> None:
    from cpikan.sensors.guard import load_thresholds

    for note in summary["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"held-out check at each K: {summary['held_out']} of {summary['snapshots']} snapshots withheld, "
          f"{100 * summary['noise']:g} % noise (error 1 = the family's mean field; its rank in parentheses)")
    methods = list(summary["sweep"])
    print(f"  {'K':>4}" + "".join(f"{m:>16}" for m in methods))
    for i, k in enumerate(summary["k"]):
        print(f"  {k:>4}" + "".join(f"{summary['sweep'][m][i][1]:>11.3g} ({summary['sweep'][m][i][2]:>2})" for m in methods))
    red = load_thresholds().red["reconstruction_error"]
    enough = [k for k, e, _ in summary["sweep"][summary["method"]] if e <= red]
    print(f"{summary['method']} is within the guard's red line ({red:g}) from K = {enough[0]}" if enough else
          f"{summary['method']} stays above the guard's red line ({red:g}) up to K = {summary['k'][-1]}")
    print(f"→ {out / 'error_vs_k.html'}; choose K and run again with --k K to place the sensors")


def report(summary: dict[str, Any], out: Path) -> None:
    for note in summary["notes"]:
        print(f"note: {note}", file=sys.stderr)
    fields = summary["fields"]
    chosen = ", each method at the rank (≤ k) where it does best" if summary["rank_chosen"] else ""
    where = f" among {summary['candidates']} allowed points" if summary["candidates"] < summary["points"] else ""
    print(f"held-out check: {summary['held_out']} of {summary['snapshots']} snapshots withheld, "
          f"{100 * summary['noise']:g} % noise, {summary['k']} sensors{where}{chosen} (error 1 = the family's mean field)")
    print(f"  {'method':<9}{'rank':>5}{'all':>10}" + "".join(f"{f:>10}" for f in fields))
    for method, e in summary["held_out_error"].items():
        extra = "  (median of 5 placements)" if method == "random" else ""
        print(f"  {method:<9}{e['rank']:>5}{e['all']:>10.3g}" + "".join(f"{e['fields'][f]:>10.3g}" for f in fields) + extra)
    if summary["rank_chosen"]:
        print("  (ranks chosen on these held-out snapshots: the figures are a little optimistic)")
    from cpikan.sensors.guard import load_thresholds

    red = load_thresholds().red["reconstruction_error"]
    error = summary["held_out_error"][summary["method"]]["all"]
    if error > red:
        print(f"warning: {summary['method']}'s held-out error {error:.3g} is over the guard's red line {red:g} "
              "(reconstruction_error): more sensors, or snapshots that cover the family better", file=sys.stderr)
    fewer = {f: m for f, m in summary["modes"].items() if m < summary["rank"]}
    if fewer:
        print(f"note: the snapshots span fewer than {summary['rank']} directions in "
              + ", ".join(f"{f} ({m})" for f, m in fewer.items()) + "; those fields use only as many modes",
              file=sys.stderr)
    energy = min(summary["energy"].values())
    print(f"{summary['k']} sensors ({summary['method']}, {summary['rank']} modes fitted to all {summary['snapshots']} "
          f"snapshots, holding {100 * energy:.2f} % of the variance) → {out / 'sensors.csv'}")


if __name__ == "__main__":
    from studies import place_sensors  # runs record studies.place_sensors' classes, not __main__'s

    sys.exit(place_sensors.main())
