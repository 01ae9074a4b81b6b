"""Replay a past run by its ID and say whether it reproduced.

    python -m tracking.replay RUN_ID [--rtol R] [--force] [--recorded-code] [--moved OLD=NEW ...]

Rebuilds the config from the run's ``config.json``, imports the recorded entry point
(``module:function``, by name: tracking never imports the studies), re-runs it with the
same seed and thread count as a new run tagged ``replay_of=RUN_ID``, and prints a
metric-by-metric table. Result metrics must agree within ``--rtol`` (default 0: exact, as
on the same CPU machine); measurements (time, throughput, memory) are shown, not compared.
By default the replay runs today's code; ``--recorded-code`` runs it in a checkout of the
run's own commit and recorded uncommitted diff (``tracking/checkout.py``), which is what
reproduces a run made by older code exactly. Files the run read that have moved since are
read from where they are now with ``--moved OLD=NEW`` (``tracking/relocate.py``); their
sha256 is checked as always.

Exit status: 0 reproduced, 1 did not reproduce, 2 bad input (unknown run, missing or
corrupted config, changed dataset without --force, unreachable store) — in which case
nothing is written to the store.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cpikan.arguments import ArgumentParser
from cpikan.config import from_recorded
from tracking import hashing, interrupts, links, logs, provenance, relocate, store, tracker
from tracking.store import TrackingError

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TAG_REPLAY_OF = links.TAG_REPLAY_OF
TAG_REPRODUCED = "replay.reproduced"


def _import(ref: str, what: str) -> Any:
    module, _, name = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise TrackingError(f"{what} {ref!r} cannot be imported ({exc})") from None
    return obj


def load_config(client: Any, run: Any) -> tuple[Any, Callable[..., dict[str, float]]]:
    """The config object and the entry point, rebuilt from the run (no writes)."""
    return config_from(run, recorded_config(client, run))


def recorded_config(client: Any, run: Any) -> Any:
    """The run's ``config.json`` as recorded (JSON values), checked against its hash."""
    from mlflow.exceptions import MlflowException

    tags = run.data.tags
    rid = run.info.run_id
    if tracker.TAG_ENTRY not in tags:
        if tags.get("cpikan.study_parent") == "true":
            raise TrackingError(f"run {rid} is the parent run of study {tags.get('optuna.study_name', '?')!r}: "
                                "replay one of its trials by its run ID (a study resumes with python -m studies.run)")
        made = f" (made at commit {tags['git.commit'][:12]})" if tags.get("git.commit") else ""
        raise TrackingError(f"run {rid}{made} records no entry point (tag {tracker.TAG_ENTRY}); it cannot be replayed")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(rid, tracker.CONFIG_ARTIFACT, tmp)
            text = Path(path).read_text()
        except (MlflowException, OSError):
            raise TrackingError(f"run {rid} has no {tracker.CONFIG_ARTIFACT} artifact; it cannot be replayed") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrackingError(f"run {rid}: {tracker.CONFIG_ARTIFACT} is corrupted ({exc.msg} at line {exc.lineno})") from None
    recorded = tags.get(tracker.TAG_CONFIG_HASH)
    if recorded and hashing.config_hash(data) != recorded:
        raise TrackingError(f"run {rid}: {tracker.CONFIG_ARTIFACT} does not match its config_hash tag (corrupted)")
    return data


def config_from(run: Any, data: Any) -> tuple[Any, Callable[..., dict[str, float]]]:
    """The config object (of the run's recorded class) and the entry point, from ``data``."""
    tags, rid = run.data.tags, run.info.run_id
    fn = _import(tags[tracker.TAG_ENTRY], "entry point")
    config: Any = data
    if tracker.TAG_CONFIG_CLASS in tags:
        cls = _import(tags[tracker.TAG_CONFIG_CLASS], "config class")
        try:
            config, filled = from_recorded(cls, data)
        except (TypeError, ValueError) as exc:
            raise TrackingError(f"run {rid}: {tracker.CONFIG_ARTIFACT} is not a valid config ({exc})") from None
        if filled:
            said = ", ".join(f"{k}={json.dumps(v)}" for k, v in filled.items())
            print(f"note: run {rid} predates {len(filled)} config field(s); set as the code then behaved: {said}",
                  file=sys.stderr)
    return config, fn


def check_datasets(datasets: dict[str, dict[str, str]], force: bool, moves: relocate.Moves = ()) -> list[str]:
    """Refuse (unless ``force``) when a recorded dataset's content changed or vanished (read
    where ``moves`` put it)."""
    warnings = []
    for name, info in datasets.items():
        path = Path(relocate.moved_path(info["path"], moves))
        problem, hint = None, "; pass --force to replay anyway"
        if not path.exists():
            problem = f"dataset {name!r} ({path}) no longer exists"
            hint = f"; if it moved, pass --moved {path.parent}=WHERE_IT_IS (its sha256 is checked), or --force to replay anyway"
        elif hashing.file_sha256(path) != info["sha256"]:
            problem = f"dataset {name!r} ({path}) changed since the run (sha256 differs)"
        if problem and not force:
            raise TrackingError(problem + hint)
        if problem:
            warnings.append(problem)
    return warnings


