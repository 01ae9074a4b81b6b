"""Tracking on a real SQLite store: run lifecycle, provenance, secrets, replay, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cpikan.pde import make_problem
from studies import pde
from tests.helpers import tiny_config
from tracking import provenance, store
from tracking.tracker import Tracker

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-token-value-42"


def _all_runs(client):
    exps = client.search_experiments()
    return client.search_runs([e.experiment_id for e in exps]) if exps else []


def _cli(args, env_root, **env):
    full = {k: v for k, v in os.environ.items() if k != store.ENV_URI}
    full.update({store.ENV_ROOT: str(env_root), "PYTHONPATH": str(ROOT), **env})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full, cwd=ROOT)


def _replay(args, mlruns):
    """``python -m tracking.replay ARGS``, its main() in this process (tests/helpers.py)."""
    from tests.helpers import run_main
    from tracking.replay import main

    return run_main(main, args, mlruns)


def _tracked_pde_run(cfg):
    with Tracker(f"pde/{cfg.problem}", config=cfg, entry_point=pde.ENTRY_POINT, seed=cfg.train.seed) as run:
        pde.run(cfg, run)
    return run.run_id


def test_run_records_params_metrics_tags_artifacts(mlruns):
    cfg = tiny_config(adam_steps=15, lr=1e-2)
    rid = _tracked_pde_run(cfg)
    c = store.client()
    run = c.get_run(rid)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.adam_steps"] == "15"
    assert run.data.params["model.hidden"] == "[6, 6]"
    tags = run.data.tags
    assert len(tags["config_hash"]) == 64 and tags["cpikan.entry_point"] == "studies.pde:run"
    assert {"git.commit", "git.branch", "git.dirty", "command", "host", "cpu", "version.torch",
            "version.mlflow", "version.optuna", "torch.threads", "seed"} <= set(tags)
    loss_steps = [m.step for m in c.get_metric_history(rid, "loss")]
    assert len(loss_steps) == 15
    # a constant (the fixed PDE weight) is logged where its series starts and ends only
    assert sorted(m.step for m in c.get_metric_history(rid, "weight_pde")) == [min(loss_steps), max(loss_steps)]
    assert "rel_l2" in json.loads(tags["cpikan.result_metrics"])
    assert "seconds" in json.loads(tags["cpikan.measurement_metrics"])
    names = {a.path for a in c.list_artifacts(rid)} | {a.path for a in c.list_artifacts(rid, "model")}
    assert {"config.json", "model/model.safetensors", "model/model.json", "figures"} <= names
    assert {"figures/convergence.html", "figures/error_over_time.html"} <= {a.path for a in c.list_artifacts(rid, "figures")}
    config = json.loads(Path(c.download_artifacts(rid, "config.json", str(mlruns.parent))).read_text())
    assert config["train"]["adam_steps"] == 15


def test_exception_marks_failed_keeps_metrics_and_reraises(mlruns):
    with pytest.raises(RuntimeError, match="boom"):
        with Tracker("t/failing") as run:
            for step in range(30):
                run.log_metrics({"a": step, "b": -step}, step)
            raise RuntimeError("boom")
    c = store.client()
    r = c.get_run(run.run_id)
    assert r.info.status == "FAILED" and "boom" in r.data.tags["error"]
    assert len(c.get_metric_history(run.run_id, "a")) == 30


def test_ctrl_c_marks_killed(mlruns):
    with pytest.raises(KeyboardInterrupt):
        with Tracker("t/killed") as run:
            run.log_metrics({"a": 1.0}, 0)
            raise KeyboardInterrupt
    r = store.client().get_run(run.run_id)
    assert r.info.status == "KILLED" and r.data.metrics["a"] == 1.0


def test_a_real_ctrl_c_leaves_the_metric_writer_to_its_parent(mlruns):
    """Ctrl-C (or a group's SIGTERM) reaches the metric-writer process too: it once died of it, and
    the run's exit then waited 600 s for its answer (a study ignored Ctrl-C). It lives on
    and writes every metric; a writer that does die is said at once, not waited for."""
    import signal

    with pytest.raises(KeyboardInterrupt):
        with Tracker("t/interrupted", flush_interval=0.0) as run:
            run.log_metrics({"a": 1.0}, 0)
            run.writer.drain()  # the writer process is up and in its loop
            proc = run.writer.writer.proc
            os.kill(proc.pid, signal.SIGINT)  # the group's Ctrl-C, or its SIGTERM (timeout, a scheduler)
            os.kill(proc.pid, signal.SIGTERM)
            run.log_metrics({"a": 2.0}, 1)
            raise KeyboardInterrupt
    c = store.client()
    assert c.get_run(run.run_id).info.status == "KILLED" and proc.is_alive()
    assert [m.value for m in c.get_metric_history(run.run_id, "a")] == [1.0, 2.0]
    with pytest.raises(RuntimeError, match=r"the writer process died \(exit code -9\) before it wrote"):
        with Tracker("t/writer_died", flush_interval=0.0) as run:
            run.log_metrics({"a": 1.0}, 0)
            run.writer.drain()
            run.writer.writer.proc.kill()
            run.writer.writer.proc.join()
            run.log_metrics({"a": 2.0}, 1)
    died = c.get_run(run.run_id)
    assert died.info.status == "FAILED" and "writer process died" in died.data.tags["error"]


CHILD = """
import pathlib, sys, time
from tracking import interrupts
interrupts.sigterm_as_ctrl_c()
try:
    time.sleep(60)
except KeyboardInterrupt:  # as a study child does: ends its runs (KILLED), then exits
    time.sleep(1)
    pathlib.Path(sys.argv[1]).write_text("runs ended")
    sys.exit(130)
"""
PARENT = """
import sys
from tracking import interrupts
interrupts.sigterm_as_ctrl_c()
try:
    interrupts.call([sys.executable, "-c", sys.argv[1], sys.argv[2]])
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.parametrize("how", ["Ctrl-C", "kill PARENT"])
def test_a_stopped_command_lets_its_child_end_its_runs(tmp_path, how):
    """reports.weekly and replay --recorded-code run child commands (a study, its workers):
    Ctrl-C reaches the child too, and subprocess.call killed it before it could mark its runs
    KILLED; a SIGTERM to the parent alone (kill, a scheduler) left the child running."""
    import signal
    import time

    done = tmp_path / "done"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(done)], env=env, cwd=ROOT,
                              start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(3)  # both interpreters up
    if how == "Ctrl-C":
        os.killpg(parent.pid, signal.SIGINT)  # the terminal's: the whole group
    else:
        os.kill(parent.pid, signal.SIGTERM)
    assert parent.wait(timeout=60) == 130
    assert done.read_text() == "runs ended"


