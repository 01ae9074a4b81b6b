"""A real `mlflow server` on loopback (SQLite- and PostgreSQL-backed): a tracked run's
params, metrics, tags and artifacts read back through MLflow's REST API."""

import json
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest
import requests

from tests.helpers import tiny_config
from tracking import store
from tracking.tracker import Tracker

PG = "postgresql://postgres@127.0.0.1:5432"
pytestmark = pytest.mark.xdist_group("tracking_server")  # one worker: the servers are started once each


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_available():
    try:
        import psycopg

        psycopg.connect(PG + "/test", connect_timeout=3).close()
        return True
    except Exception:
        return False


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def started(request, tmp_path_factory):
    """One server per backend for the module's tests (each start makes its database's tables)."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    if request.param == "postgres":
        if not _postgres_available():
            pytest.skip("PostgreSQL on 127.0.0.1:5432 is not running (start it: pg_ctlcluster ... start)")
        import psycopg

        db = f"mlflow_test_{uuid.uuid4().hex[:8]}"
        conn = psycopg.connect(PG + "/test", autocommit=True)
        conn.execute(f"CREATE DATABASE {db}")
        backend = f"{PG}/{db}"
    else:
        backend = f"sqlite:///{tmp_path / 'server.db'}"
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no GenAI job runners to stop
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {proc.stderr.read()[-2000:]}")
            try:
                if requests.get(url + "/health", timeout=1).ok:
                    break
            except requests.RequestException:  # refused or slow to answer while it starts
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start in 120 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if request.param == "postgres":
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            conn.close()


@pytest.fixture
def server(started, monkeypatch):
    monkeypatch.setenv(store.ENV_URI, started)
    return started


def test_run_reads_back_through_rest(server, monkeypatch):
    from studies import pde

    monkeypatch.setenv("API_KEY", "do-not-log-this-key")
    cfg = tiny_config(adam_steps=12, lr=1e-2)
    with Tracker("pde/server", config=cfg, entry_point=pde.ENTRY_POINT, seed=0) as run:
        pde.run(cfg, run)
    api = server + "/api/2.0/mlflow"
    got = requests.get(f"{api}/runs/get", params={"run_id": run.run_id}, timeout=10).json()["run"]
    params = {p["key"]: p["value"] for p in got["data"]["params"]}
    tags = {t["key"]: t["value"] for t in got["data"]["tags"]}
    metrics = {m["key"]: m["value"] for m in got["data"]["metrics"]}
    assert got["info"]["status"] == "FINISHED"
    assert params["train.adam_steps"] == "12" and params["problem"] == "diffusion"
    assert len(tags["config_hash"]) == 64 and tags["cpikan.entry_point"] == "studies.pde:run"
    assert metrics["steps"] == 12 and "rel_l2" in metrics
    hist = requests.get(f"{api}/metrics/get-history",
                        params={"run_id": run.run_id, "metric_key": "loss"}, timeout=10).json()
    assert [m["step"] for m in hist["metrics"]] == list(range(1, 13))
    arts = requests.get(f"{api}/artifacts/list", params={"run_id": run.run_id}, timeout=10).json()
    assert {"config.json", "model", "figures"} <= {f["path"] for f in arts["files"]}
    config = requests.get(f"{server}/get-artifact", params={"run_id": run.run_id, "path": "config.json"},
                          timeout=10).json()
    assert config["train"]["adam_steps"] == 12
    assert "do-not-log-this-key" not in json.dumps(got)


def test_unreachable_server_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(store.ENV_URI, "http://127.0.0.1:9")
    with pytest.raises(store.TrackingError, match="unreachable"):
        with Tracker("x"):
            pass
    assert os.environ[store.ENV_URI].endswith(":9")


@pytest.mark.parametrize("started", ["sqlite"], indirect=True)  # the REST API is the same on either backend
def test_a_team_reads_its_server_with_the_lab_commands(server, tmp_path, monkeypatch, capsys):
    """Runs logged to the team server are replayed and reported from it; the report's links
    open the team server (not this machine's make ui), without the URL's password."""
    from reports import kpi
    from studies import pde
    from tracking import replay, ui

    cfg = tiny_config(adam_steps=12, lr=1e-2)
    with Tracker("studies/helmholtz1d", config=cfg, entry_point=pde.ENTRY_POINT, seed=0) as run:
        pde.run(cfg, run)
    assert replay.main([run.run_id]) == 0
    assert "reproduced run" in capsys.readouterr().out
    host = server.removeprefix("http://")
    monkeypatch.setenv(store.ENV_URI, f"http://lab:hunter2@{host}")  # the server asks for none
    out = tmp_path / "kpi.html"
    assert kpi.main(["--out", str(out)]) == 0
    page = out.read_text()
    assert f'href="{server}/#/experiments/' in page and "hunter2" not in page
    assert "hunter2" not in capsys.readouterr().out
    assert ui.main([]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"The team server already serves the UI: {server}\n") and "hunter2" not in said
    assert f"{server}/#/experiments/" in said and "studies/helmholtz1d" in said
