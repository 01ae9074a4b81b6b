"""The weekly KPI report: one self-contained HTML file, built from MLflow and Optuna as they are.

    python -m reports.kpi [--since 7d] [--out reports/out/kpi.html] [--kpis reports/kpis.toml]

KPI table (target, current value, value a week earlier, trend, status, link to the run that
produced the value), a trend chart per KPI, the plots of every study touched in the period
(optimisation history or Pareto front, parameter importances) and the latest convergence
curves of the PDE benchmarks. plotly.js is embedded once, so the file opens offline. The
exact values also sit in a JSON block (id ``kpi-data``) for tools and tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpikan.arguments import ArgumentParser
from reports.common import measured
from reports.sensors import figures as sensor_figures
from reports.sensors import guard_rows
from studies import registry
from tracking import logs, store
from tracking.provenance import redact_urls
from tracking.store import TrackingError
from tracking.ui import run_link

KPI_FILE = Path(__file__).with_name("kpis.toml")
AGGREGATIONS = ("min", "max", "last", "success_rate", "min_param")


@dataclass
class KPI:
    name: str
    experiment: str
    metric: str
    aggregation: str
    direction: str
    target: float
    unit: str = ""
    filter: str = ""
    threshold: float | None = None
    param: str | None = None
    #: what produces the KPI's runs (shown on a KPI without data)
    command: str = "make weekly"


@dataclass
class Value:
    value: float | None
    run_id: str | None
    experiment_id: str | None


def load_kpis(path: Path = KPI_FILE) -> list[KPI]:
    data = tomllib.loads(path.read_text())
    kpis = [KPI(**k) for k in data.get("kpi", [])]
    for k in kpis:
        if k.aggregation not in AGGREGATIONS:
            raise ValueError(f"{path}: KPI {k.name!r}: aggregation {k.aggregation!r}; allowed: {', '.join(AGGREGATIONS)}")
        if k.direction not in ("lower", "higher"):
            raise ValueError(f"{path}: KPI {k.name!r}: direction must be lower or higher")
    return kpis


def parse_since(text: str) -> dt.timedelta:
    m = re.fullmatch(r"(\d+)([dhw])", text.strip())
    if not m:
        raise ValueError(f"--since: expected a period like 7d, 24h or 2w, got {text!r}")
    n, unit = int(m.group(1)), m.group(2)
    return {"d": dt.timedelta(days=n), "h": dt.timedelta(hours=n), "w": dt.timedelta(weeks=n)}[unit]


def runs_of(client: Any, kpi: KPI) -> list[Any]:
    exp = client.get_experiment_by_name(kpi.experiment)
    if exp is None:
        return []
    flt = "attributes.status = 'FINISHED'" + (f" and {kpi.filter}" if kpi.filter else "")
    runs = client.search_runs([exp.experiment_id], filter_string=flt, max_results=5000,
                              order_by=["attributes.start_time ASC"])
    return measured(runs)


def running(kpi: KPI, runs: list[Any]) -> list[tuple[Any, Value]]:
    """The KPI's value after each run that has its metric, in one pass (runs in time order):
    the trend chart's points, and the last one is the KPI's value."""
    out: list[tuple[Any, Value]] = []
    best: tuple[float, Any] | None = None
    ok = seen = 0
    for r in runs:
        if kpi.metric not in r.data.metrics:
            continue
        m = r.data.metrics[kpi.metric]
        if kpi.aggregation == "success_rate":
            seen, ok = seen + 1, ok + (m <= (kpi.threshold or 0))
            best = (ok / seen, r)
        elif kpi.aggregation == "last":
            best = (m, r)
        else:
            if kpi.aggregation == "min_param":
                if kpi.param not in r.data.params:
                    continue
                m = float(r.data.params[kpi.param])
            better = best is None or (m > best[0] if kpi.aggregation == "max" else m < best[0])
            if better:
                best = (m, r)
        if best is not None:
            out.append((r, Value(best[0], best[1].info.run_id, best[1].info.experiment_id)))
    return out


def aggregate(kpi: KPI, runs: list[Any], until_ms: float | None = None) -> Value:
    """The KPI's value from the runs started up to ``until_ms`` (all when None)."""
    points = running(kpi, [r for r in runs if until_ms is None or r.info.start_time <= until_ms])
    return points[-1][1] if points else Value(None, None, None)


def status(kpi: KPI, v: float | None) -> str:
    if v is None:
        return "no data"
    met = v <= kpi.target if kpi.direction == "lower" else v >= kpi.target
    return "met" if met else "not met"


def trend(kpi: KPI, now: float | None, before: float | None) -> str:
    if now is None or before is None:
        return "—"
    if now == before:
        return "→ unchanged"
    better = now < before if kpi.direction == "lower" else now > before
    return "↑ better" if better else "↓ worse"


def fmt(v: float | None) -> str:
    if v is None:
        return "no data"
    return f"{v:.4g}"


