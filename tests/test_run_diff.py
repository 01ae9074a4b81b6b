"""`python -m tracking.diff`: only what differs; a run and its exact replay are identical."""

import json

import pytest

from tests.helpers import run_main, tiny_config
from tests.test_tracking import _replay, _tracked_pde_run
from tracking import store
from tracking.diff import diff_runs
from tracking.diff import main as diff_main


def _diff(args, mlruns):
    """``python -m tracking.diff ARGS``, its main() in this process."""
    return run_main(diff_main, args, mlruns)


def test_two_runs_differ_only_where_their_configs_do(mlruns):
    a = _tracked_pde_run(tiny_config(adam_steps=12, lr=1e-2))
    b = _tracked_pde_run(tiny_config(adam_steps=12, lr=2e-2))
    diffs = diff_runs(a, b)
    assert diffs["config"] == {"train.lr": ["0.01", "0.02"]}
    assert "rel_l2" in diffs["results"] and "seconds" not in diffs["results"]  # measurement
    assert set(diffs["provenance"]) == {"config_hash"}
    assert "seconds" in diff_runs(a, b, measurements=True)["results"]
    out = _diff([a[:8], b[:8], "--json"], mlruns)  # the starts it prints do
    assert out.returncode == 1
    assert json.loads(out.stdout)["differences"]["config"] == {"train.lr": ["0.01", "0.02"]}


def test_a_run_and_its_replay_are_identical(mlruns):
    a = _tracked_pde_run(tiny_config(adam_steps=12, lr=1e-2))
    rep = _replay([a[:8]], mlruns)  # the start of its ID, as git takes a commit's
    assert rep.returncode == 0, rep.stdout + rep.stderr
    c = store.client()
    replay = [r for r in c.search_runs([c.get_run(a).info.experiment_id]) if r.data.tags.get("replay_of") == a]
    assert len(replay) == 1 and f"reproduced run {a}" in rep.stdout
    out = _diff([a, replay[0].info.run_id], mlruns)
    assert out.returncode == 0 and out.stdout.strip() == "identical", out.stdout + out.stderr


def test_unknown_run_is_exit_2(mlruns):
    _tracked_pde_run(tiny_config(adam_steps=2))
    out = _diff(["nope", "nada"], mlruns)
    assert out.returncode == 2 and out.stderr.startswith("error: run ID 'nope'") and not out.stdout


def test_runs_of_two_kinds_are_said_to_be(mlruns):
    from tracking.tracker import Tracker

    a = _tracked_pde_run(tiny_config(adam_steps=2))
    with Tracker("t/other", config={"x": 1}) as other:  # a config of another kind (a plain dict: no class)
        pass
    out = _diff([a, other.run_id], mlruns)
    assert out.returncode == 1 and "note: runs of two kinds" not in out.stdout  # a dict names no class
    c = store.client()
    c.set_tag(other.run_id, "cpikan.config_class", "studies.reconstruct:ReconstructConfig")
    out = _diff([a, other.run_id], mlruns)
    assert out.stdout.startswith(f"note: runs of two kinds ({a[:8]}: cpikan.experiment:PINNConfig, "
                                 f"{other.run_id[:8]}: studies.reconstruct:ReconstructConfig)"), out.stdout


def test_the_start_of_a_run_id_must_name_one_run(mlruns, monkeypatch):
    c = store.client()
    exp = store.get_or_create_experiment(c, "t/prefix")
    ids = [c.create_run(exp).info.run_id for _ in range(17)]  # 16 hex digits: two share a first one
    assert store.get_run(c, ids[0][: store.MIN_PREFIX]).info.run_id == ids[0]
    shared = next(i[0] for i in ids if sum(j[0] == i[0] for j in ids) > 1)
    monkeypatch.setattr(store, "MIN_PREFIX", 1)
    with pytest.raises(store.TrackingError, match=rf"run ID '{shared}': the start of .* runs .*give more of it"):
        store.get_run(c, shared)
    with pytest.raises(store.TrackingError, match="no such run"):
        store.get_run(c, "g" * 8)
