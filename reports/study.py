"""One study's report: its trials table and plots in one offline HTML file.

    python -m reports.study NAME [--storage URL] [--out PATH]
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

from cpikan.arguments import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m reports.study", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("--storage", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import optuna

    from studies.storage import StorageError, default_storage, open_storage
    from tracking.provenance import redact_urls

    try:
        url = args.storage or default_storage()
        storage = open_storage(url)
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if args.name not in names:
            from studies.dashboard import studies_elsewhere

            there = sorted(w for w, found in studies_elsewhere(redact_urls(url)).items() if args.name in found)
            where = f" (the tracking store has it in {' and '.join(there)}: --storage URL or CPIKAN_STORAGE=URL)"
            raise StorageError(f"unknown study {args.name!r}; in this storage: {', '.join(names) or '(none)'}"
                               + (where if there else ""))
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    study = optuna.load_study(study_name=args.name, storage=storage)
    rows = []
    for t in study.get_trials(deepcopy=False):
        vals = ", ".join(f"{v:.4g}" for v in (t.values or []))
        rows.append(f"<tr><td>{t.number}</td><td>{t.state.name}</td><td>{vals}</td>"
                    f"<td>{html.escape(str(t.params))}</td><td>{t.user_attrs.get('mlflow_run_id', '')}</td></tr>")
    vis = optuna.visualization
    figs = []
    try:
        figs.append(vis.plot_pareto_front(study, targets=lambda t: t.values[:3]) if len(study.directions) > 1
                    else vis.plot_optimization_history(study))
        figs.append(vis.plot_parallel_coordinate(study, target=lambda t: t.values[0]))
        figs.append(vis.plot_param_importances(study, target=lambda t: t.values[0]))
    except Exception as exc:  # noqa: BLE001 — too few trials for some plots
        print(f"warning: some plots skipped ({exc})", file=sys.stderr)
    plots = "".join(f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Study {html.escape(args.name)}</title></head>"
            f"<body><h1>Study {html.escape(args.name)}</h1><table border='1'><tr><th>trial</th><th>state</th>"
            f"<th>values</th><th>params</th><th>MLflow run</th></tr>{''.join(rows)}</table>{plots}</body></html>")
    out = Path(args.out or f"reports/out/study_{args.name}.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".part").write_text(page)
    out.with_suffix(".part").replace(out)
    print(out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