def test_more_than_a_batch_of_metrics_and_long_params(mlruns):
    with Tracker("t/batch", flush_interval=0.0) as run:
        for step in range(700):
            run.log_metrics({"x": step, "y": step * 2.0}, step)
        run.log_params({"long": "v" * 7000, "short": 3})
    c = store.client()
    assert len(c.get_metric_history(run.run_id, "y")) == 700
    params = c.get_run(run.run_id).data.params
    assert params["short"] == "3" and "params_long.json" in params["long"]
    assert "params_long.json" in {a.path for a in c.list_artifacts(run.run_id)}


def test_secrets_never_logged(mlruns, monkeypatch):
    monkeypatch.setenv("API_TOKEN", SECRET)
    monkeypatch.setattr(sys, "argv", ["train.py", f"--token={SECRET}"])
    with Tracker("t/secrets", config={"note": SECRET, "n": 1}, tags={"who": SECRET}) as run:
        run.log_params({"token_again": SECRET})
        run.log_text(f"leaked? {SECRET}", "notes.txt")
    c = store.client()
    r = c.get_run(run.run_id)
    blob = json.dumps([r.data.params, r.data.tags])
    for root, _, files in os.walk(mlruns / "artifacts"):
        for f in files:
            blob += Path(root, f).read_text(errors="replace")
    assert SECRET not in blob
    assert provenance.REDACTED in r.data.tags["command"]


def test_passwords_in_urls_are_redacted_wherever_shown():
    R = provenance.REDACTED
    assert provenance.redact_urls("postgresql://u:pw@h:5432/db") == f"postgresql://u:{R}@h:5432/db"
    assert (provenance.redact_urls("postgresql://h/db?user=u&password=pw&sslmode=require")
            == f"postgresql://h/db?user=u&password={R}&sslmode=require")
    for plain in ("postgresql://postgres@127.0.0.1:5432/db", "journal:/a b/journal.log", "http://127.0.0.1:5000"):
        assert provenance.redact_urls(plain) == plain


def test_dirty_tree_diff_is_recorded(mlruns, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    run_git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True)  # noqa: E731
    run_git("init", "-q")
    (repo / "solver.py").write_text("alpha = 1\n")
    run_git("add", ".")
    run_git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (repo / "solver.py").write_text("alpha = 2\n")
    monkeypatch.setattr(provenance, "project_root", lambda: repo)
    with Tracker("t/dirty") as run:
        pass
    c = store.client()
    assert c.get_run(run.run_id).data.tags["git.dirty"] == "true"
    diff = Path(c.download_artifacts(run.run_id, "provenance/uncommitted.diff", str(tmp_path))).read_text()
    assert "+alpha = 2" in diff


