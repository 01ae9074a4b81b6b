"""Run a named study: ``python -m studies.run NAME``.

    python -m studies.run NAME [--trials N] [--timeout S] [--workers K] [--storage URL]
                               [--study-name S] [--seed S] [--set key=value ...]
    python -m studies.run --list

Each study is an Optuna study (default storage: a journal file under mlruns/optuna/, safe
for several local processes; ``--storage postgresql://…`` for several machines, which take
turns through an advisory lock to find its parent run and ask for trials) whose
trials are MLflow runs nested under one parent run per study. Running the same command
again resumes: finished trials are kept, trials of workers that died are marked FAILED,
and the study goes on to its trial count (with the same ``--set`` values: other ones are
refused, as a study ranks all its trials together). ``--workers K`` starts K processes on the same
study (studies/worker.py) and splits the CPU cores between them. Ctrl-C stops cleanly (the running trial is
marked FAILED; run the command again to resume).

Exit status: 0 done, 2 bad input (nothing created), 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import subprocess
import sys
from typing import Any

from cpikan.arguments import ArgumentParser
from cpikan.config import canonical_json
from studies import inputs, registry, samplers, storage
from studies.worker import WorkerSpec, open_study, work
from tracking import interrupts, logs

EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """A user mistake: printed on one line, exit status 2."""


# --------------------------------------------------------------------------- parent
def parent_run(study_def: registry.Study, study_name: str, storage: str) -> str:
    """The study's MLflow parent run: found by its tags when resuming, else created."""
    from tracking import store
    from tracking.provenance import redact_urls
    from tracking.tracker import Tracker

    c = store.client()
    exp = f"studies/{study_def.name}"
    exp_id = store.get_or_create_experiment(c, exp)
    found = c.search_runs([exp_id], filter_string=f"tags.`optuna.study_name` = '{study_name}' "
                          "and tags.`cpikan.study_parent` = 'true'", max_results=1)
    if found:
        return found[0].info.run_id
    with Tracker(exp, run_name=study_name, tags={"optuna.study_name": study_name, "cpikan.study_parent": "true",
                                                 "optuna.storage": redact_urls(storage)}) as run:
        pass
    return run.run_id


def describe_study(study: Any, study_def: registry.Study, spec: WorkerSpec, best: list[Any],
                   experiment_id: str) -> str:
    """The parent run's description (Markdown, MLflow's ``mlflow.note.content``)."""
    objectives = ", ".join(f"{m} ({d})" for m, d in study_def.objectives)
    lines = [f"**Study** `{spec.study_name}`: {registry.CATALOG[study_def.name].description}.",
             f"**Objectives**: {objectives}. **Sampler**: {spec.sampler} (seed {spec.seed}); "
             f"**trials**: {len(study.trials)}.", ""]
    for t in best[:5]:
        values = ", ".join(f"{m} = {v:.4g}" for (m, _), v in zip(study_def.objectives, t.values))
        rid = t.user_attrs.get("mlflow_run_id")
        link = f"[trial {t.number}](#/experiments/{experiment_id}/runs/{rid}?workflowType=machine_learning)" if rid else f"trial {t.number}"
        lines.append(f"- best: {link}: {values}; params {t.params}")
    lines.append("\nPlots: artifacts `study/`. All trials: `make dashboard`.")
    return "\n".join(lines)