# --------------------------------------------------------------------------- figures
def trend_figure(kpi: KPI, runs: list[Any]) -> Any:
    """The KPI over time with its target; the y-axis spans the data (the target line is
    drawn only when it lies within a decade of the data, else named in the title)."""
    import math

    import plotly.graph_objects as go

    points = running(kpi, runs)
    xs = [dt.datetime.fromtimestamp(r.info.start_time / 1000) for r, _ in points]
    ys = [v.value for _, v in points]
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines+markers", name=kpi.name))
    log = kpi.aggregation not in ("success_rate", "min_param") and bool(ys) and all(y > 0 for y in ys)
    lo, hi = (min(ys), max(ys)) if ys else (kpi.target, kpi.target)

    def span(a: float, b: float) -> float:  # in decades on a log axis
        return math.log10(b / a) if log else b - a

    def pad(width: float) -> float:
        return 0.05 * max(width, 0.5) if log else (0.05 * width or 0.05 * abs(hi) or 1.0)

    with_target = span(min(lo, kpi.target), max(hi, kpi.target))
    # the axis follows the data: the target line is drawn only where showing it keeps the
    # axis within ten times the data's range (else the title names it)
    near = with_target + 2 * pad(with_target) <= (span(lo, hi) + 1 if log else 10 * span(lo, hi))
    title = f"{kpi.name}: {status(kpi, ys[-1] if ys else None)} (target {kpi.target:g} {kpi.unit})".rstrip()
    if near:
        fig.add_hline(y=kpi.target, line_dash="dash", annotation_text="target")
        lo, hi = min(lo, kpi.target), max(hi, kpi.target)
    p = pad(span(lo, hi))
    if log:
        fig.update_yaxes(type="log", range=[math.log10(lo) - p, math.log10(hi) + p])
    else:
        fig.update_yaxes(range=[lo - p, hi + p])
    fig.update_layout(title=title, height=300, template="plotly_white", margin=dict(t=40, b=30),
                      xaxis_title="run start", yaxis_title=kpi.unit or kpi.metric)
    return fig


def study_figures(since: dt.datetime) -> list[tuple[str, Any]]:
    """optuna.visualization plots for each study of the default journal with trials in the period."""
    import optuna

    from studies.plots import study_plots
    from studies.storage import default_storage, open_storage  # reports sits above studies

    path = Path(default_storage()[len("journal:"):])
    if not path.exists() or path.stat().st_size == 0:
        return []
    storage = open_storage(default_storage())
    out = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_start >= since]
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        if not trials or not complete:
            continue
        names = None
        if summary.study_name in registry.CATALOG:
            names = [m for m, _ in registry.get(summary.study_name).objectives]
        try:
            out += [(f"{summary.study_name}: {title}", fig) for title, fig in study_plots(study, names)]
        except Exception as exc:  # noqa: BLE001 — a plot that cannot be drawn must not stop the report
            print(f"warning: {summary.study_name}: no study plots ({type(exc).__name__}: {exc})", file=sys.stderr)
    return out


def convergence_figures(client: Any) -> list[tuple[str, Any]]:
    import plotly.graph_objects as go

    out = []
    pde_studies = {f"studies/{p}" for p in registry.names_in("studies.pde")}
    for exp in client.search_experiments():
        name = exp.name
        if not (name.startswith("pde/") or name in pde_studies):
            continue
        runs = measured(client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=50,
                                           order_by=["attributes.start_time DESC"]))
        if not runs:
            continue
        hist = client.get_metric_history(runs[0].info.run_id, "loss")
        if not hist:
            continue
        fig = go.Figure(go.Scatter(x=[m.step for m in hist], y=[m.value for m in hist], mode="lines"))
        problem = Path(runs[0].data.params.get("problem", "")).name  # the pinn study's: the lab's own PDE, by file
        said = f" ({problem})" if problem and not name.endswith(f"/{problem}") else ""
        fig.update_layout(title=f"{name}: latest run's loss{said}", yaxis_type="log", height=300,
                          template="plotly_white", margin=dict(t=40, b=30))
        out.append((name, fig))
    return out


# --------------------------------------------------------------------------- page
def build(since: dt.timedelta, kpi_file: Path = KPI_FILE) -> tuple[str, list[dict[str, Any]]]:
    client = store.client() if store.exists() else None  # no store: every KPI 'no data', and none made
    now = dt.datetime.now()
    cutoff_ms = (now - since).timestamp() * 1000
    rows, figs = [], []
    for kpi in load_kpis(kpi_file):
        runs = runs_of(client, kpi) if client is not None else []
        cur = aggregate(kpi, runs)
        prev = aggregate(kpi, runs, cutoff_ms)
        rows.append({"name": kpi.name, "target": kpi.target, "unit": kpi.unit, "direction": kpi.direction,
                     "value": cur.value, "run_id": cur.run_id, "experiment_id": cur.experiment_id,
                     "week_earlier": prev.value, "trend": trend(kpi, cur.value, prev.value),
                     "status": status(kpi, cur.value), "metric": kpi.metric, "aggregation": kpi.aggregation,
                     "command": kpi.command})
        if cur.value is not None:
            figs.append((f"Trend: {kpi.name}", trend_figure(kpi, runs)))
    figs += study_figures(now - since)
    if client is None:
        return render(rows, figs, now, since), rows
    figs += convergence_figures(client)
    figs += sensor_figures(client)
    return render(rows, figs, now, since, guard_rows(client)), rows