def test_replay_reproduces_exactly(mlruns):
    rid = _tracked_pde_run(tiny_config(adam_steps=20, lr=1e-2, lbfgs_steps=5))
    out = _replay([rid], mlruns)
    assert out.returncode == 0, out.stderr
    assert "DIFFERENT" not in out.stdout and "rel_l2" in out.stdout and "reproduced" in out.stdout
    assert "when the run was made" not in out.stderr  # the same libraries
    store.client().set_tag(rid, "version.numpy", "1.0.0")  # as if made before an upgrade
    out = _replay([rid], mlruns)
    assert "warning: numpy 1.0.0 when the run was made, " in out.stderr and out.returncode == 0, out.stderr
    c = store.client()
    replays = [r for r in _all_runs(c) if r.data.tags.get("replay_of") == rid]
    assert len(replays) == 2 and {r.data.tags["replay.reproduced"] for r in replays} == {"true"}


def test_an_interrupted_run_replays_to_where_it_stopped(mlruns):
    """A KILLED run's metrics are where Ctrl-C stopped it; the replay runs to the end, so it
    compares each metric at the run's last step of it (its last values said DIFFERENT)."""
    cfg = tiny_config(adam_steps=30, lr=1e-2)
    with pytest.raises(KeyboardInterrupt):
        with Tracker(f"pde/{cfg.problem}", config=cfg, entry_point=pde.ENTRY_POINT, seed=cfg.train.seed) as run:
            log = run.log_metrics

            def ctrl_c_at_step_12(metrics, step, *args, **kwargs):
                log(metrics, step, *args, **kwargs)
                if step == 12:
                    raise KeyboardInterrupt

            run.log_metrics = ctrl_c_at_step_12
            pde.run(cfg, run)
    c = store.client()
    assert c.get_run(run.run_id).info.status == "KILLED"
    assert max(m.step for m in c.get_metric_history(run.run_id, "loss")) == 12
    out = _replay([run.run_id], mlruns)
    assert out.returncode == 0 and "reproduced" in out.stdout and "DIFFERENT" not in out.stdout, out.stdout
    assert "interrupted (KILLED)" in out.stderr and "loss " in out.stdout


def test_replay_refuses_a_changed_dataset(mlruns, tmp_path):
    data = tmp_path / "observations.npz"
    make_problem("reaction_diffusion_inverse").write_observations(str(data), n=50)
    cfg = tiny_config("reaction_diffusion_inverse", adam_steps=5)
    cfg.problem_kwargs["data_file"] = str(data)
    rid = _tracked_pde_run(cfg)
    make_problem("reaction_diffusion_inverse").write_observations(str(data), n=50, seed=7)
    before = len(_all_runs(store.client()))
    out = _replay([rid], mlruns)
    assert out.returncode == 2
    assert "changed since the run" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert len(_all_runs(store.client())) == before


