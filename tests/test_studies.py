"""`python -m studies.run`: nested runs, replay of a trial, resume after SIGKILL, parallel
workers on PostgreSQL (two on the journal file make the browser tests' store), and bad input."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
PG = "postgresql://postgres@127.0.0.1:5432"
TINY_TRAIN = ["--set", "train.adam_steps=15", "--set", "train.lbfgs_steps=0", "--set", "train.lm_steps=0",
              "--set", 'problem_kwargs={"n_interior": 60}']
# a small model too: the preset's ~2600 parameters make each LM step's Cholesky ~0.3 s
TINY = [*TINY_TRAIN, "--set", "model.hidden=[8,8]", "--set", "model.degree=5"]


def _env(mlruns):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(CPIKAN_MLRUNS=str(mlruns), PYTHONPATH=str(ROOT))
    return env


def _study(mlruns, *args, **kw):
    return subprocess.run([sys.executable, "-m", "studies.run", *args], capture_output=True, text=True,
                          env=_env(mlruns), cwd=ROOT, **kw)


def _study_here(mlruns, monkeypatch, capsys, *args):
    """The study command in this process (no interpreter start-up: for the calls that
    resume, refuse or summarise and train nothing)."""
    from studies.run import main

    monkeypatch.setenv("CPIKAN_MLRUNS", str(mlruns))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def _trials(mlruns, name, storage=None):
    from studies.storage import load_study

    return load_study(name, storage or f"journal:{mlruns / 'optuna' / 'journal.log'}").get_trials()


def _runs(mlruns, monkeypatch):
    from tracking import store

    monkeypatch.setenv("CPIKAN_MLRUNS", str(mlruns))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    c = store.client()
    exps = [e.experiment_id for e in c.search_experiments()]
    return c, (c.search_runs(exps, max_results=1000) if exps else [])


def test_nested_runs_and_a_trial_replays(tmp_path, monkeypatch, capsys):
    with_lm = [*TINY, "--set", "train.lm_steps=2"]  # replay must reproduce the LM phase too
    out = _study_here(tmp_path, monkeypatch, capsys, "helmholtz1d", "--trials", "3", *with_lm)
    assert out.returncode == 0, out.stderr
    trials = _trials(tmp_path, "helmholtz1d")
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    c, runs = _runs(tmp_path, monkeypatch)
    parents = [r for r in runs if r.data.tags.get("cpikan.study_parent") == "true"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["optuna.trial_number"] for r in children) == ["0", "1", "2"]
    assert all(r.data.tags["optuna.state"] == "COMPLETE" and "rel_l2" in r.data.metrics for r in children)
    rid = trials[1].user_attrs["mlflow_run_id"]
    from tests.helpers import run_main
    from tracking.replay import main as replay

    rep = run_main(replay, [rid], tmp_path)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    parent = run_main(replay, [parents[0].info.run_id], tmp_path)  # the study's own run: its trials replay
    assert parent.returncode == 2 and "parent run of study 'helmholtz1d': replay one of its trials" in parent.stderr
    # running the same command again resumes: the study already has its 3 trials
    again = _study_here(tmp_path, monkeypatch, capsys, "helmholtz1d", "--trials", "3", *with_lm)
    assert again.returncode == 0 and len(_trials(tmp_path, "helmholtz1d")) == 3
    # another --set would rank trials of two setups on one front: refused, naming what differs
    other = _study_here(tmp_path, monkeypatch, capsys, "helmholtz1d", "--trials", "4", *with_lm,
                        "--set", "train.lm_steps=3")
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1, other.stderr
    assert "was run with another base config (train.lm_steps 2 → 3)" in other.stderr
    assert "resume it with --set train.adam_steps=15" in other.stderr and len(_trials(tmp_path, "helmholtz1d")) == 3
    # the same --set on code whose defaults changed since: said, not refused
    from studies import storage

    study = storage.load_study("helmholtz1d", f"journal:{tmp_path / 'optuna' / 'journal.log'}")
    recorded = study.user_attrs["base_config"]
    study.set_user_attr("base_config", {**recorded, "config": recorded["config"].replace('"lr":', '"lr":0.5,"x":')})
    drift = _study_here(tmp_path, monkeypatch, capsys, "helmholtz1d", "--trials", "3", *with_lm)
    assert drift.returncode == 0 and "note: the code's defaults changed since study 'helmholtz1d' began" in drift.stderr
    # a trial made by other code (its run's commit) is said, and marked where it ranks
    trial0 = next(r for r in children if r.data.tags["optuna.trial_number"] == "0")
    c.set_tag(trial0.info.run_id, "git.commit", "feedface" * 5)
    said = _study_here(tmp_path, monkeypatch, capsys, "helmholtz1d", "--trials", "3", *with_lm)
    assert said.returncode == 0, said.stderr
    assert "note: 1 of 3 complete trials were made by other code (commit feedfacefeed: #0)" in said.stdout


def test_sigkill_mid_trial_then_resume(tmp_path, monkeypatch, capsys):
    slow = ["--set", "train.adam_steps=200", "--set", "train.lbfgs_steps=0", "--set", "train.lm_steps=0",
            "--set", 'problem_kwargs={"n_interior": 100}']
    proc = subprocess.Popen([sys.executable, "-m", "studies.run", "helmholtz1d", "--trials", "3", *slow],
                            env=_env(tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            time.sleep(1)
            journal = tmp_path / "optuna" / "journal.log"
            if not journal.exists():
                continue
            try:
                trials = _trials(tmp_path, "helmholtz1d")
            except KeyError:
                continue
            states = [t.state.name for t in trials]
            # mid-trial: the running trial has its MLflow run, i.e. training has started
            if "COMPLETE" in states and states[-1] == "RUNNING" and "mlflow_run_id" in trials[-1].user_attrs:
                break
        else:
            pytest.fail("never saw a completed trial followed by a running one")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {t.number: t.state.name for t in _trials(tmp_path, "helmholtz1d")}
    stale = max(before)
    out = _study_here(tmp_path, monkeypatch, capsys, "helmholtz1d", "--trials", "3", *slow)
    assert out.returncode == 0, out.stderr
    trials = _trials(tmp_path, "helmholtz1d")
    numbers = [t.number for t in trials]
    assert numbers == sorted(set(numbers))  # no duplicates
    states = {t.number: t.state.name for t in trials}
    assert states[stale] == "FAIL"
    assert sum(s == "COMPLETE" for s in states.values()) == 3
    for n, s in before.items():
        if s == "COMPLETE":
            assert states[n] == "COMPLETE"  # kept
    c, _ = _runs(tmp_path, monkeypatch)
    stale_run = c.get_run(trials[stale].user_attrs["mlflow_run_id"])
    assert stale_run.info.status == "FAILED" and "worker died" in stale_run.data.tags["error"]


@pytest.fixture
def pg():
    """``new(prefix)``: a new database's name, dropped after the test, and ``execute`` on an
    admin connection to the test server (skips when PostgreSQL is not running)."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG + "/test", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not running")
    made: list[str] = []

    def new(prefix: str) -> str:
        made.append(f"{prefix}_test_{uuid.uuid4().hex[:8]}")
        admin.execute(f"CREATE DATABASE {made[-1]}")
        return made[-1]

    try:
        yield SimpleNamespace(new=new, execute=admin.execute)
    finally:
        for db in made:
            admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (["no_such_study"], "unknown study 'no_such_study'; known: tiling_overlap_sweep"),
        (["helmholtz1d", "--set", "train.warp=3"], "unknown key 'train.warp'"),
        (["helmholtz1d", "--set", "train.lr=fast"], "--set train.lr: cannot read 'fast' as float"),
        (["helmholtz1d", "--set", "train.scheduler=sometimes"], "scheduler: unknown 'sometimes'"),
        (["helmholtz1d", "--trials", "0"], "--trials: must be ≥ 1"),
        (["helmholtz1d", "--storage", "postgresql://postgres@127.0.0.1:1/none"], "unreachable"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, monkeypatch, capsys, args, message):
    out = _study_here(tmp_path, monkeypatch, capsys, *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    journal = tmp_path / "optuna" / "journal.log"
    assert not journal.exists() or journal.stat().st_size == 0
    if (tmp_path / "mlflow.db").exists():
        _, runs = _runs(tmp_path, monkeypatch)
        assert runs == []


def test_list_names_every_study(tmp_path):
    out = _study(tmp_path, "--list")
    assert out.returncode == 0
    for name in ("tiling_overlap_sweep", "scheduler_search", "init_search", "psi_pretrain", "poisson3d"):
        assert name in out.stdout
    import importlib

    from studies.run import COMMANDS

    for module, _ in COMMANDS:  # the commands it points to exist
        assert module in out.stdout
        importlib.import_module(module.split()[0])


def _random_study_configs(mlruns, monkeypatch, workers, steps, storage=None, capsys=None):
    """Every trial once, every worker busy, runs nested; the output too (one worker: in this
    process, given ``capsys``)."""
    fast = ["--set", f"train.adam_steps={steps}", "--set", "train.lm_steps=0",
            "--set", 'problem_kwargs={"n_interior": 60}']
    where = ["--storage", storage] if storage else []
    args = ["scheduler_search", "--trials", "4", "--workers", str(workers), "--sampler", "random",
            "--seed", "7", "--pruner", "none", *where, *fast]
    out = _study_here(mlruns, monkeypatch, capsys, *args) if capsys else _study(mlruns, *args)
    assert out.returncode == 0, out.stderr
    trials = _trials(mlruns, "scheduler_search", storage)
    assert sorted(t.number for t in trials) == list(range(4)) and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["worker.index"] for t in trials}) == workers  # every worker proposed
    assert len({t.user_attrs["worker.pid"] for t in trials}) == workers
    bar = [line for line in out.stderr.replace("\r", "\n").splitlines() if "scheduler_search:" in line]
    assert "4/4" in bar[-1], bar  # the bar counts the other workers' last trials too (it stopped at 3/4)
    _, runs = _runs(mlruns, monkeypatch)
    nested = [r for r in runs if "optuna.trial_number" in r.data.tags]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in nested) == list(range(4))
    return [tuple(sorted(t.params.items())) for t in trials], out, runs


