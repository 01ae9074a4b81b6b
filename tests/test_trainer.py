"""Trainer: NaN survival, exact resume across processes, schedulers, inits, balancing."""

import json
import math
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from cpikan.experiment import PINNConfig, build, run_pinn
from cpikan.train import Callback, History, Trainer
from cpikan.train.config import SCHEDULERS
from tests.helpers import tiny_config


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_training_reduces_loss_and_reports_metrics():
    hist = History()
    result, _, _ = run_pinn(tiny_config(adam_steps=60, lr=1e-2, eval_every=20), [hist])
    losses = [m["loss"] for _, m in hist.steps]
    assert len(losses) == 60 and losses[-1] < 0.5 * losses[0]
    assert {"loss", "loss_pde", "loss_bc", "loss_ic", "lr", "grad_norm"} <= set(hist.steps[0][1])
    assert [s for s, _ in hist.evals] == [20, 40, 60, 60]
    assert math.isfinite(result.metrics["rel_l2"])


class Poison(Callback):
    """Writes NaN into the weights after step ``at`` (as a diverging step would)."""

    def __init__(self, model, at):
        self.model, self.at = model, at

    def on_step(self, step, metrics):
        if step == self.at:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))


def test_nan_mid_training_is_survived():
    cfg = tiny_config(adam_steps=30, lr=1e-2, lbfgs_steps=5)
    problem, model = build(cfg)
    trainer = Trainer(model, problem, cfg.train, [Poison(model, 10)])
    result = trainer.fit()
    assert result.nan_events >= 1
    assert torch.isfinite(_flat(model)).all()
    assert math.isfinite(result.loss)
    assert trainer.opt.param_groups[0]["lr"] <= 1.0  # L-BFGS lr; the Adam lr was halved below
    assert result.steps >= 30


def test_nan_loss_lowers_lr_and_restores_state():
    cfg = tiny_config(adam_steps=15, lr=1e-2)
    problem, model = build(cfg)
    calls = {"n": 0}
    original = problem.loss_terms

    def flaky(model_, batch, deriv_fn=None):
        calls["n"] += 1
        terms = original(model_, batch, deriv_fn)
        if calls["n"] == 8:
            terms["pde"] = terms["pde"] * float("inf")
        return terms

    problem.loss_terms = flaky
    trainer = Trainer(model, problem, cfg.train)
    lrs = []

    class Lr(Callback):
        def on_step(self, step, metrics):
            lrs.append(metrics["lr"])

    trainer.callbacks.append(Lr())
    result = trainer.fit()
    assert result.nan_events == 1
    assert lrs[0] == pytest.approx(1e-2) and lrs[-1] == pytest.approx(5e-3)
    assert torch.isfinite(_flat(model)).all()


def test_nan_twice_restores_each_time():
    """The snapshot is copied in place every step: it must never alias the live state."""
    cfg = tiny_config(adam_steps=40, lr=1e-2)
    problem, model = build(cfg)

    class PoisonTwice(Callback):
        def on_step(self, step, metrics):
            if step in (10, 25):
                with torch.no_grad():
                    for p in model.parameters():
                        p.fill_(float("nan"))

    result = Trainer(model, problem, cfg.train, [PoisonTwice()]).fit()
    assert result.nan_events == 2
    assert torch.isfinite(_flat(model)).all() and math.isfinite(result.loss)


def test_copy_into_reuses_buffers_without_aliasing():
    from cpikan.train.checkpoint import copy_into

    src = {"a": torch.ones(3), "b": [torch.zeros(2), 4], "c": {"d": torch.arange(2.0)}}
    first = copy_into(None, src)
    buf = first["a"]
    src["a"].add_(1)
    assert torch.equal(first["a"], torch.ones(3))  # a copy, not a view of src
    second = copy_into(first, src)
    assert second["a"] is buf and torch.equal(buf, torch.full((3,), 2.0))
    assert second["b"][1] == 4 and torch.equal(second["c"]["d"], src["c"]["d"])


