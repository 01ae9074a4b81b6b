"""Where studies live: Optuna storages by URL, the per-study ask lock, and trials whose
worker died.

- ``journal:PATH`` (the default, ``mlruns/optuna/journal.log``; ``CPIKAN_STORAGE`` names
  another): a journal file, safe for several processes on one machine.
- ``postgresql://…``: several machines on one study. Heartbeats are switched on, so
  Optuna's own :func:`optuna.storages.fail_stale_trials` fails trials whose worker stopped
  beating, wherever it ran.

Only Optuna's public API is used (``study.tell(number, state=FAIL, skip_if_finished=True)``),
so a change of Optuna's internals cannot corrupt a study. See docs/architecture.md
("A study, end to end").
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tracking.provenance import redact_urls
from tracking.store import mlruns_dir


class StorageError(ValueError):
    """The storage URL is wrong or unreachable: a user mistake, printed on one line."""


ENV_STORAGE = "CPIKAN_STORAGE"  # a team's shared storage, as MLFLOW_TRACKING_URI names its runs' store


def default_storage() -> str:
    """``CPIKAN_STORAGE`` when set (every study command and the dashboard then share it), else
    the journal file beside the embedded store."""
    return os.environ.get(ENV_STORAGE) or f"journal:{mlruns_dir() / 'optuna' / 'journal.log'}"


def open_storage(url: str) -> Any:
    """An Optuna storage for ``url``; :class:`StorageError` names what is wrong."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith(("postgresql", "mysql", "sqlite")):
        # Optuna makes a new database's tables on first use; machines starting on a new
        # database at once collide on them, and the loser finds them made a moment later
        for attempt in range(3):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words only
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, heartbeat_interval=10, grace_period=30,
                                                      engine_kwargs={"pool_pre_ping": True})
            except Exception as exc:  # noqa: BLE001 — any connection failure means the same here
                if attempt == 2 or type(exc).__name__ == "OperationalError":  # unreachable: say so now
                    first = str(exc).splitlines()[0][:200] if str(exc) else ""
                    raise StorageError(f"--storage {redact_urls(url)}: unreachable "
                                       f"({type(exc).__name__}: {redact_urls(first)})") from None
                time.sleep(1 + attempt)
    raise StorageError(f"--storage: unsupported URL {redact_urls(url)!r}; use journal:PATH or postgresql://…")


def study_attrs(name: str, url: str) -> dict[str, Any] | None:
    """An existing study's user attributes, or None when there is no such study (nothing
    is created: Optuna's public storage API)."""
    st = open_storage(url)
    try:
        sid = st.get_study_id_from_name(name)
    except KeyError:
        return None
    return st.get_study_user_attrs(sid)


def load_study(name: str, url: str | None = None) -> Any:
    """An existing study by name (reports, benches and tests read studies this way)."""
    import optuna

    return optuna.load_study(study_name=name, storage=open_storage(url or default_storage()))


@contextlib.contextmanager
def study_lock(study_name: str, url: str) -> Iterator[None]:
    """Held while a worker counts the trials and asks for a new one, and while the command
    finds or makes the study's parent run and what its trials share: workers never overshoot
    the trial count nor make two of anything. On PostgreSQL a session advisory lock, so every
    machine on the study takes turns; otherwise a file lock (the processes of one machine)."""
    if url.startswith("postgresql"):
        with _advisory_lock(study_name, url):
            yield
        return
    safe = "".join(c if c.isalnum() else "_" for c in study_name)
    path = mlruns_dir() / "optuna" / f".{safe}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _advisory_lock(study_name: str, url: str) -> Iterator[None]:
    import hashlib
    import re

    import psycopg

    conninfo = re.sub(r"^postgresql\+\w+://", "postgresql://", url)  # SQLAlchemy's driver suffix
    key = int.from_bytes(hashlib.sha256(f"cpikan study {study_name}".encode()).digest()[:8], "big", signed=True)
    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise StorageError(f"--storage {redact_urls(url)}: unreachable ({type(exc).__name__})") from None
    with conn:  # closing the session releases the lock, should the unlock not be reached
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


# --------------------------------------------------------------------------- stale trials
WORKER_PID, WORKER_HOST, WORKER_STARTED = "worker.pid", "worker.host", "worker.started"


def claim(trial: Any) -> None:
    """Record on the trial which process runs it, so a later start can tell it died."""
    trial.set_user_attr(WORKER_PID, os.getpid())
    trial.set_user_attr(WORKER_HOST, socket.gethostname())
    trial.set_user_attr(WORKER_STARTED, time.time())


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


@contextlib.contextmanager
def heartbeat(storage: Any, study: Any, trial: Any) -> Iterator[None]:
    """While the trial runs, beat its heartbeat (storages that keep them: PostgreSQL), so
    Optuna can fail it from any machine once this worker stops beating."""
    interval = storage.get_heartbeat_interval() if hasattr(storage, "record_heartbeat") else None
    if not interval:
        yield
        return
    import threading

    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), trial.number)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            storage.record_heartbeat(trial_id)

    storage.record_heartbeat(trial_id)
    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale_trials(study: Any, storage: Any) -> list[Any]:
    """Mark FAILED the RUNNING trials whose worker is gone; returns them (as they were).

    On this host a dead worker is found by its pid; with a heartbeat storage (PostgreSQL)
    Optuna's ``fail_stale_trials`` also fails trials of workers on other machines.
    """
    import optuna
    from optuna.trial import TrialState

    running = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    stale = []
    for t in running.values():
        attrs = t.user_attrs
        if attrs.get(WORKER_HOST) != socket.gethostname() or WORKER_PID not in attrs:
            continue
        if not _alive(int(attrs[WORKER_PID]), float(attrs.get(WORKER_STARTED, 0))):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            stale.append(t)
    if isinstance(storage, optuna.storages.RDBStorage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        failed = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        stale += [t for n, t in running.items() if n in failed and t not in stale]
    return stale