@pytest.mark.postgres
def test_parallel_random_study_is_reproducible_from_its_seed(tmp_path, monkeypatch, pg, capsys):
    """Per-trial seeds: the same configs whatever the split between workers and whatever the
    storage; none twice. Two workers share a PostgreSQL study (the team's way)."""
    # a password in the URL (trust auth ignores it) reaches neither the output nor a run
    url = f"postgresql://postgres:hunter2@127.0.0.1:5432/{pg.new('optuna')}"
    # trials of a few seconds on two workers: the parent works from the start, and with instant
    # trials it could finish all 4 before the spawned worker has imported torch
    first, out, runs = _random_study_configs(tmp_path / "a", monkeypatch, workers=2, steps=400, storage=url)
    second, _, _ = _random_study_configs(tmp_path / "b", monkeypatch, workers=1, steps=15, capsys=capsys)
    assert len(set(first)) == len(first) == 4
    assert set(first) == set(second)
    assert "hunter2" not in out.stdout + out.stderr
    parent = next(r for r in runs if r.data.tags.get("cpikan.study_parent") == "true")
    assert parent.data.tags["optuna.storage"] == url.replace("hunter2", "[REDACTED]")
    assert not [r for r in runs if "hunter2" in repr((r.data.tags, r.data.params))]