def code_warnings(run: Any, client: Any) -> list[str]:
    tags = run.data.tags
    now = provenance.git_state()
    out = []
    if tags.get("git.commit") not in (None, now["commit"]):
        out.append(f"code commit differs: run {tags['git.commit'][:12]}, now {now['commit'][:12]}")
    if tags.get("git.dirty") == "true" or now["dirty"]:
        old = provenance.recorded_diff(client, run)
        if old != provenance.redact(now["diff"]):
            out.append("uncommitted changes differ from the run's recorded diff")
    return out


def version_warnings(run: Any) -> list[str]:
    """The libraries (and Python) whose versions differ from the run's: a replay with the
    run's own code still runs today's torch and numpy, and their kernels round their way."""
    tags = run.data.tags
    return [f"{name} {tags[f'version.{name}']} when the run was made, {now} now"
            for name, now in provenance.versions().items()
            if tags.get(f"version.{name}") not in (None, now)]


def compare(
    old: dict[str, float], new: dict[str, float], measurements: list[str], rtol: float
) -> tuple[bool, list[tuple]]:
    """Every metric of the original but the machine measurements must agree (last values of
    step metrics too); one only the replay has (a result added since) is shown as new."""
    rows, ok = [], True
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if name in measurements:
            rows.append((name, a, b, "", "not compared"))
            continue
        if a is None:  # a result newer code adds: nothing of the original is contradicted
            rows.append((name, a, b, "", "new"))
            continue
        if a is None or b is None:
            same = False
        elif math.isnan(a) and math.isnan(b):
            same = True
        else:
            same = a == b or abs(a - b) <= rtol * max(abs(a), abs(b))
        diff = "" if a is None or b is None else f"{abs(a - b):.3g}"
        rows.append((name, a, b, diff, "same" if same else "DIFFERENT"))
        ok &= same
    return ok, rows


def values_where_it_stopped(client: Any, run: Any, new_id: str) -> dict[str, float]:
    """The replay's value of each of an interrupted run's metrics at the step where that run
    logged it last: the replay goes on to the end, so its last values are not comparable."""
    out = {}
    for key in run.data.metrics:
        old = client.get_metric_history(run.info.run_id, key)
        at = {m.step: m.value for m in sorted(client.get_metric_history(new_id, key), key=lambda m: m.timestamp)}
        if old and old[-1].step in at:
            out[key] = at[old[-1].step]
    return out