def summarize(study_def: registry.Study, spec: WorkerSpec, status: str) -> str:
    """Trial counts, best trials, a description and the study plots onto the parent run,
    and a short summary printed. Returns the last trial error when no trial completed."""
    from studies.plots import study_plots
    from tracking.tracker import Tracker

    study = storage.load_study(spec.study_name, spec.storage)
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    names = [m for m, _ in study_def.objectives]
    best = study.best_trials if len(names) > 1 else ([study.best_trial] if states.get("COMPLETE") else [])
    with Tracker(spec.experiment, run_id=spec.parent_run_id) as run:
        run.log_metrics({f"trials_{k.lower()}": v for k, v in states.items()})
        run.set_tags({"optuna.best_trials": json.dumps([t.number for t in best]),
                      "optuna.best_runs": json.dumps([t.user_attrs.get("mlflow_run_id") for t in best]),
                      "mlflow.note.content": describe_study(study, study_def, spec, best,
                                                            run.client.get_run(run.run_id).info.experiment_id)})
        if len(names) == 1 and best:
            run.log_metrics({f"best_{names[0]}": best[0].value})
        for title, fig in study_plots(study, names):
            run.log_figure(fig, f"study/{title.split(' (')[0].replace(' ', '_')}.html")
    if status != "FINISHED":
        from tracking import store

        store.client().set_terminated(spec.parent_run_id, status)
    print(f"study {spec.study_name}: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items())))
    other = other_code_trials(spec.parent_run_id)
    if other:
        made = "; ".join(f"commit {c[:12]}: " + ", ".join(f"#{n}" for n in sorted(ns)) for c, ns in other.items())
        count = sum(map(len, other.values()))
        print(f"  note: {count} of {states.get('COMPLETE', 0)} complete trials were made by other code ({made}); "
              "the study ranks them with today's (--study-name starts another)")
    by_other = {n: c for c, ns in other.items() for n in ns}
    label = "best trial" if len(names) == 1 else f"Pareto front ({len(best)} trials)"
    if best:
        print(f"  {label}:")
    for t in best[:5]:
        values = " ".join(f"{n}={v:.3g}" for n, v in zip(names, t.values))
        params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        code = f"  (commit {by_other[t.number][:12]})" if t.number in by_other else ""
        print(f"    #{t.number} {values}  {params}  run {t.user_attrs.get('mlflow_run_id', '?')}{code}")
    if len(best) > 5:
        print(f"    … {len(best) - 5} more (make dashboard)")
    if states.get("COMPLETE") or states.get("PRUNED"):
        return ""
    errors = [f"trial {t.number}: {t.user_attrs['error']}" for t in study.get_trials(deepcopy=False)
              if "error" in t.user_attrs]
    return errors[-1] if errors else ""  # the last: a resume's, not a failure fixed since


def other_code_trials(parent_run_id: str) -> dict[str, list[int]]:
    """Commit → numbers of the study's complete trials whose runs were made at another commit
    than this checkout's (a study resumed after the code changed)."""
    from tracking import provenance, store

    c = store.client()
    exp_id = c.get_run(parent_run_id).info.experiment_id
    now = provenance.head_commit()
    out: dict[str, list[int]] = {}
    if now is None:  # not a git checkout: nothing to compare with
        return out
    for r in c.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=5000):
        tags = r.data.tags
        if (tags.get("optuna.state") == "COMPLETE" and tags.get("git.commit") not in (None, now)
                and tags.get("optuna.trial_number", "").isdigit()):
            out.setdefault(tags["git.commit"], []).append(int(tags["optuna.trial_number"]))
    return out


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="python -m studies.run", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", help="study name (see --list)")
    ap.add_argument("--list", action="store_true", help="list the studies and exit")
    ap.add_argument("--trials", type=int, default=None, help="total trials of the study (default: the study's own)")
    ap.add_argument("--timeout", type=float, default=None, help="stop starting trials after S seconds")
    ap.add_argument("--workers", type=int, default=1, help="parallel worker processes on this machine")
    ap.add_argument("--storage", default=None, help="Optuna storage: journal:PATH or postgresql://… (default: $CPIKAN_STORAGE, else mlruns/optuna/journal.log)")
    ap.add_argument("--study-name", default=None, help="default: the study name")
    ap.add_argument("--seed", type=int, default=0, help="study seed (each worker's and trial's seed derive from it)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    ap.add_argument("--sampler", choices=samplers.SAMPLERS, default="default",
                    help="default: TPE (NSGA-II for several objectives); random: per-trial seeds, reproducible")
    ap.add_argument("--pruner", choices=samplers.PRUNERS, default="default",
                    help="none: switch the study's pruner off (benchmarks)")
    ap.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                    help="a tag on every run of this invocation (e.g. cpikan.kpi=…)")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the libraries' logs and notes")
    return ap