def _enumerated_fields():
    from cpikan.config import CHOICES, declared
    from studies import registry

    for name in registry.CATALOG:
        study = registry.get(name)
        for key, meta in declared(study.default()).items():
            if CHOICES in meta:
                yield name, key, meta[CHOICES]


def test_every_enumerated_field_refuses_a_bogus_value(capsys):
    from studies.run import main

    seen = 0
    for study, key, allowed in _enumerated_fields():
        assert main([study, "--set", f"{key}=bogus"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{key}: unknown 'bogus'; allowed: {', '.join(allowed)}" in err, err
        seen += 1
    assert seen >= 12  # model.kind/init/squash/dtype, problem, scheduler, amp, balancing, mode, loss, …


def test_a_near_miss_gets_a_hint(capsys):
    from studies.run import main

    assert main(["helmholtz1d", "--set", "model.init=xavir"]) == 2
    assert "did you mean 'xavier'?" in capsys.readouterr().err
    assert main(["helmholz1d"]) == 2
    assert "did you mean 'helmholtz1d'?" in capsys.readouterr().err


def test_dashboard_names_the_studies_it_does_not_show(mlruns, monkeypatch, capsys):
    """A team's PostgreSQL studies are not silently missing from a journal's dashboard, and
    ``CPIKAN_STORAGE`` makes the team's storage every command's default."""
    from studies import dashboard, storage
    from tracking.tracker import Tracker

    team = "postgresql://lab:[REDACTED]@db.lab:5432/optuna"
    journal = storage.default_storage()
    for name, where in (("team_sweep", team), ("mine", journal), ("old", "db.lab:5432/optuna")):
        with Tracker("studies/helmholtz1d", run_name=name, tags={"cpikan.study_parent": "true",
                                                                  "optuna.study_name": name, "optuna.storage": where}):
            pass
    assert dashboard.studies_elsewhere(journal) == {team: {"team_sweep"}, "db.lab:5432/optuna": {"old"}}
    # the study report says where the study lives, too
    from reports import study as study_report

    assert study_report.main(["team_sweep"]) == 2
    assert f"the tracking store has it in {team}: --storage URL" in capsys.readouterr().err
    monkeypatch.setenv("CPIKAN_STORAGE", "postgresql://lab@db.lab:5432/optuna")
    assert storage.default_storage() == "postgresql://lab@db.lab:5432/optuna"
    # the same database however it is written (runs before 2026-12-06 recorded host/db only)
    assert dashboard.studies_elsewhere(storage.default_storage()) == {journal: {"mine"}}


@pytest.mark.postgres
def test_two_machines_open_new_databases_at_once(tmp_path, pg):
    """Two commands making a new MLflow and a new Optuna database's tables at once (a team's
    machines on new stores): the one that loses the race tries again (it exited before)."""
    optuna_db, mlflow_db = pg.new("optuna"), pg.new("mlflow")
    opening = ("import sys; from studies import storage; from tracking import store; "
               "storage.open_storage(sys.argv[1]); print(len(store.client().search_experiments()))")
    env = {**_env(tmp_path), "MLFLOW_TRACKING_URI": f"{PG}/{mlflow_db}"}
    procs = [subprocess.Popen([sys.executable, "-c", opening, f"{PG}/{optuna_db}"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs


@pytest.mark.postgres
def test_machines_on_postgresql_take_turns_on_a_study(tmp_path, monkeypatch, pg):
    """The study's lock on PostgreSQL is the database's, not a file's: a command from another
    mlruns/ (another machine) waits while it is held, before making the parent run (and
    before each trial's ask: so machines make one parent and never overshoot the count)."""
    from studies import storage

    url = f"{PG}/{pg.new('optuna')}"
    storage.open_storage(url)  # its tables, before the lock is held
    waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    with storage.study_lock("helmholtz1d", url):
        proc = subprocess.Popen([sys.executable, "-m", "studies.run", "helmholtz1d", "--trials", "1",
                                 "--storage", url, *TINY], env=_env(tmp_path / "other"), cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while pg.execute(waiting).fetchone()[0] == 0:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        _, runs = _runs(tmp_path / "other", monkeypatch)
        assert runs == []  # it waits before the parent run
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    _, runs = _runs(tmp_path / "other", monkeypatch)
    assert len(runs) == 2  # the parent and its trial
