"""Where runs live: the project's default SQLite store, or MLFLOW_TRACKING_URI.

MLflow 3 refuses a plain ``./mlruns`` file store, so the default is
``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tracking.provenance import redact_urls

# artifact transfers are small and many; MLflow's per-download progress bars only add noise
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

ENV_URI = "MLFLOW_TRACKING_URI"
ENV_ROOT = "CPIKAN_MLRUNS"  # where the embedded store lives (default: ./mlruns)


class TrackingError(RuntimeError):
    """A user-facing tracking problem: the CLIs print it on one line and exit 2."""


def mlruns_dir() -> Path:
    return Path(os.environ.get(ENV_ROOT, "mlruns")).resolve()


def tracking_uri() -> str:
    uri = os.environ.get(ENV_URI)
    if uri:
        return uri
    return f"sqlite:///{mlruns_dir() / 'mlflow.db'}"


def exists() -> bool:
    """Whether there is a store to look into: a named one (``MLFLOW_TRACKING_URI``), or the
    embedded store's database under :func:`mlruns_dir` (which :func:`client` creates)."""
    return bool(os.environ.get(ENV_URI)) or (mlruns_dir() / "mlflow.db").exists()


def make_embedded() -> None:
    """Make the embedded store's folder (SQLite makes the file, not its folder) when no
    other store is named; only where a store is opened or served, never by looking."""
    if not os.environ.get(ENV_URI):
        mlruns_dir().mkdir(parents=True, exist_ok=True)


def is_local(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("postgresql") or uri.startswith("mysql")


def artifact_location(experiment: str) -> str | None:
    """Artifacts of the embedded store go under mlruns/artifacts/<experiment>; a server decides."""
    if not is_local(tracking_uri()):
        return None
    return (mlruns_dir() / "artifacts" / experiment).as_uri()


def client(must_exist: bool = False):  # type: ignore[no-untyped-def]
    """An MlflowClient on the project store; raises TrackingError when it cannot be reached.

    ``must_exist``: for read-mostly commands (replay, reports), do not create an empty
    embedded store as a side effect of looking into it.
    """
    from mlflow import MlflowClient

    if must_exist and not exists():
        raise TrackingError(f"no tracking store at {mlruns_dir() / 'mlflow.db'} (no runs yet?)")
    import mlflow

    uri = tracking_uri()
    make_embedded()
    mlflow.set_tracking_uri(uri)  # MLflow's own helpers (system metrics) use the global URI
    if uri.startswith("http"):
        c = MlflowClient(tracking_uri=uri)
        check_reachable(uri)
        return c
    return open_database(uri)


def open_database(uri: str):  # type: ignore[no-untyped-def]
    """A client on a database store. MLflow makes a new database's tables when a client first
    opens it; two processes doing so at once (a team's machines starting on a new store)
    collide on them, and the one that loses finds them made a moment later: so opening is
    tried again before it is an error."""
    from mlflow import MlflowClient

    for attempt in range(3):
        try:
            return MlflowClient(tracking_uri=uri)
        except Exception as exc:  # noqa: BLE001 — the last attempt says what it was
            if attempt == 2:
                first = str(exc).splitlines()[0][:200] if str(exc) else ""
                raise TrackingError(f"tracking store {redact_urls(uri)} cannot be opened "
                                    f"({type(exc).__name__}: {redact_urls(first)})") from None
            time.sleep(1 + attempt)


def check_reachable(uri: str) -> None:
    """A tracking server answers its health check, or :class:`TrackingError`."""
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
    except Exception as exc:  # noqa: BLE001 — any failure means the same to the user
        raise TrackingError(f"tracking server {redact_urls(uri)} is unreachable ({type(exc).__name__})") from None


#: MLflow's UI opens an experiment in its model-training view (not the GenAI one) by this tag
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def get_or_create_experiment(c, name: str) -> str:  # type: ignore[no-untyped-def]
    """The experiment's ID; created with :data:`EXPERIMENT_TAGS` (added to an older one)."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        for k, v in EXPERIMENT_TAGS.items():
            if exp.tags.get(k) != v:
                c.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_location(name), tags=EXPERIMENT_TAGS)
    except Exception:  # created concurrently by another worker
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


#: the fewest leading characters of a run ID taken for the whole (``tracking.diff`` shows 8)
MIN_PREFIX = 6


def get_run(c, run_id: str):  # type: ignore[no-untyped-def]
    """A run by ID, or by the start of one (at least :data:`MIN_PREFIX` characters, as git
    takes a commit's) when no other run starts so; :class:`TrackingError` naming the store
    when there is none, or naming the runs when the start is not enough. Callers use the
    returned run's ``info.run_id``, never the text they were given."""
    import re

    from mlflow.exceptions import MlflowException

    try:
        return c.get_run(run_id)
    except MlflowException:
        pass
    if re.fullmatch(rf"[0-9a-f]{{{MIN_PREFIX},31}}", run_id):
        exps = [e.experiment_id for e in c.search_experiments()]
        runs = c.search_runs(exps, f"attributes.run_id LIKE '{run_id}%'", max_results=4) if exps else []
        if len(runs) == 1:
            return runs[0]
        if runs:
            some = ", ".join(r.info.run_id for r in runs[:3])
            raise TrackingError(f"run ID {run_id!r}: the start of {'more than 3' if len(runs) > 3 else len(runs)} "
                                f"runs ({some}); give more of it")
    raise TrackingError(f"run ID {run_id!r}: no such run in {redact_urls(tracking_uri())}")