RESUME_SCRIPT = """
import json, sys, torch
from cpikan.experiment import PINNConfig, build
from cpikan.train import Trainer
torch.set_num_threads(1)
phase, root = sys.argv[1], sys.argv[2]
for i, (cfg_json, split) in enumerate(json.loads(sys.argv[3])):
    cfg = PINNConfig.from_dict(json.loads(cfg_json))
    problem, model = build(cfg)
    trainer = Trainer(model, problem, cfg.train)
    ckpt = f"{root}/ckpt{i}.pt"
    if phase == "first":
        trainer.fit(until=split)
        trainer.save_checkpoint(ckpt)
    else:
        trainer.fit(resume=ckpt)
    torch.save(model.state_dict(), ckpt + "." + phase)
"""

RESUME_CASES = [
    ({"adam_steps": 20}, 10),  # stop in Adam
    ({"adam_steps": 20, "lbfgs_steps": 10}, 20),  # stop at the start of L-BFGS
    ({"adam_steps": 10, "lbfgs_steps": 10, "lm_steps": 15}, 15),  # stop in L-BFGS, LM follows
    ({"adam_steps": 10, "lbfgs_steps": 10, "lm_steps": 15}, 28),  # stop in LM
]


def test_resume_in_new_process_equals_uninterrupted(tmp_path):
    """2N steps == N steps, checkpoint, N more in a fresh process (bit-identical on CPU).

    All cases share one process per half: a process start costs more than the training.
    """
    cases, expected = [], []
    for phases, split in RESUME_CASES:
        cfg = tiny_config(lr=1e-2, scheduler="cosine", lbfgs_chunk=5, rar_every=7, rar_points=10,
                          rar_candidates=200, **phases)
        cfg_json = json.dumps(asdict(cfg))
        problem, model = build(PINNConfig.from_dict(json.loads(cfg_json)))
        Trainer(model, problem, cfg.train).fit()
        cases.append((cfg_json, split))
        expected.append(model.state_dict())
    for phase in ("first", "second"):
        subprocess.run([sys.executable, "-c", RESUME_SCRIPT, phase, str(tmp_path), json.dumps(cases)], check=True)
    for i, (case, state) in enumerate(zip(RESUME_CASES, expected)):
        half = torch.load(tmp_path / f"ckpt{i}.pt.first")
        resumed = torch.load(tmp_path / f"ckpt{i}.pt.second")
        assert not all(torch.equal(half[k], resumed[k]) for k in half), case  # the second half trained
        for k, v in state.items():
            assert torch.equal(v, resumed[k]), (case, k)


@pytest.mark.parametrize("name", [s for s in SCHEDULERS if s != "none"])
def test_each_scheduler_changes_the_learning_rate(name):
    hist = History()
    lr = 1e-7 if name == "plateau" else 1e-2  # a plateau needs a loss that stops improving
    run_pinn(tiny_config(adam_steps=40, lr=lr, scheduler=name, plateau_patience=2,
                         plateau_factor=0.5), [hist])
    lrs = [m["lr"] for _, m in hist.steps]
    assert lrs[0] == pytest.approx(lr, rel=0.2)
    assert lrs[-1] < 0.9 * lr, f"{name} did not lower the learning rate"


@pytest.mark.parametrize("init", ["kaiming", "xavier", "orthogonal", "small_random"])
def test_each_init_trains_and_differs(init):
    cfg = tiny_config(adam_steps=5)
    cfg.model.init = init
    result, model, _ = run_pinn(cfg)
    assert math.isfinite(result.loss)
    std = float(model.layers[0].coeffs.detach().std())
    expected = {"small_random": (0.003, 0.008), "xavier": (0.1, 0.5), "kaiming": (0.2, 0.9),
                "orthogonal": (0.1, 0.5)}[init]
    assert expected[0] < std < expected[1], (init, std)


