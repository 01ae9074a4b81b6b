"""Run a named study: ``python -m studies.run NAME``.

    python -m studies.run NAME [--trials N] [--timeout S] [--workers K] [--storage URL]
                               [--study-name S] [--seed S] [--set key=value ...]
    python -m studies.run --list

Each study is an Optuna study (default storage: a journal file under mlruns/optuna/, safe
for several local processes; ``--storage postgresql://…`` for several machines) whose
trials are MLflow runs nested under one parent run per study. Running the same command
again resumes: finished trials are kept, trials of workers that died are marked FAILED,
and the study goes on to its trial count. ``--workers K`` starts K processes on the same
study and splits the CPU cores between them. Ctrl-C stops cleanly (the running trial is
marked FAILED; run the command again to resume).

Exit status: 0 done, 2 bad input (nothing created), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from studies import registry

EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """A user mistake: printed on one line, exit status 2."""


# --------------------------------------------------------------------------- storage
def default_storage() -> str:
    from tracking.store import mlruns_dir

    return f"journal:{mlruns_dir() / 'optuna' / 'journal.log'}"


def open_storage(url: str) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith(("postgresql", "mysql", "sqlite")):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words only
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=10, grace_period=30,
                                                  engine_kwargs={"pool_pre_ping": True})
        except Exception as exc:  # noqa: BLE001 — any connection failure means the same here
            raise BadInput(f"--storage {url}: unreachable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    raise BadInput(f"--storage: unsupported URL {url!r}; use journal:PATH or postgresql://…")


def lock_path(study_name: str) -> Path:
    from tracking.store import mlruns_dir

    safe = "".join(c if c.isalnum() else "_" for c in study_name)
    p = mlruns_dir() / "optuna" / f".{safe}.lock"
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


@contextlib.contextmanager
def file_lock(path: Path):  # type: ignore[no-untyped-def]
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- trials
def _alive(pid: int, started: float) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # guard against pid reuse: the process must be older than the trial
        return os.stat(f"/proc/{pid}").st_ctime <= started + 1
    except OSError:
        return True


def fail_stale_trials(study: Any) -> list[int]:
    """RUNNING trials whose worker (on this host) is gone become FAILED, with their runs."""
    from optuna.trial import TrialState

    from tracking import store

    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.user_attrs
        if attrs.get("worker.host") != socket.gethostname() or "worker.pid" not in attrs:
            continue
        if _alive(int(attrs["worker.pid"]), float(attrs.get("worker.started", 0))):
            continue
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        stale.append(t.number)
        c = store.client()
        for rid in _runs_of_trial(c, study.study_name, t.number, attrs.get("mlflow_run_id")):
            c.set_tag(rid, "error", "worker died during the trial (found stale on resume)")
            c.set_tag(rid, "optuna.state", "FAIL")
            c.set_terminated(rid, "FAILED")
    return stale


def _runs_of_trial(c: Any, study_name: str, number: int, known: str | None) -> list[str]:
    """The trial's MLflow run; found by tags when the worker died before recording its ID."""
    if known:
        return [known]
    exps = [e.experiment_id for e in c.search_experiments()]
    if not exps:
        return []
    runs = c.search_runs(exps, filter_string=f"tags.`optuna.study` = '{study_name}' and "
                         f"tags.`optuna.trial_number` = '{number}' and attributes.status = 'RUNNING'")
    return [r.info.run_id for r in runs]


def seed_of(config: Any) -> int | None:
    for path in (("train", "seed"), ("seed",)):
        obj = config
        for p in path:
            obj = getattr(obj, p, None)
        if isinstance(obj, int):
            return obj
    return None


def run_trial(study_def: registry.Study, trial: Any, base: Any, parent_run_id: str, exp: str) -> list[float]:
    import optuna

    from tracking.tracker import Tracker

    trial.set_user_attr("worker.pid", os.getpid())
    trial.set_user_attr("worker.host", socket.gethostname())
    trial.set_user_attr("worker.started", time.time())
    config = study_def.space(trial, base)
    tags = {"optuna.study": trial.study.study_name, "optuna.trial_number": str(trial.number)}
    with Tracker(exp, config=config, entry_point=study_def.entry_point, seed=seed_of(config),
                 parent_run_id=parent_run_id, run_name=f"trial {trial.number}", tags=tags,
                 benign=(optuna.TrialPruned,)) as ctx:
        trial.set_user_attr("mlflow_run_id", ctx.run_id)

        def report(step: int, value: float) -> None:
            trial.report(value, step)
            if trial.should_prune():
                ctx.set_tags({"optuna.state": "PRUNED"})
                raise optuna.TrialPruned(f"pruned at step {step}")

        ctx.reporter = report
        try:
            results = study_def.run_fn()(config, ctx)
        except optuna.TrialPruned:
            raise
        except BaseException:
            ctx.set_tags({"optuna.state": "FAIL"})
            raise
        values = [float(results[m]) for m, _ in study_def.objectives]
        ctx.set_tags({"optuna.state": "COMPLETE", "optuna.values": json.dumps(values)})
    return values


