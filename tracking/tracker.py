"""The run API: one context manager per MLflow run, exact and cheap.

    with Tracker("pde/helmholtz1d", config=cfg, entry_point="studies.pde:run", seed=0) as run:
        result = train(..., callbacks=[run.metrics_callback()])
        run.log_results({"rel_l2": ...}, measurements={"seconds": ...})

On exit the run ends FINISHED, FAILED (an exception, re-raised, with its message as a tag)
or KILLED (Ctrl-C); buffered metrics are flushed in every case.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cpikan.train.callbacks import Callback
from tracking import hashing, provenance, store

MAX_PARAM_LEN = 6000  # MLflow's limit on a parameter value
MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch call

TAG_ENTRY = "cpikan.entry_point"
TAG_CONFIG_CLASS = "cpikan.config_class"
TAG_CONFIG_HASH = "config_hash"
TAG_RESULTS = "cpikan.result_metrics"
TAG_MEASUREMENTS = "cpikan.measurement_metrics"
TAG_DATASETS = "cpikan.datasets"
CONFIG_ARTIFACT = "config.json"


def _writer_process(batches: Any, replies: Any) -> None:
    """Child process: ("batch", uri, run_id, [(key, value, ms, step)]) → ``log_batch``."""
    import os
    import queue

    from mlflow import MlflowClient
    from mlflow.entities import Metric

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

    @classmethod
    def get(cls) -> _WriterProcess:
        if cls._instance is None or not cls._instance.proc.is_alive():
            cls._instance = cls()
        return cls._instance

    def drain(self, run_id: str) -> str:
        """Wait until every batch sent so far is written; the run's first write error, or ''."""
        with self.lock:
            self.tokens += 1
            token = self.tokens
            self.batches.put(("drain", token, run_id))
            got, error = self.replies.get(timeout=600)
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


class MetricsCallback(Callback):
    """Bridges the trainer's per-step metrics (and evaluations) to a :class:`Tracker`."""

    def __init__(self, run: Tracker, prefix: str = "") -> None:
        self.run, self.prefix = run, prefix
        self.last: dict[str, tuple[float, int]] = {}  # key -> (value, step) last logged
        self.step = 0

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """Log the values that changed since the key was last logged.

        Fixed loss weights and a zero NaN count would otherwise be a third of every
        step's rows, and writing rows is what tracking costs (≈ 0.2 ms each in SQLite).
        """
        self.step = step
        changed = {k: v for k, v in metrics.items() if self.last.get(k, (None,))[0] != v}
        self.last.update((k, (v, step)) for k, v in changed.items())
        self.run.log_metrics(changed, step, prefix=self.prefix)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log_metrics(metrics, step, prefix=self.prefix + "eval_")

    def on_train_end(self, result: Any) -> None:
        """Close constant series at the last step, attach the residual-convergence figure."""
        tail = {k: v for k, (v, s) in self.last.items() if s != self.step}
        if tail:
            self.run.log_metrics(tail, self.step, prefix=self.prefix)
        losses = getattr(result, "losses", None)
        if losses:
            self.run.log_figure(convergence_figure(losses), f"figures/{self.prefix}convergence.html")


def convergence_figure(losses: list[float], title: str = "training") -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(y=losses, mode="lines", name="loss"))
    fig.update_layout(title=f"{title}: residual convergence", xaxis_title="step", yaxis_title="loss",
                      yaxis_type="log", template="plotly_white")
    return fig