def test_orthogonal_init_rows_are_orthonormal():
    cfg = tiny_config(adam_steps=0)
    cfg.model.init = "orthogonal"
    _, model = build(cfg)
    w = model.layers[1].coeffs.detach().flatten(1)
    assert torch.allclose(w @ w.T, torch.eye(w.shape[0], dtype=w.dtype), atol=1e-10)


@pytest.mark.parametrize("balancing", ["fixed", "gradnorm", "lra", "config"])
def test_balancing_strategies(balancing):
    hist = History()
    run_pinn(tiny_config(adam_steps=25, lr=1e-2, balancing=balancing, balance_every=5,
                         loss_weights={"pde": 1.0, "bc": 1.0, "ic": 1.0}), [hist])
    first, last = hist.steps[0][1], hist.steps[-1][1]
    changed = any(abs(first[f"weight_{k}"] - last[f"weight_{k}"]) > 1e-6 for k in ("bc", "ic"))
    assert changed == (balancing != "fixed")
    if balancing == "gradnorm":
        total = sum(last[f"weight_{k}"] for k in ("pde", "bc", "ic"))
        assert total == pytest.approx(3.0)


def test_early_stopping_ends_the_phase():
    cfg = tiny_config(adam_steps=500, lr=1e-9, early_stop_patience=5, early_stop_min_delta=1.0)
    result, _, _ = run_pinn(cfg)
    assert result.stopped_early and result.steps < 20


def test_accumulation_matches_full_batch_gradient():
    """Two equal micro-batches accumulate to the full-batch gradient of a mean loss."""
    cfg = tiny_config(adam_steps=0)
    problem, model = build(cfg)
    batch = problem.sample(torch.Generator().manual_seed(0)).to(torch.float64)
    full = sum(problem.loss_terms(model, batch).values())
    g_full = torch.autograd.grad(full, list(model.parameters()))
    acc = [torch.zeros_like(p) for p in model.parameters()]
    for mb in batch.split(2):
        part = sum(problem.loss_terms(model, mb).values()) / 2
        for a, g in zip(acc, torch.autograd.grad(part, list(model.parameters()))):
            a += g
    for a, g in zip(acc, g_full):
        assert torch.allclose(a, g, rtol=1e-10, atol=1e-12)


def test_accumulation_bf16_and_checkpointing_run():
    hist = History()
    cfg = tiny_config(adam_steps=10, lr=1e-2, accumulation_steps=2, amp="bf16",
                      checkpoint_activations=True, clip_grad_norm=1.0)
    cfg.model.dtype = "float32"
    result, _, _ = run_pinn(cfg, [hist])
    assert math.isfinite(result.loss)
    assert all(m["grad_norm"] > 0 for _, m in hist.steps)


def test_fp16_on_cpu_is_refused():
    cfg = tiny_config(amp="fp16")
    problem, model = build(cfg)
    with pytest.raises(ValueError, match="amp"):
        Trainer(model, problem, cfg.train)


def test_inverse_problem_parameters_train():
    cfg = tiny_config("reaction_diffusion_inverse", adam_steps=10, lr=1e-2)
    result, _, problem = run_pinn(cfg)
    assert result.metrics["D"] != pytest.approx(0.05)
    assert {"D_rel_err", "kappa_rel_err"} <= set(result.metrics)


