"""Place K sensors on your own snapshot family, and see how well they would read it.

    python -m studies.place_sensors SNAPSHOTS... --k 12 --out DIR [--fields U,p] [--rank R]
        [--method qr|random|uniform] [--noise 0.01] [--hold-out 0.2] [--candidates WHERE.csv] [--no-track]

SNAPSHOTS: one ``.npy`` (m, ny, nx) or (m, n); one ``.npz`` with an array per field (and
``points``, (n, d), optional); or several files / a folder, one snapshot each in name
order: ``.npy`` arrays, CSV tables with a row per point (ParaView's "Save Data":
``Points:0``, ``U:0``, …), or meshes meshio reads (``.vtu``, ``.vtk``, ``.xdmf``, …) with
the fields as point data (a vector ``U`` is read as ``U[0]``, ``U[1]``, …; ``--fields U``
takes them all). Every sensor reads every field chosen; fields the same in every snapshot are
left out, with a note.

``--candidates``: where a sensor can be mounted (a wall, a probe's reach), as a CSV of point
indices (``index``) or coordinates (``x, y`` / ``row, col``, each one of the snapshots'
points); every method then places among them only.

First the held-out check: snapshots spread through the family are withheld, the basis is
fitted to the rest, and each method's linear estimate of the withheld snapshots from K noisy
readings is scored (1 = no better than the family's mean field; random: median of 5
placements). Then the sensors are placed with ``--method`` (QR pivoting by default) on the
basis of all the snapshots.

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

from tracking import logs

EXPERIMENT = "place_sensors"
ENTRY_POINT = "studies.place_sensors:run"
METHODS = ("qr", "random", "uniform")
OUTPUTS = ("sensors.csv", "sensors.html", "placement.json", "basis.npz", "summary.json")


@dataclass
class PlaceSensorsConfig:
    inputs: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)  # empty: every field that varies
    k: int = 12
    rank: int | None = None  # None: each method's best on the held-out check, up to k
    method: str = "qr"
    noise: float = 0.01
    hold_out: float = 0.2
    candidates: str | None = None  # CSV of the points where a sensor may go (default: anywhere)


def place_family(cfg: PlaceSensorsConfig) -> tuple[Any, Any, list[Any], dict[str, Any]]:
    """(family, placement, bases, summary): the held-out scores, then ``cfg.method`` on all
    snapshots with the rank its score used."""
    import numpy as np

    from cpikan.sensors import holdout
    from cpikan.sensors.data import candidate_points, read_family

    family = read_family(cfg.inputs, cfg.fields or None)
    cand = candidate_points(family, Path(cfg.candidates)) if cfg.candidates else None
    t0 = time.perf_counter()
    scores = holdout.score(family, cfg.k, cfg.rank, METHODS, noise=cfg.noise, hold_out=cfg.hold_out, candidates=cand)
    rank = next(s.rank for s in scores if s.method == cfg.method)
    bases = holdout.bases(family, rank)
    placement = holdout.place_on(family, bases, cfg.k, cfg.method, candidates=cand)
    summary = {"snapshots": family.snapshots, "points": family.size, "fields": list(family.fields),
               "k": cfg.k, "rank": rank, "rank_chosen": cfg.rank is None, "method": cfg.method, "noise": cfg.noise,
               "held_out": len(holdout.split(family.snapshots, cfg.hold_out)[1]),
               "energy": {n: b.energy for n, b in zip(family.fields, bases)},
               "held_out_error": {s.method: {"all": s.error, "rank": s.rank, **s.per_field} for s in scores},
               "candidates": family.size if cand is None else len(np.unique(cand)),
               "seconds": time.perf_counter() - t0, "notes": list(family.notes)}
    return family, placement, bases, summary


def write_outputs(work: Path, family: Any, placement: Any, bases: list[Any], summary: dict[str, Any]) -> None:
    import numpy as np

    coords = family.coordinates()
    rows = [",".join(("sensor", "index", *family.axes()))]
    rows += [",".join((str(s + 1), str(i), *(f"{c:.9g}" for c in coords[i]))) for s, i in enumerate(placement.indices)]
    (work / "sensors.csv").write_text("\n".join(rows) + "\n")
    placement.save(work / "placement.json")
    arrays = {"fields": np.array(list(family.fields)), "points": coords,
              "grid": np.array(family.grid or (), np.int64)}
    from cpikan.sensors.placement import residual

    idx = list(placement.indices)
    for (name, snaps), b in zip(family.fields.items(), bases):
        worst = float(residual(b, placement, np.asarray(snaps[:, idx], np.float64)).max())
        arrays |= {f"mean:{name}": b.mean, f"modes:{name}": b.modes, f"singular_values:{name}": b.singular_values,
                   f"sensor_residual:{name}": np.float64(worst)}
    np.savez(work / "basis.npz", **arrays)
    (work / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    sensor_map(family, placement).write_html(work / "sensors.html", include_plotlyjs=True)  # opens offline


def sensor_map(family: Any, placement: Any) -> Any:
    """Where the sensors are, over how much the first field varies between snapshots (its
    standard deviation): a heat map on a grid, a scatter of (at most 50 000) mesh points."""
    import numpy as np
    import plotly.graph_objects as go

    name, snaps = next(iter(family.fields.items()))
    std = np.asarray(snaps, np.float64).std(0)
    coords, idx = family.coordinates(), list(placement.indices)
    labels = [f"sensor {s + 1}" for s in range(len(idx))]
    marks = dict(mode="markers+text", text=[str(s + 1) for s in range(len(idx))], textposition="top center",
                 hovertext=labels, marker=dict(size=11, color="#d62728", line=dict(width=1, color="white")),
                 name="sensors")
    if family.grid is not None:
        traces = [go.Heatmap(z=std.reshape(family.grid), colorscale="Viridis", colorbar=dict(title=f"std {name}")),
                  go.Scatter(x=coords[idx, 1].tolist(), y=coords[idx, 0].tolist(), **marks)]
        axes = dict(xaxis_title="col", yaxis_title="row", yaxis=dict(scaleanchor="x", autorange="reversed"))
    else:
        keep = np.random.default_rng(0).permutation(len(std))[:50_000] if len(std) > 50_000 else slice(None)
        c = coords if coords.shape[1] > 1 else np.c_[coords, np.zeros(len(coords))]
        scatter = go.Scatter3d if c.shape[1] == 3 else go.Scatter
        xyz = ("x", "y", "z")[: c.shape[1]]
        traces = [scatter(**{a: c[keep, i] for i, a in enumerate(xyz)}, mode="markers", name=f"std {name}",
                          marker=dict(size=3 if c.shape[1] == 3 else 5, color=std[keep], colorscale="Viridis",
                                      colorbar=dict(title=f"std {name}")), hoverinfo="skip"),
                  scatter(**{a: c[idx, i].tolist() for i, a in enumerate(xyz)}, **marks)]  # lists: readable in the page
        axes = dict(xaxis_title=family.axes()[0], yaxis=dict(scaleanchor="x")) if c.shape[1] == 2 else {}
    fig = go.Figure(traces)
    fig.update_layout(title=f"{len(idx)} sensors ({placement.method}) over the snapshots' spread of {name}",
                      template="plotly_white", showlegend=False, **axes)
    return fig


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

    for f in snapshot_files(cfg.inputs):
        ctx.log_dataset(f, f.name, context="snapshots")
    if cfg.candidates:
        ctx.log_dataset(cfg.candidates, Path(cfg.candidates).name, context="candidates")
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m studies.place_sensors", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", metavar="SNAPSHOTS")
    ap.add_argument("--k", type=int, required=True, help="number of sensors")
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

    cfg = PlaceSensorsConfig(inputs=[str(Path(p).resolve()) for p in args.inputs],
                             fields=[f.strip() for f in args.fields.split(",") if f.strip()] if args.fields else [],
                             k=args.k, rank=args.rank, method=args.method, noise=args.noise, hold_out=args.hold_out,
                             candidates=str(Path(args.candidates).resolve()) if args.candidates else None)
    out = Path(args.out)
    work = out.with_name(out.name + ".part")
    try:
        if args.method not in METHODS:
            raise SensorError(f"--method: unknown {args.method!r}; allowed: {', '.join(METHODS)}")
        if args.k < 1:
            raise SensorError(f"--k: a positive number of sensors, got {args.k}")
        if args.rank is not None and args.rank < 1:
            raise SensorError(f"--rank: a positive number of modes, got {args.rank}")
        check_writable(out.parent if out.parent != Path("") else Path("."))
        if out.exists() and not (out.is_dir() and set(p.name for p in out.iterdir()) <= set(OUTPUTS)):
            raise SensorError(f"--out: {out} exists and is not an earlier place_sensors output (only it is replaced); "
                              "name a new folder")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        if args.no_track:
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
    report(summary, out)
    return 0


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
        print(f"  {method:<9}{e['rank']:>5}{e['all']:>10.3g}" + "".join(f"{e[f]:>10.3g}" for f in fields) + extra)
    if summary["rank_chosen"]:
        print("  (ranks chosen on these held-out snapshots: the figures are a little optimistic)")
    from cpikan.sensors.guard import load_thresholds

    red = load_thresholds().red["reconstruction_error"]
    error = summary["held_out_error"][summary["method"]]["all"]
    if error > red:
        print(f"warning: {summary['method']}'s held-out error {error:.3g} is over the guard's red line {red:g} "
              "(reconstruction_error): more sensors, or snapshots that cover the family better", file=sys.stderr)
    energy = min(summary["energy"].values())
    print(f"{summary['k']} sensors ({summary['method']}, {summary['rank']} modes fitted to all {summary['snapshots']} "
          f"snapshots, holding {100 * energy:.2f} % of the variance) → {out / 'sensors.csv'}")


if __name__ == "__main__":
    from studies import place_sensors  # runs record studies.place_sensors' classes, not __main__'s

    sys.exit(place_sensors.main())
