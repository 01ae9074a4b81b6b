"""`python -m tracking.diff`: only what differs; a run and its exact replay are identical."""

import json

from tests.helpers import tiny_config
from tests.test_tracking import _cli, _tracked_pde_run
from tracking import store
from tracking.diff import diff_runs


def test_two_runs_differ_only_where_their_configs_do(mlruns):
    a = _tracked_pde_run(tiny_config(adam_steps=12, lr=1e-2))
    b = _tracked_pde_run(tiny_config(adam_steps=12, lr=2e-2))
    diffs = diff_runs(a, b)
    assert diffs["config"] == {"train.lr": ["0.01", "0.02"]}
    assert "rel_l2" in diffs["results"] and "seconds" not in diffs["results"]  # measurement
    assert set(diffs["provenance"]) == {"config_hash"}
    assert "seconds" in diff_runs(a, b, measurements=True)["results"]
    out = _cli(["-m", "tracking.diff", a, b, "--json"], mlruns)
    assert out.returncode == 1
    assert json.loads(out.stdout)["differences"]["config"] == {"train.lr": ["0.01", "0.02"]}


def test_a_run_and_its_replay_are_identical(mlruns):
    a = _tracked_pde_run(tiny_config(adam_steps=12, lr=1e-2))
    rep = _cli(["-m", "tracking.replay", a], mlruns)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    c = store.client()
    replay = [r for r in c.search_runs([c.get_run(a).info.experiment_id]) if r.data.tags.get("replay_of") == a]
    out = _cli(["-m", "tracking.diff", a, replay[0].info.run_id], mlruns)
    assert out.returncode == 0 and out.stdout.strip() == "identical", out.stdout + out.stderr


def test_unknown_run_is_exit_2(mlruns):
    _tracked_pde_run(tiny_config(adam_steps=2))
    out = _cli(["-m", "tracking.diff", "nope", "nada"], mlruns)
    assert out.returncode == 2 and out.stderr.startswith("error: run ID 'nope'") and not out.stdout


def test_runs_of_two_kinds_are_said_to_be(mlruns):
    from tracking.tracker import Tracker

    a = _tracked_pde_run(tiny_config(adam_steps=2))
    with Tracker("t/other", config={"x": 1}) as other:  # a config of another kind (a plain dict: no class)
        pass
    out = _cli(["-m", "tracking.diff", a, other.run_id], mlruns)
    assert out.returncode == 1 and "note: runs of two kinds" not in out.stdout  # a dict names no class
    c = store.client()
    c.set_tag(other.run_id, "cpikan.config_class", "studies.reconstruct:ReconstructConfig")
    out = _cli(["-m", "tracking.diff", a, other.run_id], mlruns)
    assert out.stdout.startswith(f"note: runs of two kinds ({a[:8]}: cpikan.experiment:PINNConfig, "
                                 f"{other.run_id[:8]}: studies.reconstruct:ReconstructConfig)"), out.stdout
