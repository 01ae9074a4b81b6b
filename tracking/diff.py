"""What differs between two runs: config, results, provenance.

    python -m tracking.diff RUN_A RUN_B [--json] [--measurements]

Prints only the keys whose values differ, by section:

- ``config``: the run's params (the flattened config);
- ``results``: final values of every metric, and the best (lowest) value of each step
  metric; machine measurements (seconds, throughput, memory) only with ``--measurements``;
- ``provenance``: what decides a result besides the config: code commit, uncommitted diff,
  package versions, dataset hashes, machine, threads, seed, entry point.

What only names a run (its ID, name, start time, the command that started it, replay and
study bookkeeping) is not compared, so a run and its exact replay print ``identical``.
MLflow has no such view (mlflow#4819); this is the ``dvc exp diff`` of the lab.

Exit status: 0 identical, 1 different, 2 bad input (unknown run, unreachable store).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from typing import Any

from cpikan.arguments import ArgumentParser
from tracking import logs, provenance, store, tracker
from tracking.store import TrackingError

PROVENANCE_TAGS = ("git.commit", "git.dirty", "host", "cpu", "gpu", "torch.threads", "seed",
                   tracker.TAG_CONFIG_HASH, tracker.TAG_ENTRY, tracker.TAG_CONFIG_CLASS)


def _dirty_diff(client: Any, run: Any) -> str:
    """sha256 (12 digits) and line count of the recorded uncommitted diff, '' when clean."""
    text = provenance.recorded_diff(client, run)
    if not text:
        return "" if text == "" else "unknown"  # a missing artifact reads as "unknown", not a crash
    return f"sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]}, {len(text.splitlines())} lines"


def describe(client: Any, run: Any, measurements: bool = False) -> dict[str, dict[str, Any]]:
    """The comparable content of one run, by section."""
    tags = run.data.tags
    skip = set() if measurements else set(json.loads(tags.get(tracker.TAG_MEASUREMENTS, "[]")))
    results: dict[str, Any] = {}
    for key, value in sorted(run.data.metrics.items()):
        if key in skip:
            continue
        results[key] = value
        history = client.get_metric_history(run.info.run_id, key)
        if len(history) > 1:
            results[f"best {key}"] = min(m.value for m in history)
    prov: dict[str, Any] = {k: tags[k] for k in PROVENANCE_TAGS if k in tags}
    prov.update({k: v for k, v in tags.items() if k.startswith("version.")})
    for name, info in tracker.recorded_datasets(client, run).items():
        prov[f"dataset {name}"] = info.get("sha256")
    prov["uncommitted diff"] = _dirty_diff(client, run)
    return {"config": dict(run.data.params), "results": results, "provenance": prov}


def differences(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, dict[str, list[Any]]]:
    """Only the keys whose values differ (missing on one side counts), by section."""
    out: dict[str, dict[str, list[Any]]] = {}
    for section in a:
        left, right = a[section], b[section]
        diff = {k: [left.get(k), right.get(k)] for k in sorted(set(left) | set(right))
                if left.get(k) != right.get(k)}
        if diff:
            out[section] = diff
    return out


def diff_runs(run_a: str, run_b: str, measurements: bool = False) -> dict[str, dict[str, list[Any]]]:
    """The differences between two runs of the project store (see :func:`differences`)."""
    client = store.client(must_exist=True)
    a, b = store.get_run(client, run_a), store.get_run(client, run_b)
    return differences(describe(client, a, measurements), describe(client, b, measurements))


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.10g}"
    return str(v)


def print_differences(diffs: dict[str, dict[str, list[Any]]], names: tuple[str, str] = ("A", "B")) -> None:
    if not diffs:
        print("identical")
        return
    for section, rows in diffs.items():
        print(f"{section}:")
        width = max(len(k) for k in rows)
        for key, (a, b) in rows.items():
            print(f"  {key:<{width}}  {names[0]}: {_fmt(a)}  {names[1]}: {_fmt(b)}")


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m tracking.diff", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--json", action="store_true", help="print the differences as JSON (for scripts)")
    ap.add_argument("--measurements", action="store_true", help="also compare seconds, throughput, memory")
    args = ap.parse_args(argv)
    logs.configure()
    try:
        client = store.client(must_exist=True)  # the start of an ID, too (as printed below)
        args.run_a, args.run_b = (store.get_run(client, r).info.run_id for r in (args.run_a, args.run_b))
        diffs = diff_runs(args.run_a, args.run_b, args.measurements)
    except TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"identical": not diffs, "differences": diffs}, indent=1, sort_keys=True))
    else:
        kinds = diffs.get("provenance", {}).get(tracker.TAG_CONFIG_CLASS)
        if kinds and None not in kinds:  # a reconstruction beside a training run, say: every field differs
            print(f"note: runs of two kinds ({args.run_a[:8]}: {kinds[0]}, {args.run_b[:8]}: {kinds[1]}); "
                  "their configs have different fields\n")
        print_differences(diffs, (args.run_a[:8], args.run_b[:8]))
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
