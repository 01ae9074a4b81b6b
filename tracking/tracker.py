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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracking import hashing, provenance, store
from tracking.writer import MetricWriter

if TYPE_CHECKING:
    from tracking.callbacks import MetricsCallback

MAX_PARAM_LEN = 6000  # MLflow's limit on a parameter value

TAG_ENTRY = "cpikan.entry_point"
TAG_CONFIG_CLASS = "cpikan.config_class"
TAG_CONFIG_HASH = "config_hash"
TAG_RESULTS = "cpikan.result_metrics"
TAG_MEASUREMENTS = "cpikan.measurement_metrics"
TAG_DATASETS = "cpikan.datasets"
CONFIG_ARTIFACT = "config.json"
#: where the datasets' map goes when it outgrows a tag (MLflow truncates tag values at 8000
#: characters, which ~50 files' paths and hashes reach); the tag then points to it
DATASETS_ARTIFACT = "provenance/datasets.json"
_TAG_LIMIT = 7000


def recorded_datasets(client: Any, run: Any) -> dict[str, dict[str, str]]:
    """{name: {"path", "sha256"}} of the files a run read, from its tag or, for many files,
    the artifact the tag points to."""
    recorded = json.loads(run.data.tags.get(TAG_DATASETS, "{}"))
    if "@artifact" not in recorded:
        return recorded
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run.info.run_id, recorded["@artifact"], tmp)).read_text())


class Tracker:
    """One MLflow run as a context manager.

    Args:
        experiment: experiment name (created with the project's tags when missing).
        config: the run's config dataclass: logged as params, ``config.json`` and its hash.
        run_name: shown in the MLflow UI.
        entry_point: ``module:function`` that replay calls with the rebuilt config.
        seed: recorded with the provenance.
        parent_run_id: nests this run (a study's trial under the study's run).
        tags: extra tags (redacted like every other value).
        system_metrics: sample CPU/memory with MLflow's system-metrics monitor.
        flush_interval: seconds between metric batches sent to the writer process.
        benign: exceptions that end the run FINISHED (a pruned trial).
        run_id: continue this existing run instead of creating one.
    """

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
                self.log_text(prov["diff"], provenance.DIFF_ARTIFACT)
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
        """Params (flattened), config.json (canonical) and its sha256 as ``config_hash``; the
        lab's own code it names, by content (:meth:`log_user_code`)."""
        text = hashing.canonical_json(config)
        self.log_text(text, CONFIG_ARTIFACT)
        self.client.set_tag(self.run_id, TAG_CONFIG_HASH, hashing.config_hash(config))
        self.log_user_code(config)
        cls = type(config)
        if cls.__module__ != "builtins":
            self.client.set_tag(self.run_id, TAG_CONFIG_CLASS, f"{cls.__module__}:{cls.__qualname__}")
        self.log_params(hashing.flatten(config))

    def log_user_code(self, config: Any) -> None:
        """The source files of the lab's own code a config names (a ``FILE.py:CLASS``
        problem), imported first so its helper modules are known, logged by content: a
        replay after an edit to any of them is refused, naming the file."""
        import dataclasses

        from cpikan import refs
        from cpikan.config import named_code

        if not dataclasses.is_dataclass(config):
            return
        files: dict[str, Any] = {}
        for path, ref, what in named_code(config):
            refs.load(ref, path, what)
            files.update(refs.local_files(ref))
        if files:
            self.log_datasets(files, context="code")

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
        """Full-content sha256 of a file, logged with ``log_inputs`` and kept where replay
        checks it (:func:`recorded_datasets`). MLflow caps dataset digests at 36 characters,
        so the digest field holds the first 32 hex digits and the map the whole hash."""
        return self.log_datasets({name: path}, context)[name]

    def log_datasets(self, files: Mapping[str, str | os.PathLike[str]], context: str = "training") -> dict[str, str]:
        """:meth:`log_dataset` for many files at once ({name: path} → {name: sha256}): one
        ``log_inputs`` call, and the map written once (to an artifact when it outgrows a tag)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        shas, inputs = {}, []
        known = recorded_datasets(self.client, self.client.get_run(self.run_id))
        for name, p in files.items():
            path = Path(p).resolve()
            sha = shas[name] = hashing.file_sha256(path)
            ds = Dataset(name=name, digest=sha[:32], source_type="local",
                         source=json.dumps({"uri": path.as_uri()}),
                         profile=json.dumps({"sha256": sha, "bytes": path.stat().st_size}))
            inputs.append(DatasetInput(ds, [InputTag("mlflow.data.context", context)]))
            known[name] = {"path": str(path), "sha256": sha}
        self.client.log_inputs(self.run_id, inputs)
        text = json.dumps(known, sort_keys=True)
        if len(text) > _TAG_LIMIT:
            self.log_text(text, DATASETS_ARTIFACT)
            text = json.dumps({"@artifact": DATASETS_ARTIFACT, "files": len(known)})
        self.client.set_tag(self.run_id, TAG_DATASETS, text)
        return shas

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        """A plotly figure as a standalone HTML artifact (plotly.js inlined: opens offline)."""
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / Path(artifact_file).name
            fig.write_html(out, include_plotlyjs=True, full_html=True)
            parent = str(Path(artifact_file).parent)
            self.log_artifact(out, None if parent == "." else parent)

    def metrics_callback(self, prefix: str = "") -> MetricsCallback:
        from tracking.callbacks import MetricsCallback  # imports torch: not for commands that only read runs

        return MetricsCallback(self, prefix)

    def _start_system_metrics(self) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=5, samples_before_logging=1)
        self._monitor.start()