def print_table(rows: list[tuple]) -> None:
    def fmt(v: Any) -> str:
        return "—" if v is None else (f"{v:.10g}" if isinstance(v, float) else str(v))

    head = ("metric", "original", "replay", "|Δ|", "verdict")
    table = [head] + [tuple(fmt(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def replay(run_id: str, rtol: float = 0.0, force: bool = False, moves: relocate.Moves = ()) -> tuple[bool, str]:
    """Re-run ``run_id``; returns (reproduced, new run ID). Raises TrackingError on bad input."""
    client = store.client(must_exist=True)
    run = store.get_run(client, run_id)
    data, datasets = recorded_config(client, run), tracker.recorded_datasets(client, run)
    if moves:
        relocate.check_used(moves, [*relocate.strings(data), *(d["path"] for d in datasets.values())])
        data = relocate.moved_values(data, moves)
    warnings = check_datasets(datasets, force, moves)  # before the config: it may name a file that is gone
    config, fn = config_from(run, data)
    stopped = run.info.status == "KILLED"
    if stopped:
        print(f"note: run {run_id} was interrupted (KILLED): the replay runs to the end, and each metric is compared "
              "at the step where the run logged it last", file=sys.stderr)
    for w in warnings + code_warnings(run, client) + version_warnings(run):
        print(f"warning: {w}", file=sys.stderr)
    for old, new in moves:
        print(f"note: what the run read under {old} is read from {new} (each file's sha256 checked)", file=sys.stderr)
    tags = run.data.tags
    if tags.get("torch.threads"):
        import torch  # after the checks: a bad run ID answers without loading torch

        torch.set_num_threads(int(tags["torch.threads"]))
    exp = client.get_experiment(run.info.experiment_id).name
    measurements = json.loads(tags.get(tracker.TAG_MEASUREMENTS, "[]"))
    seed = int(tags["seed"]) if tags.get("seed") else None
    new_id = None
    try:
        with tracker.Tracker(exp, config=config, entry_point=tags[tracker.TAG_ENTRY], seed=seed,
                             run_name=f"replay of {run.info.run_name or run_id}",
                             tags={TAG_REPLAY_OF: run_id, **({"replay.moved": json.dumps(dict(moves))} if moves else {})}
                             ) as ctx:
            new_id = ctx.run_id
            fn(config, ctx)
    except (ValueError, OSError, ImportError) as exc:  # what the run read is gone or refused now
        which = f" (run {new_id}, marked FAILED)" if new_id else ""
        raise TrackingError(f"the replay{which} stopped: {exc}") from None
    new_metrics = values_where_it_stopped(client, run, new_id) if stopped else client.get_run(new_id).data.metrics
    ok, rows = compare(dict(run.data.metrics), dict(new_metrics), measurements, rtol)
    print_table(rows)
    client.set_tag(new_id, TAG_REPRODUCED, str(ok).lower())
    client.set_tag(new_id, "replay.rtol", str(rtol))
    client.log_text(new_id, json.dumps([list(r) for r in rows], indent=1), "replay/comparison.json")
    return ok, new_id


def replay_with_recorded_code(run_id: str, rtol: float, force: bool, verbose: bool,
                              moved: list[str]) -> int | None:
    """Replay ``run_id`` by the replay of the code it was made with, checked out beside
    this one; returns that replay's exit status, or None when today's code is the run's
    (the replay then runs here as usual)."""
    from tracking import checkout

    client = store.client(must_exist=True)
    run = store.get_run(client, run_id)
    if not code_warnings(run, client):
        return None
    with checkout.recorded_code(run, client) as (code, untracked):
        tags = run.data.tags
        said = " and its uncommitted diff" if tags.get("git.dirty") == "true" else ""
        print(f"replaying with the run's code: commit {tags['git.commit'][:12]}{said}, checked out in {code}",
              file=sys.stderr)
        for name in untracked:
            print(f"warning: {name} was untracked when the run was made and not recorded; the replay runs "
                  "without it", file=sys.stderr)
        for w in version_warnings(run):  # the checkout's replay may predate this check
            print(f"warning: {w}", file=sys.stderr)
        # -P: the checkout's packages, not the ones in the current directory
        path = os.pathsep.join(p for p in (str(code), os.environ.get("PYTHONPATH", "")) if p)
        argv = [sys.executable, "-P", "-m", "tracking.replay", run_id, "--rtol", repr(rtol)]
        if moved and not (code / "tracking" / "relocate.py").exists():
            raise TrackingError(f"--moved: the run's code (commit {tags['git.commit'][:12]}) cannot read moved files; "
                                "replay it with today's code (without --recorded-code), or move them back")
        argv += ["--force"] * force + ["-v"] * verbose + [f"--moved={m}" for m in moved]
        return interrupts.call(argv, env={**os.environ, "PYTHONPATH": path})


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m tracking.replay", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_id")
    ap.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for result metrics (default 0: exact)")
    ap.add_argument("--force", action="store_true", help="replay even if a dataset changed")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the libraries' logs and notes")
    ap.add_argument("--recorded-code", action="store_true",
                    help="run the replay with the code the run was made with (its commit and uncommitted diff, "
                         "checked out in a temporary git worktree) instead of today's")
    ap.add_argument("--moved", action="append", default=[], metavar="OLD=NEW",
                    help="what the run read under the folder or file OLD is now under NEW (repeatable); "
                         "every file's sha256 is still checked")
    args = ap.parse_args(argv)
    logs.configure(args.verbose)
    interrupts.sigterm_as_ctrl_c()
    if not args.rtol >= 0:
        print("error: --rtol must be ≥ 0", file=sys.stderr)
        return 2
    try:
        moves = relocate.parse_moves(args.moved)
        args.run_id = store.get_run(store.client(must_exist=True), args.run_id).info.run_id  # the start of one, too
        if args.recorded_code:
            status = replay_with_recorded_code(args.run_id, args.rtol, args.force, args.verbose, args.moved)
            if status is not None:
                return status
        ok, new_id = replay(args.run_id, args.rtol, args.force, moves)
    except TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # (a replay with the recorded code: its child said so)
        if not args.recorded_code:
            print("interrupted: the replay's run is marked KILLED", file=sys.stderr)
        return 130
    print(f"replay run {new_id}: {'reproduced' if ok else 'DID NOT reproduce'} run {args.run_id}")
    if not ok:
        from tracking.diff import diff_runs, print_differences

        print("\nwhat differs (python -m tracking.diff):")
        diffs = diff_runs(args.run_id, new_id)
        print_differences(diffs, ("original", "replay"))
        commits = diffs.get("provenance", {}).get("git.commit")
        if commits and commits[0]:
            print(f"\nthe run was made by other code (commit {commits[0][:12]}): --recorded-code replays it with that")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