def prepare(args: argparse.Namespace) -> tuple[registry.Study, Any]:
    """Everything that can be wrong with the input is found here, before anything is created."""
    known = ", ".join(registry.CATALOG)
    if args.name is None:
        raise BadInput(f"a study name is required; known: {known}")
    try:
        study_def = registry.get(args.name)
    except KeyError:
        hint = difflib.get_close_matches(args.name, list(registry.CATALOG), n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise BadInput(f"unknown study {args.name!r}{extra}; known: {known}") from None
    try:
        base = registry.apply_overrides(study_def.default(), args.set)
    except (ValueError, TypeError) as exc:
        raise BadInput(str(exc).splitlines()[0]) from None
    check_user_code(base)
    if study_def.check is not None:
        try:
            study_def.check(base)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
    for tag in args.tag:
        if "=" not in tag or not tag.split("=", 1)[0]:
            raise BadInput(f"--tag: expected KEY=VALUE, got {tag!r}")
    if args.trials is None:
        args.trials = study_def.default_trials
    if args.trials < 1:
        raise BadInput(f"--trials: must be ≥ 1, got {args.trials}")
    if args.workers < 1:
        raise BadInput(f"--workers: must be ≥ 1, got {args.workers}")
    if args.timeout is not None and args.timeout <= 0:
        raise BadInput(f"--timeout: must be > 0, got {args.timeout}")
    args.storage = args.storage or storage.default_storage()
    args.study_name = args.study_name or args.name
    from tracking import store

    try:
        storage.open_storage(args.storage)  # reachable?
        store.client()
        attrs = storage.study_attrs(args.study_name, args.storage)
        check_resume(attrs, base, args)
        changed = attrs and inputs.check_inputs(args.study_name, f"studies/{study_def.name}", canonical_json(base))
    except (storage.StorageError, store.TrackingError) as exc:
        raise BadInput(str(exc)) from None
    if changed:
        raise BadInput(changed)
    return study_def, base


def check_user_code(base: Any) -> None:
    """The lab's own code a config names (``problem=burgers.py:Burgers``) imports and has
    the name it gives, before any run is made: the user's command line, so their code."""
    from cpikan import refs
    from cpikan.config import named_code

    for path, ref, what in named_code(base):
        try:
            refs.load(ref, path, what)
        except ValueError as exc:
            raise BadInput(str(exc)) from None


BASE_ATTR = "base_config"  # the study's config before the sampler's choices (canonical JSON), and its --set


def check_resume(attrs: dict[str, Any] | None, base: Any, args: argparse.Namespace) -> None:
    """Refuse to resume a study with other ``--set`` values that change its base config: its
    trials would be ranked against trials of another setup, one Pareto front over both. The
    same ``--set`` on code whose defaults changed since is said, not refused (as trials of
    other commits are: :func:`other_code_trials`)."""
    from cpikan.config import canonical_json
    from tracking.hashing import config_hash, flatten

    if not attrs or BASE_ATTR not in attrs or attrs[BASE_ATTR]["config"] == canonical_json(base):
        return
    was, now = flatten(json.loads(attrs[BASE_ATTR]["config"])), flatten(base)
    changed = [f"{k} {json.dumps(was.get(k))} → {json.dumps(now.get(k))}" for k in sorted(set(was) | set(now))
               if was.get(k) != now.get(k)]
    said = "; ".join(changed[:4]) + ("; …" if len(changed) > 4 else "")
    fresh = f"{args.study_name}-{config_hash(base)[:6]}"  # the same name for the same setup: it resumes too
    if list(attrs[BASE_ATTR]["overrides"]) == list(args.set):
        print(f"note: the code's defaults changed since study {args.study_name!r} began ({said}); new trials use "
              f"today's and are ranked with its others (--study-name {fresh} starts another)", file=sys.stderr)
        return
    given = " ".join(f"--set {s}" for s in attrs[BASE_ATTR]["overrides"]) or "no --set"
    raise BadInput(f"study {args.study_name!r} was run with another base config ({said}): its trials would be "
                   f"ranked with these; resume it with {given}, or start another with --study-name {fresh}")


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def spawn_workers(spec: WorkerSpec, count: int) -> list[subprocess.Popen[bytes]]:
    """Start workers 1..count, each reading its frozen spec on stdin."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads)}
    procs = []
    for index in range(1, count + 1):
        p = subprocess.Popen([sys.executable, "-m", "studies.worker"], stdin=subprocess.PIPE, env=env)
        assert p.stdin is not None
        p.stdin.write(dataclasses.replace(spec, index=index).to_json().encode())
        p.stdin.close()
        procs.append(p)
    return procs


def run_workers(spec: WorkerSpec, workers: int, study_def: registry.Study, base: Any) -> int:
    """K workers: K − 1 spawned processes and this one (which keeps the progress bar), so
    the import and store start-up of one worker is not paid on top of the others'."""
    import torch

    procs = spawn_workers(spec, workers - 1)
    try:
        if spec.threads:
            torch.set_num_threads(spec.threads)
        work(spec, study_def, base, others=lambda: any(p.poll() is None for p in procs))
    except KeyboardInterrupt:  # their trials are marked first (they get the signal, or SIGTERM from here)
        interrupts.stop(procs)
        raise
    finally:
        codes = [p.wait() for p in procs]
    return max(codes, default=0)


def prepare_shared(study_def: registry.Study, base: Any) -> bool:
    """The study's shared set-up (a pretrained network), once before its workers; False when it failed."""
    if study_def.prepare is None:
        return True
    try:
        study_def.prepare(base)
    except Exception as exc:  # noqa: BLE001 — the study's summary below says what ran
        print(f"error: preparing the study failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False
    return True


def record_sampling(spec: WorkerSpec, study_def: registry.Study, base: Any) -> None:
    """Sampler, pruner and seeds on the study itself (optuna-dashboard shows them), and its
    base config, which a resume must match (:func:`check_resume`)."""
    from cpikan.config import canonical_json

    study, _, recorded = open_study(spec, study_def)
    study.set_user_attr("sampling", {**recorded, "workers_seeded_by": "study seed and worker index"})
    if BASE_ATTR not in study.user_attrs:
        study.set_user_attr(BASE_ATTR, {"config": canonical_json(base), "overrides": list(spec.overrides)})


#: the commands beside the studies, shown under --list so they are found
COMMANDS = (("studies.reconstruct", "wafers' bucket files → height maps (classical, a trained run, or your model)"),
            ("studies.place_sensors", "K sensors on your snapshot family (npy, CSV, VTU…), scored on held-out snapshots"),
            ("studies.estimate_field", "sensor readings → whole fields, on a placement made by place_sensors"),
            ("cpikan.tiling check", "is your model exact when tiled? (receptive field, shift-equivariance)"),
            ("tracking.replay RUN_ID", "run a past run again and compare every result"),
            ("tracking.diff A B", "what differs between two runs"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.verbose)
    interrupts.sigterm_as_ctrl_c()
    if args.list:
        width = max(map(len, registry.CATALOG))
        for name, entry in registry.CATALOG.items():
            print(f"{name:<{width}}  {entry.description}")
        print("\nthe other commands (python -m COMMAND, --help for each):")
        for module, what in COMMANDS:
            print(f"  {module:<26}{what}")
        return 0
    try:
        study_def, base = prepare(args)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    with storage.study_lock(args.study_name, args.storage):  # another machine starting it waits here
        parent_id = parent_run(study_def, args.study_name, args.storage)
    spec = WorkerSpec(study=args.name, study_name=args.study_name, storage=args.storage, trials=args.trials,
                      seed=args.seed, sampler=args.sampler, pruner=args.pruner, overrides=tuple(args.set),
                      tags=tuple(args.tag),
                      parent_run_id=parent_id, timeout=args.timeout,
                      threads=threads_per_worker(args.workers) if args.workers > 1 else 0)
    record_sampling(spec, study_def, base)
    status = "FINISHED"
    try:
        with storage.study_lock(args.study_name, args.storage):  # made once, whichever machine comes first
            prepared = prepare_shared(study_def, base)
        if not prepared or run_workers(spec, args.workers, study_def, base):
            status = "FAILED"
    except KeyboardInterrupt:
        status = "KILLED"
        print("\ninterrupted: the running trial is marked FAILED; run the same command to resume",
              file=sys.stderr)
    error = summarize(study_def, spec, status)
    if status == "KILLED":
        return 130
    if error:  # a study whose every trial failed is a failed command, not a quiet success
        print(f"error: no trial completed; the last failure, {error}", file=sys.stderr)
        return 1
    return 1 if status == "FAILED" else 0


if __name__ == "__main__":
    sys.exit(main())