_KEEP_FREED = """
import sys, torch
from cpikan.memory import keep_freed_memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

keep = sys.argv[1] == "1"
if keep:
    assert keep_freed_memory()
torch.ones(1000, dtype=torch.float64).sum()  # first op: lazy loading off the measurement
before = rss_mb()
x = torch.ones(3_000_000, dtype=torch.float64)  # 24 MB, touched
del x
print(rss_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_keep_freed_memory_keeps_step_sized_blocks():
    """Without the tuning glibc unmaps a freed 24 MB tensor (page faults again next step)."""
    def kept(flag: str) -> float:
        out = subprocess.run([sys.executable, "-c", _KEEP_FREED, flag], check=True,
                             capture_output=True, text=True)
        return float(out.stdout)
    assert kept("0") < 5
    assert kept("1") > 20


_PEAK_AFTER_TRAINING = """
import sys, torch
from cpikan.memory import keep_freed_memory, peak_rss_mb, reset_peak_rss
assert keep_freed_memory()  # as a training loop leaves the process
blocks = [torch.ones(1_000_000, dtype=torch.float64) for _ in range(12)]  # 96 MB in 8 MB blocks
del blocks
reset_peak_rss()
base = peak_rss_mb()
again = [torch.ones(1_000_000, dtype=torch.float64) for _ in range(6)]  # 48 MB, touched
print(peak_rss_mb() - base)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and glibc malloc")
def test_peak_after_training_counts_memory_the_heap_had_kept():
    """Blocks a training loop freed but kept resident must not hide a later stretch's peak
    (the tiling sweep's first trial once measured 0 MB this way)."""
    out = subprocess.run([sys.executable, "-c", _PEAK_AFTER_TRAINING], check=True,
                         capture_output=True, text=True)
    assert 40 < float(out.stdout) < 80


def test_lbfgs_lands_on_scheduled_steps_and_resamples():
    """L-BFGS chunks stop exactly at evaluation and resampling steps, and resampling in the
    L-BFGS phase replaces the interior points (with a fresh optimiser)."""
    hist = History()
    cfg = tiny_config(adam_steps=3, lbfgs_steps=40, lbfgs_chunk=7, eval_every=10, resample_every=15)
    problem, model = build(cfg)
    trainer = Trainer(model, problem, cfg.train, [hist])
    before = trainer.batch.interior.clone()
    trainer.fit()
    assert [s for s, _ in hist.evals] == [10, 20, 30, 40, 43]  # the last: fit's final evaluation
    assert not torch.equal(before, trainer.batch.interior)
    assert trainer.batch.interior.shape == before.shape


def test_config_update_decreases_every_term_by_equal_projections():
    """ConFIG's combined gradient has the same, positive, projection on every term's unit
    gradient, including when the raw terms conflict (the plain sum would raise one)."""
    from cpikan.losses import ConFIG, _flat_grad

    cfg = tiny_config(adam_steps=0)
    problem, model = build(cfg)
    batch = problem.sample(torch.Generator().manual_seed(0)).to(torch.float64)
    params = list(model.parameters())
    terms = problem.loss_terms(model, batch)
    grads = {k: _flat_grad(v, params) for k, v in terms.items()}
    # a planted conflict: a term whose gradient opposes the sum of the others (plus a part of
    # its own, so the gradients stay independent: with P ≫ terms they generically are)
    others = sum(grads.values())
    terms["anti"] = -0.5 * sum(terms.values()) + 1e-3 * sum(p.square().sum() for p in params)
    grads["anti"] = _flat_grad(terms["anti"], params)
    assert float(grads["anti"] @ others) < 0
    bal = ConFIG()
    bal.maybe_update(0, terms, params)
    g = sum(bal.weight(k) * grads[k] for k in terms)
    proj = torch.stack([g @ grads[k] / grads[k].norm() for k in terms])
    assert (proj > 0).all() and torch.allclose(proj, proj.mean().expand_as(proj), rtol=1e-6)


def test_config_hands_lbfgs_and_lm_the_configured_weights():
    hist = History()
    weights = {"pde": 1.0, "bc": 2.0, "ic": 1.0}
    result, _, _ = run_pinn(tiny_config(adam_steps=10, lr=1e-2, lm_steps=3, balancing="config",
                                        loss_weights=weights), [hist])
    adam, lm = hist.steps[5][1], hist.steps[-1][1]
    assert any(abs(adam[f"weight_{k}"] - w) > 1e-9 for k, w in weights.items())  # a direction while Adam ran
    assert {k: lm[f"weight_{k}"] for k in weights} == weights and math.isfinite(result.loss)