def test_replay_bad_input_is_one_line_exit_2_and_writes_nothing(mlruns):
    c = store.client()
    with Tracker("t/noconfig", entry_point="studies.pde:run") as bare:
        pass
    with Tracker("t/corrupt", config={"a": 1}, entry_point="studies.pde:run") as corrupt:
        pass
    c.log_text(corrupt.run_id, "{not json", "config.json")
    before = len(_all_runs(c))
    cases = {
        "0123456789abcdef": "no such run",
        bare.run_id: "no config.json artifact",
        corrupt.run_id: "corrupted",
    }
    for rid, message in cases.items():
        out = _replay([rid], mlruns)
        assert out.returncode == 2, (rid, out.stderr)
        assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    for moved, message in (("scans", "--moved: 'scans' is not OLD=NEW"),
                           ("/scans=/no/such/archive", "--moved: /no/such/archive (the new place of /scans) does not")):
        out = _replay([corrupt.run_id, "--moved", moved], mlruns)
        assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    out = _cli(["-m", "tracking.replay", bare.run_id], mlruns, MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    assert out.returncode == 2 and "unreachable" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert len(_all_runs(c)) == before


def reads_a_file(config, ctx):
    """An entry point whose input is named in its config (not as a recorded dataset)."""
    path = Path(config["path"])
    if not path.exists():
        raise ValueError(f"path: {path} no longer exists")
    ctx.log_results({"size": float(path.stat().st_size)})
    return {}


def test_a_replay_whose_entry_point_refuses_is_one_line_exit_2(mlruns, tmp_path):
    data = tmp_path / "in.txt"
    data.write_text("abc")
    with Tracker("t/reads", config={"path": str(data)}, entry_point="tests.test_tracking:reads_a_file") as run:
        reads_a_file({"path": str(data)}, run)
    data.unlink()
    out = _replay([run.run_id], mlruns)
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "stopped: path:" in out.stderr and "no longer exists" in out.stderr
    failed = [r for r in _all_runs(store.client()) if r.data.tags.get("replay_of") == run.run_id]
    assert [r.info.status for r in failed] == ["FAILED"]


def test_file_hash_is_streamed_and_cached(tmp_path):
    from tracking import hashing

    f = tmp_path / "big.bin"
    f.write_bytes(os.urandom(3 * hashing.CHUNK + 17))
    import hashlib

    assert hashing.file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    f.write_bytes(b"changed")
    assert hashing.file_sha256(f) == hashlib.sha256(b"changed").hexdigest()


def test_best_run_and_auto_link(mlruns):
    from tracking.links import auto_link, best_run

    ids = {}
    for name, value in (("a", 0.3), ("b", 0.1), ("c", 0.2)):
        with Tracker("t/best", run_name=name, tags={"family": "x" if name != "b" else "y"}) as run:
            run.log_results({"rel_l2": value})
        ids[name] = run.run_id
    with Tracker("t/best", run_name="replay of b", tags={"replay_of": ids["b"]}) as rerun:
        rerun.log_results({"rel_l2": 0.05})  # better, but a re-run: the link names the run that measured
    assert best_run("t/best", "rel_l2").info.run_id == ids["b"]
    assert best_run("t/best", "rel_l2", "max").info.run_id == ids["a"]
    assert best_run("t/best", "rel_l2", filter_string="tags.family = 'x'").info.run_id == ids["c"]
    assert best_run("t/nothing", "rel_l2") is None
    with pytest.raises(ValueError, match="direction"):
        best_run("t/best", "rel_l2", "down")
    with Tracker("t/next") as nxt:
        auto_link(ids["b"], nxt.run_id, role="pretrained", metric="rel_l2")
    c = store.client()
    assert c.get_run(nxt.run_id).data.tags["link.pretrained"] == ids["b"]
    assert json.loads(c.get_run(ids["b"]).data.tags["link.used_by"]) == [nxt.run_id]


def test_system_metrics_on_request(mlruns):
    import time

    with Tracker("t/system", system_metrics=True) as run:
        time.sleep(6)
    keys = store.client().get_run(run.run_id).data.metrics
    assert any(k.startswith("system/") for k in keys), keys


def test_models_round_trip_as_safetensors_and_pickles_are_refused(mlruns):
    import torch

    from tracking import models
    from tracking.store import TrackingError

    cfg = tiny_config("reaction_diffusion_inverse", adam_steps=5)
    rid = _tracked_pde_run(cfg)
    model, tensors, config = models.load_model(rid)
    assert config == cfg and any(k.startswith("problem.") for k in tensors)  # the unknown D, κ
    x = torch.rand(7, 2, dtype=torch.float64)
    again, _, _ = models.load_model(rid)
    assert torch.equal(model(x), again(x))
    # an old-style pickled artifact: refused, with the way out; convert makes it loadable
    c = store.client()
    with Tracker("pde/old", config=cfg, entry_point="studies.pde:run") as run:
        path = mlruns / "state_dict.pt"
        torch.save({"model": model.state_dict(), "problem": {}}, path)
        run.log_artifact(path, "model")
    with pytest.raises(TrackingError, match=r"pickle \(state_dict.pt\).*tracking.models convert " + run.run_id):
        models.load_model(run.run_id)
    from tests.helpers import run_main

    out = run_main(models.main, ["convert", run.run_id], mlruns)
    assert out.returncode == 0, out.stderr
    converted, _, _ = models.load_model(run.run_id)
    assert torch.equal(converted(x), model(x))
    assert "model/model.safetensors" in {a.path for a in c.list_artifacts(run.run_id, "model")}


def test_replay_counts_a_result_added_since_as_new_and_a_lost_one_as_different():
    from tracking.replay import compare

    ok, rows = compare({"rmse": 1.0}, {"rmse": 1.0, "flagged_noisy": 0.0}, [], 0.0)
    assert ok and ("flagged_noisy", None, 0.0, "", "new") in rows
    ok, rows = compare({"rmse": 1.0, "flagged_noisy": 0.0}, {"rmse": 1.0}, [], 0.0)
    assert not ok and rows[0][-1] == "DIFFERENT"


def test_a_ui_on_a_port_in_use_is_one_line_exit_2(capsys):
    """The MLflow UI and optuna-dashboard say the port is taken (their servers would log it
    among their start-up lines and exit) and start nothing."""
    import socket

    from studies import dashboard
    from tracking import ui

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for main in (ui.main, dashboard.main):
            assert main(["--port", str(port)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert err == [f"error: --port {port}: 127.0.0.1:{port} is in use (a UI already running? open "
                           f"http://127.0.0.1:{port}); or give another, --port {port + 1}"]