def guard_table(guard: list[dict[str, Any]]) -> str:
    """The physics guard of the latest flow_inverse runs: one row per run, one cell per check."""
    if not guard:
        return ""
    from cpikan.sensors.guard import CHECKS

    cls = {"green": "ok", "yellow": "warn", "red": "bad", "n/a": "none"}
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in CHECKS)
    body = []
    for g in guard:
        link = f'<a href="{run_link(g["experiment_id"], g["run_id"])}">{g["run_id"][:8]}</a>'
        cells = "".join(f'<td class="{cls.get(s, "none")}">{f"{v:.1e}" if v is not None else s}</td>'
                        for v, s in (g["checks"][c] for c in CHECKS))
        body.append(f"<tr><td>{link}</td><td>{html.escape(str(g['flow']))}</td>"
                    f"<td>{html.escape(str(g['placement']))} K={html.escape(str(g['k']))}</td>{cells}</tr>")
    return (f"<h2>Physics guard: the latest flow_inverse runs</h2><p>Red lines in <code>cpikan/sensors/guard.toml</code>"
            f" (seed 003); n/a: no side carries that boundary condition.</p><table><tr><th>run</th><th>flow</th>"
            f"<th>sensors</th>{head}</tr>{''.join(body)}</table>")


def render(rows: list[dict[str, Any]], figs: list[tuple[str, Any]], now: dt.datetime, since: dt.timedelta,
           guard: list[dict[str, Any]] | None = None) -> str:
    esc = html.escape
    table = []
    for r in rows:
        link = (f'<a href="{run_link(r["experiment_id"], r["run_id"])}">{r["run_id"][:8]}</a>'
                if r["run_id"] else "—")
        cls = {"met": "ok", "not met": "bad", "no data": "none"}[r["status"]]
        current = fmt(r["value"]) if r["value"] is not None else f"no data: run <code>{esc(r['command'])}</code>"
        table.append(f"<tr><td>{esc(r['name'])}</td><td>{'≤' if r['direction'] == 'lower' else '≥'} "
                     f"{fmt(r['target'])} {esc(r['unit'])}</td><td>{current}</td>"
                     f"<td>{fmt(r['week_earlier'])}</td><td>{esc(r['trend'])}</td>"
                     f'<td class="{cls}">{r["status"]}</td><td>{link}</td></tr>')
    parts = []
    for i, (title, fig) in enumerate(figs):
        parts.append(f"<h3>{esc(title)}</h3>" + fig.to_html(full_html=False, include_plotlyjs=(i == 0),
                                                             config={"displaylogo": False}))
    data = json.dumps(rows).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cPIKAN Lab — weekly KPI report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.ok{{background:#d9f2d9}}.bad{{background:#f7d4d4}}
.warn{{background:#fbefc4}}.none{{color:#888}}</style></head><body>
<h1>cPIKAN Lab — weekly KPI report</h1>
<p>Generated {now:%Y-%m-%d %H:%M} from {esc(redact_urls(store.tracking_uri()))}; period: the last {since.days or since.seconds // 3600}
{'days' if since.days else 'hours'}. Values are the KPI's aggregation over all finished runs so far; "week earlier" over
runs started before the period. <code>make weekly</code> fills every KPI (its jobs: <code>python -m reports.weekly --dry-run</code>);
<code>make demo</code> fills the seam and tiled-vs-full KPIs.</p>
<table><tr><th>KPI</th><th>target</th><th>current</th><th>week earlier</th><th>trend</th><th>status</th><th>run</th></tr>
{''.join(table)}</table>
<script type="application/json" id="kpi-data">{data}</script>
{guard_table(guard or [])}
{''.join(parts) if parts else '<p>No runs yet: nothing to plot.</p>'}
</body></html>
"""


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m reports.kpi", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--since", default="7d")
    ap.add_argument("--out", default="reports/out/kpi.html")
    ap.add_argument("--kpis", default=str(KPI_FILE))
    ap.add_argument("-v", "--verbose", action="store_true", help="show the libraries' logs and notes")
    args = ap.parse_args(argv)
    logs.configure(args.verbose)
    try:
        since = parse_since(args.since)
        if not Path(args.kpis).exists():
            raise ValueError(f"--kpis: {args.kpis} not found")
        page, rows = build(since, Path(args.kpis))
    except (ValueError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    tmp.write_text(page)
    tmp.replace(out)  # never a half-written report
    met = sum(r["status"] == "met" for r in rows)
    print(f"KPI report: {out.resolve()}  ({met}/{len(rows)} KPIs met)")
    if not store.exists():
        print(f"warning: no tracking store at {store.mlruns_dir()}: every KPI reads 'no data' (run where the lab's "
              "mlruns/ is, or set CPIKAN_MLRUNS or MLFLOW_TRACKING_URI)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
