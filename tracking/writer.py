"""Step metrics off the training thread: buffered, batched (``log_batch``) and written by
one metric-writer process per Python process.

Why a process: the SQLite/ORM work of a row costs ~0.2 ms, and in a thread it would
compete with training for the GIL (bench/tracking_overhead.py measures the difference).
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Mapping
from typing import Any

MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch call


def _writer_process(batches: Any, replies: Any) -> None:
    """Child process: ("batch", uri, run_id, [(key, value, ms, step)]) → ``log_batch``."""
    import os
    import queue
    import signal

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    # Ctrl-C and a group's SIGTERM reach this process too: the parent decides what they mean
    # (its runs marked KILLED, their metrics drained first), so this one must not die of them;
    # it ends when the parent closes it or is gone
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    clients: dict[str, Any] = {}
    errors: dict[str, str] = {}
    parent = os.getppid()
    while True:
        try:
            msg = batches.get(timeout=2)
        except queue.Empty:
            if os.getppid() != parent:  # the parent died without closing (SIGKILL): stop too
                return
            continue
        if msg is None:
            return
        if msg[0] == "drain":
            _, token, run_id = msg
            replies.put((token, errors.pop(run_id, "")))
            continue
        _, uri, run_id, batch = msg
        try:
            client = clients.setdefault(uri, MlflowClient(tracking_uri=uri))
            client.log_batch(run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in batch])
        except Exception as exc:  # noqa: BLE001 — reported to the parent when it drains this run
            errors.setdefault(run_id, f"{type(exc).__name__}: {exc}")


class _WriterProcess:
    """One metric-writer process per Python process, shared by all its runs (spawned once,
    on first need, so a study's many trials do not each pay for a fresh interpreter)."""

    _instance: _WriterProcess | None = None

    def __init__(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # a clean interpreter: no forked DB connections or threads
        self.batches, self.replies = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=_writer_process, args=(self.batches, self.replies),
                                name="mlflow-metrics", daemon=True)
        self.proc.start()
        self.tokens = 0
        self.lock = threading.Lock()
        # before multiprocessing's own exit handler (registered earlier, so run later), which
        # would SIGTERM it, and this process ignores SIGTERM
        atexit.register(self.close)

    def close(self) -> None:
        """Let the writer finish what it was sent and end (killed if it does not in 10 s)."""
        if self.proc.is_alive():
            self.batches.put(None)
            self.proc.join(timeout=10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()

    @classmethod
    def get(cls) -> _WriterProcess:
        if cls._instance is None or not cls._instance.proc.is_alive():
            cls._instance = cls()
        return cls._instance

    def drain(self, run_id: str, timeout: float = 600.0) -> str:
        """Wait until every batch sent so far is written; the run's first write error, or ''.
        RuntimeError when the writer died meanwhile (its batches are lost: said, not hidden)."""
        import queue

        with self.lock:
            self.tokens += 1
            token = self.tokens
            self.batches.put(("drain", token, run_id))
            deadline = time.monotonic() + timeout
            while True:
                try:
                    got, error = self.replies.get(timeout=0.5)
                    break
                except queue.Empty:
                    if not self.proc.is_alive():
                        raise RuntimeError(f"metric writer: the writer process died (exit code {self.proc.exitcode}) "
                                           "before it wrote this run's step metrics") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"metric writer: no answer in {timeout:g} s") from None
        if got != token:
            raise RuntimeError("metric writer: replies out of order")
        return error


class MetricWriter:
    """Buffers metrics and writes them with ``log_batch`` (≤ 1000 a call).

    ``add`` only appends a tuple to a list. Once a run has a full batch (1000 metrics) or
    ``interval`` seconds have passed, batches go to the process's metric-writer *process*,
    so the database work never competes with training for the GIL; short runs with less
    than a batch are written directly on close. ``close`` drains everything and raises the
    first write error, so nothing is lost silently.
    """

    def __init__(self, client: Any, run_id: str, interval: float = 5.0) -> None:
        self.client, self.run_id, self.interval = client, run_id, interval
        self.buffer: list[tuple[str, float, int, int]] = []
        self.last = time.monotonic()
        self.writer: _WriterProcess | None = None

    def add(self, metrics: Mapping[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        self.buffer.extend((k, float(v), ts, step) for k, v in metrics.items())
        if len(self.buffer) >= MAX_BATCH or time.monotonic() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.buffer:
            return
        if self.writer is None:
            self.writer = _WriterProcess.get()
        while self.buffer:
            batch, self.buffer = self.buffer[:MAX_BATCH], self.buffer[MAX_BATCH:]
            self.writer.batches.put(("batch", self.client.tracking_uri, self.run_id, batch))

    def _direct(self) -> None:
        from mlflow.entities import Metric

        while self.buffer:
            chunk, self.buffer = self.buffer[:MAX_BATCH], self.buffer[MAX_BATCH:]
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in chunk])

    def drain(self) -> None:
        """Write everything buffered so far and wait until it is in the store."""
        if self.writer is None:  # short run: less than a batch, written right here
            self._direct()
            return
        self.flush()
        error = self.writer.drain(self.run_id)
        if error:
            raise RuntimeError(f"metric writer: {error}")

    close = drain


