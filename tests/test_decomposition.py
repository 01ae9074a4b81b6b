"""Domain decomposition: the distributed steps are the joint problem's steps, exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cpikan.decomposition import XPINN, XPINNConfig
from cpikan.distributed import Shard
from cpikan.pde import make_problem

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden=(4,), degree=4, n_interface=10, adam_steps=0, lm_steps=0)


def _problem(**kw):
    return make_problem("helmholtz2d", n_interior=300, n_boundary=80, **kw)


def _dense(x: XPINN):
    """The joint residual vector and Jacobian, assembled densely (what one big LM would see)."""
    with torch.no_grad():
        lin = {s.index: x._linearize(s) for s in x.strips}
        table, _ = x._all_faces(grad=False)
        rB = x._gaps(table)
    sizes = [sum(p.numel() for p in s.params) for s in x.strips]
    offs = [sum(sizes[:i]) for i in range(len(sizes))]
    blocks, res = [], []
    B = torch.zeros(x.k, sum(sizes), dtype=torch.float64)
    for s, off, n in zip(x.strips, offs, sizes):
        r, J, Bs, rows = lin[s.index]
        full = torch.zeros(len(r), sum(sizes), dtype=torch.float64)
        full[:, off : off + n] = J
        blocks.append(full)
        res.append(r)
        B[rows, off : off + n] = Bs
    return torch.cat([*res, rB]), torch.cat([*blocks, B]), lin


def test_points_are_partitioned_and_exact_faces_carry_no_bc_term():
    x = XPINN(_problem(), XPINNConfig(parts=3, **TINY))
    assert sum(len(s.terms["pde"]) for s in x.strips) == 300
    assert all("bc" not in s.terms for s in x.strips)  # every helmholtz2d face is imposed exactly
    assert [sorted(s.faces) for s in x.strips] == [[1], [0, 1], [0]]
    # the outer strips vanish on their outer face, the middle one does not
    edge = torch.tensor([[-1.0, 0.3], [1.0, 0.3]], dtype=torch.float64)
    with torch.no_grad():
        assert float(x.strips[0].model(edge[:1])[0, 0]) == 0.0
        assert float(x.strips[2].model(edge[1:])[0, 0]) == 0.0


def test_woodbury_step_is_the_joint_levenberg_marquardt_step():
    x = XPINN(_problem(), XPINNConfig(parts=3, **TINY))
    r, J, lin = _dense(x)
    assert abs(float(r.square().sum()) - x.loss()) < 1e-12 * x.loss()
    pre = {}
    for s in x.strips:
        rs, Js, Bs, rows = lin[s.index]
        H = Js.T @ Js
        pre[s.index] = (Js.T @ rs + Bs.T @ r[len(r) - x.k :][rows], H,
                        H.diagonal() + Bs.square().sum(0))
    mu = 1e-2
    delta, predicted = x._solve(lin, pre, mu)
    d = torch.cat([delta[s.index] for s in x.strips])
    D = torch.cat([pre[s.index][2] for s in x.strips])
    ref = -torch.linalg.solve(J.T @ J + mu * torch.diag(D), J.T @ r)
    assert float((d - ref).norm() / ref.norm()) < 1e-9
    jd = J @ ref
    assert predicted == pytest.approx(float(-(2 * r @ jd + jd @ jd)), rel=1e-9)


def test_adam_gradient_is_the_joint_loss_gradient():
    x = XPINN(_problem(), XPINNConfig(parts=3, **TINY))
    params = [p for s in x.strips for p in s.params]
    opt = torch.optim.SGD(params, lr=0.0)
    x._adam_step(opt)  # zero lr: only the gradients are filled
    got = torch.cat([p.grad.reshape(-1) for p in params])
    # the joint loss with every strip's graph alive: own terms plus the gaps, rebuilt here
    faces = {s.index: s.face_values(grad=True) for s in x.strips}
    scale = torch.tensor([x.gap_scale["interface"], x.gap_scale["flux"]], dtype=torch.float64)[:, None]
    loss = sum(x._own_loss(s) for s in x.strips)
    for e in range(2):
        loss = loss + ((faces[e][1] - faces[e + 1][0]) * scale).square().sum()
    want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    assert float((got - want).norm() / want.norm()) < 1e-12


def test_training_lowers_the_loss_and_the_interface_gap():
    x = XPINN(_problem(a2=1.0), XPINNConfig(parts=2, hidden=(6,), degree=6, n_interface=20,
                                             adam_steps=50, lm_steps=60))
    before = x.loss()
    out = x.fit()
    assert out["loss"] < 1e-6 * before
    assert out["interface_max_gap"] < 2e-3
    assert out["rel_l2"] < 5e-3


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="axis"):
        XPINN(_problem(), XPINNConfig(axis=2, **TINY))
    with pytest.raises(ValueError, match="parts"):
        XPINN(_problem(), XPINNConfig(parts=3, **TINY), Shard(0, 2))
    with pytest.raises(ValueError, match="parts"):
        XPINNConfig(parts=1)
    cfg = XPINNConfig(parts=4, **TINY)
    assert XPINNConfig(**json.loads(cfg.to_json())) == cfg


SCRIPT = """
import json, os, sys, torch
from cpikan import distributed
from cpikan.decomposition import XPINN, XPINNConfig
from cpikan.pde import make_problem
shard = distributed.init_from_env()
cfg = XPINNConfig(parts=2, hidden=(5,), degree=5, n_interface=12, adam_steps=30, lm_steps=15)
out = XPINN(make_problem("helmholtz2d", n_interior=300, n_boundary=80), cfg, shard).fit()
if shard.leader:
    json.dump(out, open(sys.argv[1], "w"))
distributed.finish()
threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
open(f"{sys.argv[1]}.threads{shard.rank}", "w").write(" ".join(threads))
"""


def test_two_processes_under_torchrun_train_what_one_process_trains(tmp_path):
    script = tmp_path / "xp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    results = []
    for n in (1, 2):
        out = tmp_path / f"out{n}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
               str(script), str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        assert res.returncode == 0, res.stderr[:6000]
        results.append(json.loads(out.read_text()))
        for rank in range(n):
            # gloo's worker threads must end with the group, or one that drops its last
            # collective while the interpreter exits aborts the rank (a flaky SIGABRT)
            threads = (tmp_path / f"out{n}.json.threads{rank}").read_text()
            assert "gloo" not in threads, threads
    one, two = results
    for k in ("loss", "rel_l2", "interface_max_gap"):
        assert two[k] == pytest.approx(one[k], rel=1e-8), k