class Tracker:
    def __init__(
        self,
        experiment: str,
        *,
        config: Any = None,
        run_name: str | None = None,
        entry_point: str | None = None,
        seed: int | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        system_metrics: bool = False,
        flush_interval: float = 5.0,
        benign: tuple[type[BaseException], ...] = (),
        run_id: str | None = None,
    ) -> None:
        self.experiment, self.config, self.run_name = experiment, config, run_name
        self.entry_point, self.seed, self.parent_run_id = entry_point, seed, parent_run_id
        self.extra_tags = dict(tags or {})
        self.system_metrics, self.flush_interval = system_metrics, flush_interval
        self.run_id: str = run_id or ""  # given: continue that run (a resumed study's parent)
        self.results: set[str] = set()
        self.measurements: set[str] = set()
        self._monitor: Any = None
        #: exceptions that end the run FINISHED with an ``ended_by`` tag (e.g. a pruned trial)
        self.benign = benign
        #: called by :meth:`report` (a study sets it to feed its pruner); None outside studies
        self.reporter: Any = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Tracker:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        self.client = store.client()
        if self.run_id:
            self.client.update_run(self.run_id, "RUNNING")
            self.writer = MetricWriter(self.client, self.run_id, self.flush_interval)
            return self
        exp_id = store.get_or_create_experiment(self.client, self.experiment)
        prov = provenance.collect(self.seed)
        tags = {**prov["tags"], **self.extra_tags}
        if self.entry_point:
            tags[TAG_ENTRY] = self.entry_point
        if self.parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = self.parent_run_id
        tags = {k: provenance.redact(str(v)) for k, v in tags.items()}
        run = self.client.create_run(exp_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        self.writer = MetricWriter(self.client, self.run_id, self.flush_interval)
        try:
            if self.config is not None:
                self.log_config(self.config)
            if prov["diff"]:
                self.log_text(prov["diff"], "provenance/uncommitted.diff")
            if self.system_metrics:
                self._start_system_metrics()
        except BaseException:
            self.__exit__(*__import__("sys").exc_info())
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        from mlflow.entities import RunStatus

        if self._monitor is not None:
            self._monitor.finish()
        flush_error: BaseException | None = None
        try:
            self.writer.close()
        except BaseException as err:  # noqa: BLE001
            flush_error = err
        self._write_metric_kinds()
        if exc_type is not None and issubclass(exc_type, self.benign) and flush_error is None:
            status = RunStatus.FINISHED
            self.client.set_tag(self.run_id, "ended_by", exc_type.__name__)
        elif exc_type is None and flush_error is None:
            status = RunStatus.FINISHED
        elif exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            status = RunStatus.KILLED
        else:
            status = RunStatus.FAILED
            err = exc if exc is not None else flush_error
            self.client.set_tag(self.run_id, "error", provenance.redact(f"{type(err).__name__}: {err}")[:5000])
        self.client.set_terminated(self.run_id, RunStatus.to_string(status))
        if flush_error is not None and exc_type is None:
            raise flush_error
        return False

    # ------------------------------------------------------------------ logging
    def log_config(self, config: Any) -> None:
        """Params (flattened), config.json (canonical) and its sha256 as ``config_hash``."""
        text = hashing.canonical_json(config)
        self.log_text(text, CONFIG_ARTIFACT)
        self.client.set_tag(self.run_id, TAG_CONFIG_HASH, hashing.config_hash(config))
        cls = type(config)
        if cls.__module__ != "builtins":
            self.client.set_tag(self.run_id, TAG_CONFIG_CLASS, f"{cls.__module__}:{cls.__qualname__}")
        self.log_params(hashing.flatten(config))

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        short, long = [], {}
        for k, v in params.items():
            text = v if isinstance(v, str) else json.dumps(v)
            text = provenance.redact(text)
            if len(text) > MAX_PARAM_LEN:
                long[k] = text
                text = "<too long: see params_long.json>"
            short.append(Param(k, text))
        for i in range(0, len(short), 100):
            self.client.log_batch(self.run_id, params=short[i : i + 100])
        if long:
            self.log_text(json.dumps(long, indent=1, sort_keys=True), "params_long.json")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, provenance.redact(str(v)))

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0, prefix: str = "") -> None:
        if prefix:
            metrics = {prefix + k: v for k, v in metrics.items()}
        self.writer.add(metrics, step)

    def report(self, step: int, value: float, name: str = "objective") -> None:
        """An intermediate objective value: logged as a step metric, and handed to the
        study's pruner when there is one (which may stop the run by raising)."""
        self.log_metrics({f"intermediate_{name}": value}, step)
        if self.reporter is not None:
            self.reporter(step, value)

    def log_results(
        self, results: Mapping[str, float], measurements: Mapping[str, float] | None = None,
        step: int = 0,
    ) -> None:
        """Final figures: ``results`` must reproduce on replay; ``measurements`` (wall time,
        throughput, memory) describe the machine and are shown but never compared."""
        self.results.update(results)
        self.measurements.update(measurements or {})
        self.log_metrics({**results, **(measurements or {})}, step)

    def _write_metric_kinds(self) -> None:
        self.client.set_tag(self.run_id, TAG_RESULTS, json.dumps(sorted(self.results)))
        self.client.set_tag(self.run_id, TAG_MEASUREMENTS, json.dumps(sorted(self.measurements)))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, provenance.redact(text), artifact_file)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dataset(self, path: str | os.PathLike[str], name: str, context: str = "training") -> str:
        """Full-content sha256 of a file, logged with ``log_inputs`` and kept in a tag that
        replay checks. MLflow caps dataset digests at 36 characters, so the digest field
        holds the first 32 hex digits and the tag the whole hash."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        path = Path(path).resolve()
        sha = hashing.file_sha256(path)
        ds = Dataset(name=name, digest=sha[:32], source_type="local",
                     source=json.dumps({"uri": path.as_uri()}),
                     profile=json.dumps({"sha256": sha, "bytes": path.stat().st_size}))
        self.client.log_inputs(self.run_id, [DatasetInput(ds, [InputTag("mlflow.data.context", context)])])
        known = json.loads(self._tag(TAG_DATASETS) or "{}")
        known[name] = {"path": str(path), "sha256": sha}
        self.client.set_tag(self.run_id, TAG_DATASETS, json.dumps(known, sort_keys=True))
        return sha

    def _tag(self, key: str) -> str | None:
        return self.client.get_run(self.run_id).data.tags.get(key)

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        """A plotly figure as a standalone HTML artifact (plotly.js inlined: opens offline)."""
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / Path(artifact_file).name
            fig.write_html(out, include_plotlyjs=True, full_html=True)
            parent = str(Path(artifact_file).parent)
            self.log_artifact(out, None if parent == "." else parent)

    def metrics_callback(self, prefix: str = "") -> MetricsCallback:
        return MetricsCallback(self, prefix)

    def _start_system_metrics(self) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=5, samples_before_logging=1)
        self._monitor.start()

