"""The weekly job: every KPI's benchmark as MLflow runs, then the KPI report.

    python -m reports.weekly [--dry-run]      (also: make weekly)

Each job is a study run under a study name of its own (``weekly-<UTC timestamp>-<job>``),
so every weekly run adds new runs (a new point on every KPI trend) instead of resuming the
last one; each run is tagged with the KPIs it feeds (``cpikan.kpi``: the KPIs of
reports/kpis.toml read from its experiment). The jobs are ``JOBS`` below: the demo's tiling
sweep (2048², ~3 min on the lab's 2-core CPU machine), one crop-mode trial on a 9344 × 7000
wafer read from disk (~5 min), Helmholtz 1D on three seeds (~5 min), 3-D Poisson (~3 min),
sensor placement, the flow inverse problem, three multi-stage trials, and one method_search
trial per method option (~2–3 min each on diffusion).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass

from cpikan.arguments import ArgumentParser
from reports.kpi import load_kpis
from tracking import interrupts


@dataclass(frozen=True)
class Job:
    name: str
    study: str
    feeds: tuple[str, ...]  # the KPIs (names in reports/kpis.toml, by their start) it fills
    args: tuple[str, ...] = ()


JOBS = (
    Job("tiling", "tiling_overlap_sweep", ("Seam error", "Tiled vs full")),
    Job("tiling-9344x7000", "tiling_overlap_sweep", ("Largest image", "9344 × 7000"),
        ("--trials", "1", "--sampler", "random", "--set", "image_size=9344x7000")),
    Job("helmholtz1d", "helmholtz1d", ("Helmholtz 1D", "Training success rate", "Collocation points"),
        ("--trials", "3")),  # three seeds: the success rate
    Job("poisson3d", "poisson3d", ("3D Poisson",), ("--trials", "1")),
    Job("sensor_placement", "sensor_placement", ("Sparse-sensor",), ("--trials", "12")),
    Job("flow_inverse", "flow_inverse", ("Flow inverse",), ("--trials", "2")),
    Job("multistage", "multistage_search", ("Multi-stage",), ("--trials", "3")),
    Job("methods", "method_search", ("Method options",)),  # one trial per option
)


def fed_kpis(job: Job) -> list[str]:
    """The KPI names a job fills; a prefix that names no KPI is an error in this file."""
    names = [k.name for k in load_kpis()]
    out = []
    for prefix in job.feeds:
        hits = [n for n in names if n.startswith(prefix)]
        if not hits:
            raise ValueError(f"weekly job {job.name}: no KPI in reports/kpis.toml starts with {prefix!r}")
        out += hits
    return out


def commands(stamp: str) -> list[tuple[Job, list[str]]]:
    out = []
    for job in JOBS:
        cmd = [sys.executable, "-m", "studies.run", job.study, "--study-name", f"weekly-{stamp}-{job.name}",
               "--tag", f"cpikan.kpi={'; '.join(fed_kpis(job))}", *job.args]
        out.append((job, cmd))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m reports.weekly", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--report", default="reports/out/kpi.html")
    args = ap.parse_args(argv)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    interrupts.sigterm_as_ctrl_c()
    try:
        for job, cmd in commands(stamp):
            print(f"== {job.name}: feeds {'; '.join(fed_kpis(job))}", flush=True)
            if args.dry_run:
                print("   " + " ".join(cmd[1:]))
                continue
            code = interrupts.call(cmd)
            if code:
                print(f"error: weekly job {job.name} failed (exit {code})", file=sys.stderr)
                return code
        if args.dry_run:
            return 0
        return interrupts.call([sys.executable, "-m", "reports.kpi", "--out", args.report])
    except KeyboardInterrupt:
        print("interrupted: the job in progress marked its runs KILLED; no KPI report was made", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
