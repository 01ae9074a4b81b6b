"""Configs recorded by older versions: rebuilt as the code then behaved, not with today's defaults."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cpikan.config import ConfigError, from_recorded, nested, to_jsonable
from cpikan.experiment import PINNConfig
from cpikan.multistage import MultiStageConfig
from cpikan.sensors.inverse import FlowInverseConfig
from studies.psi_pretrain import PSIPretrainConfig

DATA = Path(__file__).parent / "data" / "recorded"


def test_a_run_from_before_the_curriculum_trains_without_it():
    # config.json of a psi_pretrain trial recorded by commit 7105118 (before the curriculum)
    cfg, filled = from_recorded(PSIPretrainConfig, json.loads((DATA / "psi_pretrain_7105118.json").read_text()))
    assert cfg.curriculum_factors == () and cfg.curriculum_steps == () and cfg.steps == 30
    assert PSIPretrainConfig().curriculum_factors == (4, 2)  # today's default differs
    assert filled == {"curriculum_factors": [], "curriculum_steps": [], "wavelengths": [5.0, 5.5, 6.05, 6.655]}


def test_nested_fields_added_since_are_named_by_their_dotted_path():
    cfg, filled = from_recorded(PINNConfig, json.loads((DATA / "helmholtz1d_7105118.json").read_text()))
    assert cfg.train.lm_steps == 250 and cfg.model.degree == 8
    assert {"model.basis", "train.lm_solver", "train.al_every", "init_from"} <= set(filled)
    assert filled["train.lm_solver"] == "cholesky"
    ms, filled = from_recorded(MultiStageConfig, {"base": json.loads((DATA / "helmholtz1d_7105118.json").read_text())})
    assert ms.lm_solver == "cholesky" and MultiStageConfig().lm_solver == "svd"  # before SVD existed
    assert filled["lm_solver"] == "cholesky" and "base.train.lm_solver" in filled


def test_a_before_value_can_follow_another_recorded_field():
    # physics_weight weighed the boundary terms too before boundary_weight existed
    cfg, filled = from_recorded(FlowInverseConfig, {"physics_weight": 500.0})
    assert cfg.boundary_weight == 500.0 and filled["boundary_weight"] == 500.0
    assert from_recorded(FlowInverseConfig, {"physics_weight": 500.0, "boundary_weight": 7.0})[0].boundary_weight == 7.0


def test_a_field_removed_since_or_a_bad_value_is_refused_by_its_dotted_path():
    with pytest.raises(ConfigError, match=r"^model\.width: recorded by the run, but ModelConfig has no such field"):
        from_recorded(PINNConfig, {"model": {"width": 3}})
    with pytest.raises(ConfigError, match=r"^model\.degree: must be ≥ 1"):
        from_recorded(PINNConfig, {"model": {"degree": 0}})


def test_replay_of_a_run_recorded_before_a_field_runs_what_it_ran(mlruns, tmp_path):
    """A psi_pretrain run's record is made to look as a version before the curriculum wrote
    it; with today's default (two coarse levels) the replay would train another model."""
    from studies import psi_pretrain
    from tracking import hashing, store
    from tracking.tracker import TAG_CONFIG_HASH, Tracker

    cfg = PSIPretrainConfig(steps=2, train_size=64, val_size=64, patch=32, batch_size=2,
                            curriculum_factors=(), curriculum_steps=())
    with Tracker(psi_pretrain.EXPERIMENT, config=cfg, entry_point="studies.psi_pretrain:run", seed=0) as run:
        psi_pretrain.run(cfg, run)
    old = {k: v for k, v in to_jsonable(cfg).items() if not k.startswith("curriculum")}
    c = store.client()
    c.log_text(run.run_id, json.dumps(old), "config.json")
    c.set_tag(run.run_id, TAG_CONFIG_HASH, hashing.config_hash(old))
    from tests.helpers import run_main
    from tracking.replay import main as replay

    out = run_main(replay, [run.run_id], mlruns)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "predates 2 config field(s); set as the code then behaved: curriculum_factors=[], curriculum_steps=[]" \
        in out.stderr
    assert "DIFFERENT" not in out.stdout and "rmse_nm" in out.stdout


def _recorded_fields() -> dict[str, list[str]]:
    """Every config class a run records (each study's, the reconstruction's, the sensor
    placement's), as dotted field paths."""
    import dataclasses
    import importlib

    from studies.place_sensors import PlaceSensorsConfig
    from studies.reconstruct import ReconstructConfig
    from studies.registry import CATALOG, get

    def paths(cls: type, prefix: str = "") -> list[str]:
        inner = nested(cls)
        return [p for f in dataclasses.fields(cls)
                for p in (paths(inner[f.name], f"{prefix}{f.name}.") if f.name in inner else [prefix + f.name])]

    for module in {e.module for e in CATALOG.values()}:
        importlib.import_module(module)
    classes = {get(name).config_cls for name in CATALOG} | {ReconstructConfig, PlaceSensorsConfig}
    return {f"{c.__module__}:{c.__qualname__}": sorted(paths(c)) for c in sorted(classes, key=lambda c: c.__name__)}