def work(args: argparse.Namespace, study_def: registry.Study, base: Any, parent_run_id: str,
         progress: bool) -> None:
    """One worker: ask for trials until the study has its count (or the timeout passes)."""
    import optuna
    from optuna.trial import TrialState
    from tqdm import tqdm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(args.storage)
    seed = args.seed + os.getpid() % 1000 if args.worker else args.seed  # workers must not propose alike
    if args.sampler == "random":
        sampler: Any = optuna.samplers.RandomSampler(seed=args.seed)
    elif len(study_def.objectives) == 1:
        sampler = optuna.samplers.TPESampler(seed=seed)
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
    use_pruner = study_def.pruner == "median" and args.pruner != "none"
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1) if use_pruner \
        else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=args.study_name, storage=storage, load_if_exists=True,
                                directions=[d for _, d in study_def.objectives], sampler=sampler, pruner=pruner)
    fail_stale_trials(study)
    exp = f"studies/{study_def.name}"
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    lock = lock_path(args.study_name)
    bar = tqdm(total=args.trials, desc=study_def.name, unit="trial", disable=not progress, mininterval=1)
    try:
        while deadline is None or time.monotonic() < deadline:
            with file_lock(lock):  # count and ask atomically: workers never overshoot
                trials = study.get_trials(deepcopy=False)
                done = sum(t.state in finished for t in trials)
                running = sum(t.state == TrialState.RUNNING for t in trials)
                failed = sum(t.state == TrialState.FAIL for t in trials)
                bar.n = done
                bar.refresh()
                if done + running >= args.trials or failed >= max(args.trials, 3) * 2:
                    break
                trial = study.ask()
            try:
                values = run_trial(study_def, trial, base, parent_run_id, exp)
                study.tell(trial, values)
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
            except KeyboardInterrupt:
                study.tell(trial, state=TrialState.FAIL)
                raise
            except Exception as exc:  # noqa: BLE001 — recorded on the trial and its run
                trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
                study.tell(trial, state=TrialState.FAIL)
                print(f"trial {trial.number} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        trials = study.get_trials(deepcopy=False)
        bar.n = sum(t.state in finished for t in trials)
        bar.refresh()
    finally:
        bar.close()


# --------------------------------------------------------------------------- parent
def parent_run(study_def: registry.Study, study_name: str, storage: str) -> str:
    """The study's MLflow parent run: found by its tags when resuming, else created."""
    from tracking import store
    from tracking.tracker import Tracker

    c = store.client()
    exp = f"studies/{study_def.name}"
    exp_id = store.get_or_create_experiment(c, exp)
    found = c.search_runs([exp_id], filter_string=f"tags.`optuna.study_name` = '{study_name}' "
                          "and tags.`cpikan.study_parent` = 'true'", max_results=1)
    if found:
        return found[0].info.run_id
    with Tracker(exp, run_name=study_name, tags={"optuna.study_name": study_name, "cpikan.study_parent": "true",
                                                 "optuna.storage": storage.split("@")[-1]}) as run:
        pass
    return run.run_id


def summarize(study_def: registry.Study, args: argparse.Namespace, parent_id: str, status: str) -> None:
    import optuna

    from tracking.tracker import Tracker

    study = optuna.load_study(study_name=args.study_name, storage=open_storage(args.storage))
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    with Tracker(f"studies/{study_def.name}", run_id=parent_id) as run:
        run.log_metrics({f"trials_{k.lower()}": v for k, v in states.items()})
        best = study.best_trials if len(study_def.objectives) > 1 else ([study.best_trial] if states.get("COMPLETE") else [])
        run.set_tags({"optuna.best_trials": json.dumps([t.number for t in best]),
                      "optuna.best_runs": json.dumps([t.user_attrs.get("mlflow_run_id") for t in best])})
        if len(study_def.objectives) == 1 and best:
            run.log_metrics({f"best_{study_def.objectives[0][0]}": best[0].value})
    if status != "FINISHED":
        from tracking import store

        store.client().set_terminated(parent_id, status)
    print(f"study {args.study_name}: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items())))
    for t in best[:5]:
        print(f"  best trial {t.number}: values={t.values} run={t.user_attrs.get('mlflow_run_id')} params={t.params}")


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m studies.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", help="study name (see --list)")
    ap.add_argument("--list", action="store_true", help="list the studies and exit")
    ap.add_argument("--trials", type=int, default=None, help="total trials of the study (default: the study's own)")
    ap.add_argument("--timeout", type=float, default=None, help="stop starting trials after S seconds")
    ap.add_argument("--workers", type=int, default=1, help="parallel worker processes on this machine")
    ap.add_argument("--storage", default=None, help="Optuna storage: journal:PATH (default) or postgresql://…")
    ap.add_argument("--study-name", default=None, help="default: the study name")
    ap.add_argument("--seed", type=int, default=0, help="sampler seed")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    ap.add_argument("--sampler", choices=("default", "random"), default="default",
                    help="default: TPE (NSGA-II for several objectives); random: seeded, history-free")
    ap.add_argument("--pruner", choices=("default", "none"), default="default",
                    help="none: switch the study's pruner off (benchmarks)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: parent run of a worker
    return ap


def prepare(args: argparse.Namespace) -> tuple[registry.Study, Any]:
    """Everything that can be wrong with the input is found here, before anything is created."""
    if args.name is None:
        raise BadInput("a study name is required; known: " + ", ".join(registry.MODULES))
    try:
        study_def = registry.get(args.name)
    except KeyError:
        raise BadInput(f"unknown study {args.name!r}; known: {', '.join(registry.MODULES)}") from None
    try:
        base = registry.apply_overrides(study_def.default(), args.set)
    except (ValueError, TypeError) as exc:
        raise BadInput(str(exc).splitlines()[0]) from None
    if args.trials is None:
        args.trials = study_def.default_trials
    if args.trials < 1:
        raise BadInput(f"--trials: must be ≥ 1, got {args.trials}")
    if args.workers < 1:
        raise BadInput(f"--workers: must be ≥ 1, got {args.workers}")
    if args.timeout is not None and args.timeout <= 0:
        raise BadInput(f"--timeout: must be > 0, got {args.timeout}")
    args.storage = args.storage or default_storage()
    args.study_name = args.study_name or args.name
    open_storage(args.storage)  # reachable?
    from tracking import store

    try:
        store.client()
    except store.TrackingError as exc:
        raise BadInput(str(exc)) from None
    return study_def, base


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def spawn_workers(args: argparse.Namespace, parent_id: str, count: int) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` worker processes; the calling process is one more worker."""
    threads = threads_per_worker(args.workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CPIKAN_THREADS": str(threads)}
    argv = [sys.executable, "-m", "studies.run", args.name, "--trials", str(args.trials),
            "--storage", args.storage, "--study-name", args.study_name, "--seed", str(args.seed),
            "--worker", parent_id, "--sampler", args.sampler, "--pruner", args.pruner] + [f"--set={s}" for s in args.set]
    if args.timeout:
        argv += ["--timeout", str(args.timeout)]
    return [subprocess.Popen(argv, env=env) for _ in range(count)]


def run_workers(args: argparse.Namespace, study_def: registry.Study, base: Any, parent_id: str) -> int:
    """K workers: K − 1 spawned processes and this one (which keeps the progress bar), so
    the import and store start-up of one worker is not paid on top of the others'."""
    import torch

    procs = spawn_workers(args, parent_id, args.workers - 1)
    try:
        if args.workers > 1:
            torch.set_num_threads(threads_per_worker(args.workers))
        work(args, study_def, base, parent_id, progress=True)
    finally:  # on Ctrl-C the children get it too; wait so their trials are marked first
        codes = [p.wait() for p in procs]
    return max(codes, default=0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        width = max(map(len, registry.MODULES))
        for name in registry.MODULES:
            print(f"{name:<{width}}  {registry.DESCRIPTIONS[name]}")
        return 0
    try:
        study_def, base = prepare(args)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if os.environ.get("CPIKAN_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["CPIKAN_THREADS"]))
    if args.worker:  # a spawned worker: run trials, the parent does the rest
        try:
            work(args, study_def, base, args.worker, progress=False)
        except KeyboardInterrupt:
            return 130
        return 0
    parent_id = parent_run(study_def, args.study_name, args.storage)
    status = "FINISHED"
    try:
        if run_workers(args, study_def, base, parent_id):
            status = "FAILED"
    except KeyboardInterrupt:
        status = "KILLED"
        print("\ninterrupted: the running trial is marked FAILED; run the same command to resume",
              file=sys.stderr)
    summarize(study_def, args, parent_id, status)
    return 130 if status == "KILLED" else 0


if __name__ == "__main__":
    sys.exit(main())
