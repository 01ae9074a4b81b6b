"""One study worker: ask for trials and run each as an MLflow run, until the study has its
trial count.

``python -m studies.run NAME --workers K`` runs worker 0 in its own process and starts
K − 1 more with ``python -m studies.worker``, each reading a frozen :class:`WorkerSpec`
(canonical JSON) on its standard input, so a new CLI flag is added in one place. Error
policy: a failing trial is FAILED (its run too, with the error as a tag) and the worker
goes on; after max(trials, 3) × 2 failures the study stops; Ctrl-C fails the running trial.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cpikan.config import canonical_json
from studies import registry, samplers, storage

FINISHED = ("COMPLETE", "PRUNED")


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, fixed before the first worker starts."""

    study: str  # registry name
    study_name: str  # Optuna study name (default: the registry name)
    storage: str
    trials: int
    seed: int
    sampler: str
    pruner: str
    overrides: tuple[str, ...]
    parent_run_id: str
    timeout: float | None = None
    tags: tuple[str, ...] = ()  # KEY=VALUE, set on every trial's run
    index: int = 0  # worker number: 0 is the process the user started
    threads: int = 0  # torch threads; 0 leaves torch's default

    def to_json(self) -> str:
        return canonical_json(self)

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        d = json.loads(text)
        d["overrides"], d["tags"] = tuple(d["overrides"]), tuple(d.get("tags", ()))
        return cls(**d)

    @property
    def experiment(self) -> str:
        return f"studies/{self.study}"


def seed_of(config: Any) -> int | None:
    """The run's seed: ``config.train.seed`` or ``config.seed``."""
    for path in (("train", "seed"), ("seed",)):
        obj = config
        for p in path:
            obj = getattr(obj, p, None)
        if isinstance(obj, int):
            return obj
    return None


def open_study(spec: WorkerSpec, study_def: registry.Study) -> tuple[Any, Any, dict[str, Any]]:
    """(study, storage, sampler description) for this worker."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = storage.open_storage(spec.storage)
    sampler, s_desc = samplers.make_sampler(spec.sampler, len(study_def.objectives), spec.seed, spec.index)
    pruner, p_desc = samplers.make_pruner(study_def.pruner, spec.pruner)
    study = optuna.create_study(study_name=spec.study_name, storage=store, load_if_exists=True,
                                directions=[d for _, d in study_def.objectives], sampler=sampler, pruner=pruner)
    return study, store, {**s_desc, **p_desc}


def mark_stale_runs(study: Any, store: Any) -> list[int]:
    """Fail trials whose worker died, and their MLflow runs; returns their numbers."""
    from tracking import store as mlflow_store

    stale = storage.fail_stale_trials(study, store)
    if stale:
        c = mlflow_store.client()
        for t in stale:
            for rid in _runs_of_trial(c, study.study_name, t.number, t.user_attrs.get("mlflow_run_id")):
                c.set_tag(rid, "error", "worker died during the trial (found stale on resume)")
                c.set_tag(rid, "optuna.state", "FAIL")
                c.set_terminated(rid, "FAILED")
    return [t.number for t in stale]


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


def run_trial(spec: WorkerSpec, study_def: registry.Study, trial: Any, base: Any,
              recorded: dict[str, Any]) -> list[float]:
    """One trial as one MLflow run nested under the study's parent run; returns its values."""
    import optuna

    from tracking.tracker import Tracker

    storage.claim(trial)
    trial.set_user_attr("worker.index", spec.index)
    trial.set_user_attr("sampler", json.dumps(recorded, sort_keys=True))
    config = study_def.space(trial, base)
    tags = {"optuna.study": trial.study.study_name, "optuna.trial_number": str(trial.number),
            **dict(t.split("=", 1) for t in spec.tags)}
    with Tracker(spec.experiment, config=config, entry_point=study_def.entry_point, seed=seed_of(config),
                 parent_run_id=spec.parent_run_id, run_name=f"trial {trial.number}", tags=tags,
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


def _next_trial(study: Any, spec: WorkerSpec, bar: Any, start: int) -> Any:
    """Count and ask under the study's lock; None when the study has its trials, or when
    this command's trials (numbered from ``start``) keep failing: twice the trial count, or
    twice in a row the same way while no trial ever completed (a bug in the user's code,
    not a config that failed)."""
    with storage.study_lock(spec.study_name, spec.storage):
        trials = study.get_trials(deepcopy=False)
        states = [t.state.name for t in trials]
        done = sum(s in FINISHED for s in states)
        bar.n = done
        bar.refresh()
        errors = [t.user_attrs.get("error") for t in trials if t.number >= start and t.state.name == "FAIL"]
        same = not done and len(errors) >= 2 and errors[-1] == errors[-2]
        if done + states.count("RUNNING") >= spec.trials or len(errors) >= max(spec.trials, 3) * 2 or same:
            return None
        with warnings.catch_warnings():  # ask/tell is ours by design; studies.storage.heartbeat beats
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            return study.ask()


def work(spec: WorkerSpec, study_def: registry.Study, base: Any, others: Callable[[], bool] | None = None) -> None:
    """Run trials until the study has ``spec.trials`` finished ones (or the timeout passes);
    then, while ``others()`` says other workers still run theirs, keep the bar counting."""
    import optuna
    from optuna.trial import TrialState
    from tqdm import tqdm

    study, store, recorded = open_study(spec, study_def)
    mark_stale_runs(study, store)
    start = len(study.get_trials(deepcopy=False))  # a resume's earlier failures do not stop it
    deadline = time.monotonic() + spec.timeout if spec.timeout else None
    bar = tqdm(total=spec.trials, desc=spec.study, unit="trial", disable=spec.index != 0, mininterval=1)
    try:
        while deadline is None or time.monotonic() < deadline:
            trial = _next_trial(study, spec, bar, start)
            if trial is None:
                break
            try:
                with storage.heartbeat(store, study, trial):
                    values = run_trial(spec, study_def, trial, base, recorded)
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
        while True:  # the last trials may be other workers': the bar shows them end, not 3/4 for a minute
            bar.n = sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))
            bar.refresh()
            if others is None or not others():
                break
            time.sleep(1)
    finally:
        bar.close()


def main() -> int:
    """A spawned worker: the spec on stdin, input already checked by the parent."""
    from tracking import interrupts, logs

    logs.from_environment()
    interrupts.sigterm_as_ctrl_c()
    spec = WorkerSpec.from_json(sys.stdin.read())
    if spec.threads:
        import torch

        torch.set_num_threads(spec.threads)
    study_def = registry.get(spec.study)
    base = registry.apply_overrides(study_def.default(), list(spec.overrides))
    try:
        work(spec, study_def, base)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
