"""Multi-stage training: each stage fits the residual the stages before it left."""

import math

import numpy as np
import pytest
import torch

from cpikan.experiment import ModelConfig, PINNConfig
from cpikan.multistage import (
    MultiStageConfig,
    StagedModel,
    dominant_frequency,
    residual_spectrum,
    train_multistage,
)
from cpikan.nn import ScaledCPIKAN
from cpikan.train import TrainConfig


def regression_config(**kw):
    base = PINNConfig("regression1d", {"n_interior": 1000}, ModelConfig(hidden=(16,), degree=8, dtype="float64"),
                      TrainConfig(adam_steps=0, lm_steps=kw.pop("lm1", 150), lm_solver="svd"))
    return MultiStageConfig(base, **{"stages": 2, "hidden": (8,), "degree": 16, "lm_steps": 150, **kw})


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("planted", [3.0, 11.5])
def test_the_automatic_frequency_finds_a_planted_one(dim, planted):
    n = 257 if dim == 1 else 129
    axes = np.meshgrid(*[np.linspace(-1, 1, n)] * dim, indexing="ij")
    rng = np.random.default_rng(0)
    field = 1e-7 * np.sin(2 * math.pi * planted * axes[-1] + 0.3) + 1e-9 * rng.standard_normal(axes[0].shape)
    field += 3e-8 * axes[0]  # a trend: not a frequency
    freq, power = residual_spectrum(field.ravel(), dim, n)
    assert abs(dominant_frequency(freq, power) - planted) <= freq[1]  # within one bin


def test_staged_model_adds_values_and_derivatives():
    a = ScaledCPIKAN([2, 4, 1], 3, (-1, -1), (1, 1), dtype="float64", seed=0)
    b = ScaledCPIKAN([2, 5, 1], 4, (-1, -1), (1, 1), dtype="float64", seed=1)
    staged = StagedModel([a], [1.0])
    staged.add(b, 1e-3)
    assert not any(p.requires_grad for p in a.parameters()) and all(p.requires_grad for p in b.parameters())
    x = torch.rand(7, 2, dtype=torch.float64)
    d, da, db = staged.derivatives(x), a.derivatives(x), b.derivatives(x)
    assert torch.allclose(staged(x), a(x) + 1e-3 * b(x), rtol=0, atol=1e-15)
    assert torch.allclose(d.du, da.du + 1e-3 * db.du) and torch.allclose(d.d2u, da.d2u + 1e-3 * db.d2u)


def test_a_second_stage_takes_a_regression_from_1e_6_to_1e_9():
    """Measured: stage 1 1.2e-6, stage 2 1.5e-9 (150 LM steps each). Issue 16 asks ≤ 1e-10 in
    seconds; 400 steps per stage and a third stage reach 6e-11, in 150 s (bench territory)."""
    _, _, stages = train_multistage(regression_config())
    assert stages[0].rel_l2 > 3e-7 and stages[-1].rel_l2 <= 3e-9, [s.rel_l2 for s in stages]
    assert stages[1].scale == pytest.approx(stages[0].residual_rms, rel=0.5)  # ε: the residual left
    assert stages[1].frequency > 1  # the residual left is oscillatory, not a trend


def test_a_multistage_config_round_trips_and_its_run_replays_exactly():
    cfg = regression_config(lm1=15, lm_steps=10, **{"min_gain": 1.0})
    again = MultiStageConfig.from_json(cfg.to_json())
    assert again == cfg and again.to_json() == cfg.to_json()
    weighted = MultiStageConfig(cfg.base, loss_weights={"pde": 1.0, "bc": 10.0})
    assert MultiStageConfig.from_json(weighted.to_json()) == weighted
    model_a, _, a = train_multistage(cfg)
    model_b, _, b = train_multistage(again)
    assert [s.rel_l2 for s in a] == [s.rel_l2 for s in b] and len(a) == 2
    assert all(torch.equal(x, y) for x, y in zip(model_a.state_dict().values(), model_b.state_dict().values()))


def test_multistage_search_logs_every_stage_and_its_figures(mlruns):
    from studies.run import main
    from tracking import store

    sets = ["base.problem=regression1d", "base.problem_kwargs={\"n_interior\": 100}",
            "base.model.hidden=[8]", "base.train.lm_steps=5", "lm_steps=5", "min_gain=1.0"]
    assert main(["multistage_search", "--trials", "1", "--sampler", "random", "--set", "stages=2",
                 *sum([["--set", s] for s in sets], [])]) == 0
    client = store.client()
    exp = client.get_experiment_by_name("studies/multistage_search")
    (run,) = [r for r in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
              if "rel_l2" in r.data.metrics]
    assert run.data.params["stage_kind"] in ("network", "spectral")  # the seeded sampler drew "spectral"
    stages = int(run.data.metrics["stages_used"])
    history = client.get_metric_history(run.info.run_id, "stage_rel_l2")
    assert [m.step for m in history] == list(range(1, stages + 1))
    assert history[-1].value == run.data.metrics["rel_l2"]
    files = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/residual_spectra.html", "figures/residual_tracker.html"} <= files


def test_a_stage_that_makes_the_residual_worse_is_removed_and_said_so():
    # stage 2: 5 Adam steps from a random start, no LM: its ε-scaled output adds to the residual
    cfg = regression_config(lm1=100, lm_steps=0, adam_steps=5)
    model, problem, stages = train_multistage(cfg)
    assert [s.kept for s in stages] == [True, False], [(s.residual_rms, s.kept) for s in stages]
    assert stages[1].residual_rms >= stages[1].scale  # it was worse than what it was given
    assert len(model.stages) == 1 and model.scales.tolist() == [1.0]
    assert problem.evaluate(model)["rel_l2"] == stages[0].rel_l2