FIELDS = DATA / "fields.json"


def test_every_field_a_run_records_is_known_to_replay():
    """A field added to a recorded config is missing from every run made before it; this
    fails until someone says what those runs did (``before=``, when today's default would
    change it) and adds the field to fields.json (``python -m tests.test_recorded_configs``)."""
    known, now = json.loads(FIELDS.read_text()), _recorded_fields()
    added = sorted(f"{c}.{f}" for c in now for f in set(now[c]) - set(known.get(c, [])))
    removed = sorted(f"{c}.{f}" for c in known for f in set(known[c]) - set(now.get(c, [])))
    assert not added, (f"new config fields {added}: runs recorded before them lack them; if the default "
                       "changes what those runs did, declare before= (cpikan.config.added), then list them "
                       f"in {FIELDS}")
    assert not removed, (f"config fields {removed} are gone: runs that recorded them can no longer be "
                         "replayed (from_recorded refuses them); keep the field or accept that, then update "
                         f"{FIELDS}")


if __name__ == "__main__":
    FIELDS.write_text(json.dumps(_recorded_fields(), indent=1) + "\n")
    print(f"wrote {FIELDS}")


def test_replay_with_the_recorded_code_reproduces_what_todays_code_cannot(tmp_path):
    """A run made at a later commit (a result added) plus an uncommitted change (its value
    changed), in a clone; the clone then goes back one commit. Today's code loses the result;
    the run's own code, checked out with its diff, reproduces it exactly."""
    import os

    root = Path(__file__).resolve().parent.parent
    clone, store_dir = tmp_path / "clone", tmp_path / "mlruns"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True)
    pde = clone / "studies" / "pde.py"
    text = pde.read_text()
    assert "results.update(final_loss=result.loss," in text
    pde.write_text(text.replace("results.update(final_loss=result.loss,", "results.update(planted=1.0, final_loss=result.loss,"))
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "commit", "-qam", "a result added"], check=True)
    pde.write_text(pde.read_text().replace("planted=1.0", "planted=2.0"))  # uncommitted

    def python(code_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env.update(CPIKAN_MLRUNS=str(store_dir), PYTHONPATH=str(code_root))
        return subprocess.run([sys.executable, "-P", *args], capture_output=True, text=True, env=env, cwd=tmp_path)

    made = python(clone, "-c", "from tests.helpers import tiny_config\nfrom studies import pde\n"
                  "from tracking.tracker import Tracker\ncfg = tiny_config(adam_steps=5, lr=1e-2)\n"
                  "with Tracker('pde/diffusion', config=cfg, entry_point=pde.ENTRY_POINT, seed=0) as run:\n"
                  "    pde.run(cfg, run)\nprint(run.run_id)")
    assert made.returncode == 0, made.stderr
    rid = made.stdout.split()[-1]
    subprocess.run([*git, "checkout", "-q", "--", "."], check=True)
    subprocess.run([*git, "reset", "-q", "--hard", "HEAD~1"], check=True)

    today = python(clone, "-m", "tracking.replay", rid)
    assert today.returncode == 1 and "planted" in today.stdout and "DIFFERENT" in today.stdout
    assert "made by other code (commit " in today.stdout and "--recorded-code replays it" in today.stdout
    own = python(clone, "-m", "tracking.replay", rid, "--recorded-code")
    assert own.returncode == 0, own.stdout + own.stderr
    assert "and its uncommitted diff" in own.stderr and "DIFFERENT" not in own.stdout
    assert "planted" in own.stdout and f"reproduced run {rid}" in own.stdout
    worktrees = subprocess.run([*git, "worktree", "list"], capture_output=True, text=True, check=True).stdout
    assert len(worktrees.splitlines()) == 1, worktrees  # the checkout is gone
    from reports.summary import main as summarize
    from tests.helpers import run_main
    from tracking.replay import main as replay

    summary = run_main(summarize, [rid], store_dir).stdout  # which replay ran which code
    assert "(its commit): true" in summary and "(code of " in summary and "): false" in summary, summary
    elsewhere = run_main(replay, [rid, "--recorded-code"], store_dir, tmp_path)  # a repository without that commit
    assert elsewhere.returncode == 2 and "does not hold" in elsewhere.stderr
    assert len(elsewhere.stderr.strip().splitlines()) == 1, elsewhere.stderr
