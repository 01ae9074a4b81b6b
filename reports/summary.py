"""A Markdown summary of one run, printed and attached to the run as ``summary.md``.

    python -m reports.summary RUN_ID [--out PATH] [--no-attach]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from cpikan.arguments import ArgumentParser
from reports.common import get_run
from tracking.store import TrackingError


def _artifacts(client: Any, run_id: str, path: str = "") -> list[str]:
    out = []
    for a in client.list_artifacts(run_id, path or None):
        out += _artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


def summarize(client: Any, run: Any) -> str:
    info, data = run.info, run.data
    tags = data.tags
    rid = info.run_id
    lines = [f"# Run {info.run_name or rid}", "", f"- run ID: `{rid}`", f"- status: {info.status}",
             f"- experiment: {client.get_experiment(info.experiment_id).name}",
             f"- entry point: `{tags.get('cpikan.entry_point', '—')}`", f"- config hash: `{tags.get('config_hash', '—')}`"]
    if "replay_of" in tags:
        verdict = {"true": "reproduced", "false": "did NOT reproduce"}.get(tags.get("replay.reproduced", ""), "unknown")
        lines.append(f"- **replay of** `{tags['replay_of']}`: {verdict} (rtol {tags.get('replay.rtol', '?')})")
    replays = client.search_runs([info.experiment_id], f"tags.replay_of = '{rid}'")
    for r in replays:
        commit = r.data.tags.get("git.commit", "?")
        code = "its commit" if commit == tags.get("git.commit") else f"code of {commit[:12]}"
        lines.append(f"- replayed by `{r.info.run_id}` ({code}): {r.data.tags.get('replay.reproduced', '?')}")
    links = {k: v for k, v in tags.items() if k.startswith("link.")}
    for k, v in sorted(links.items()):
        lines.append(f"- {k}: `{v}`")
    if "mlflow.parentRunId" in tags:
        lines.append(f"- parent run: `{tags['mlflow.parentRunId']}`")
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.8g} |" for k, v in sorted(data.metrics.items())]
    results = json.loads(tags.get("cpikan.result_metrics", "[]"))
    meas = json.loads(tags.get("cpikan.measurement_metrics", "[]"))
    if results or meas:
        lines += ["", f"Results (compared on replay): {', '.join(results) or '—'}",
                  f"Measurements (not compared): {', '.join(meas) or '—'}"]
    lines += ["", "## Config", ""]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cfg = json.loads(Path(client.download_artifacts(rid, "config.json", tmp)).read_text())
            lines += ["```json", json.dumps(cfg, indent=2, sort_keys=True), "```"]
        except Exception:  # noqa: BLE001
            lines.append("(no config.json)")
    lines += ["", "## Provenance", ""]
    for k in sorted(tags):
        if k.split(".")[0] in ("git", "version", "host", "cpu", "gpu", "command", "seed", "torch"):
            lines.append(f"- {k}: `{tags[k]}`")
    lines += ["", "## Datasets", ""]
    for name, d in json.loads(tags.get("cpikan.datasets", "{}")).items():
        lines.append(f"- {name}: `{d['path']}` sha256 `{d['sha256']}`")
    if not json.loads(tags.get("cpikan.datasets", "{}")):
        lines.append("(none)")
    lines += ["", "## Artifacts", ""] + [f"- {a}" for a in _artifacts(client, rid)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m reports.summary", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_id")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-attach", action="store_true")
    args = ap.parse_args(argv)
    try:
        client, run = get_run(args.run_id)
        args.run_id = run.info.run_id  # the whole ID when given its start
    except TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = summarize(client, run)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    if not args.no_attach:
        client.log_text(args.run_id, text, "summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
