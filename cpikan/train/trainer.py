"""The PINN trainer: Adam, then L-BFGS, then Levenberg–Marquardt, with the robustness a
long study needs.

One ``Trainer`` trains one model on one problem. It is deterministic on CPU for a given
seed (a private generator draws every collocation point), can checkpoint and resume
bit-for-bit, survives NaN/Inf steps, and reports through :class:`Callback` hooks only.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cpikan import sampling
from cpikan.losses import make_balancer
from cpikan.memory import keep_freed_memory
from cpikan.pde.base import Collocation, Problem, like, misfit
from cpikan.train.callbacks import Callback
from cpikan.train.checkpoint import Checkpointing, copy_into
from cpikan.train.config import TrainConfig
from cpikan.train.lm import MAX_PARAMETERS, LevenbergMarquardt, ResidualJacobian
from cpikan.train.schedulers import make_scheduler, scale_lr, step_scheduler


@dataclass
class TrainResult:
    steps: int
    loss: float
    metrics: dict[str, float]
    nan_events: int
    stopped_early: bool
    seconds: float
    losses: list[float] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG (model init, dropout); sampling has its own generator."""
    torch.manual_seed(seed)


#: the phases in order, each with the TrainConfig field holding its step count; one loop
#: in :meth:`Trainer.fit` runs them, calling ``_<phase>_step`` until the phase ends
PHASES = (("adam", "adam_steps"), ("lbfgs", "lbfgs_steps"), ("lm", "lm_steps"), ("done", ""))


class Trainer(Checkpointing):
    """Trains one model on one problem through the phases of :data:`PHASES`.

    Args:
        model: the network (a :class:`~cpikan.nn.ScaledModel` for PDEs, any module for data tasks).
        problem: supplies collocation points, loss terms and the evaluation (cpikan.pde).
        config: every optimisation knob; its canonical JSON is checked on resume.
        callbacks: receive per-step metrics, evaluations and checkpoints (tracking hooks in here).
        device: where to train; ``amp="fp16"`` needs CUDA.
        checkpoint_path: where ``checkpoint_every`` writes (atomically).
    """

    def __init__(
        self,
        model: nn.Module,
        problem: Problem,
        config: TrainConfig,
        callbacks: Sequence[Callback] = (),
        *,
        device: str | torch.device = "cpu",
        checkpoint_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.cfg = config
        self.device = torch.device(device)
        if self.device.type == "cpu":
            keep_freed_memory()  # a step re-allocates the same jets: no page faults each time
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp: 'fp16' needs a CUDA device; on CPU use 'bf16' or 'none'")
        self.model = model.to(self.device)
        self.problem = problem.to(self.device)
        self.callbacks = list(callbacks)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        if hasattr(model, "checkpointing"):
            model.checkpointing = config.checkpoint_activations
        self.dtype = next(model.parameters()).dtype
        self.params = [p for p in [*model.parameters(), *problem.parameters()] if p.requires_grad]
        self.gen = torch.Generator().manual_seed(config.seed)
        self.batch = problem.sample(self.gen).to(self.dtype, self.device)
        self._weigh_volumes()
        # the augmented Lagrangian moves the targets of the misfit terms (u(x) − v) away from v
        self._al_values: dict[str, Tensor] = {}
        if config.al_every and isinstance(self.batch, Collocation):
            misfits = [k for k, t in problem.terms(self.batch).items() if t.fn is misfit]
            self._al_values = {k: self.batch.conditions[k][1].clone() for k in misfits
                               if k in self.batch.conditions}
        self.balancer = make_balancer(config.balancing, config.loss_weights, config.balance_every)
        self.opt: torch.optim.Optimizer = torch.optim.Adam(self.params, lr=config.lr)
        self.sched = make_scheduler(self.opt, config)
        use_scaler = config.amp == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.phase = "adam"
        self.step = 0
        self.nan_events = 0
        self.best, self.wait = math.inf, 0
        self.stopped_early = False
        self.losses: list[float] = []
        self._good: dict[str, Any] | None = None
        self.until: int | None = None
        #: the step at which each phase ends (set when it begins; Adam's is fixed)
        self.end = {"adam": config.adam_steps, "lbfgs": config.adam_steps + config.lbfgs_steps,
                    "lm": config.adam_steps + config.lbfgs_steps + config.lm_steps}
        self._jacobian: ResidualJacobian | None = None
        if config.lm_steps:
            self._check_lm()

    # ------------------------------------------------------------------ public API
    def fit(
        self, resume: str | os.PathLike[str] | None = None, until: int | None = None
    ) -> TrainResult:
        """Train to the end.

        Args:
            resume: a checkpoint to continue from (bit-for-bit the same as not stopping).
            until: stop at this step (to checkpoint and resume later).
        """
        if resume is not None:
            self.load_checkpoint(resume)
        self.until = until
        t0 = time.perf_counter()
        for cb in self.callbacks:
            cb.on_train_begin(self)
        self._snapshot()
        while self.phase != "done" and not self._paused():
            step_once = getattr(self, f"_{self.phase}_step")
            while self.step < self.end[self.phase] and not self._early_stop() and not self._paused():
                if not step_once():  # converged: this optimiser will not move any more
                    break
            if not self._paused():
                self._next_phase()
        metrics = self.evaluate()
        last = self.losses[-1] if self.losses else math.nan
        result = TrainResult(self.step, last, metrics, self.nan_events, self.stopped_early,
                             time.perf_counter() - t0, list(self.losses))
        for cb in self.callbacks:
            cb.on_train_end(result)
        return result

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        metrics = self.problem.evaluate(self.model)
        self.model.train()
        for cb in self.callbacks:
            cb.on_eval(self.step, metrics)
        return metrics

    # ------------------------------------------------------------------ Adam phase
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.cfg.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _next_phase(self) -> None:
        """Begin the next phase that has steps (each ends ``steps`` after it begins: an
        earlier phase may have stopped early), or finish."""
        order = [name for name, _ in PHASES]
        for name, steps_field in PHASES[order.index(self.phase) + 1:]:
            steps = getattr(self.cfg, steps_field) if steps_field else 0
            if name == "done" or steps:
                self.phase = name
                if name != "done":
                    self.balancer.freeze()
                    self.end[name] = self.step + steps
                    self.opt = self._make_optimizer(name)
                    self.best, self.wait = math.inf, 0
                    self._snapshot()
                return

    def _make_optimizer(self, phase: str) -> torch.optim.Optimizer:
        if phase == "lbfgs":
            return self._make_lbfgs(self.cfg.lbfgs_lr)
        if phase == "lm":
            return LevenbergMarquardt(self.params, self.cfg.lm_damping, solver=self.cfg.lm_solver)
        return torch.optim.Adam(self.params, lr=self.cfg.lr)

    def _finite(self, loss: float) -> bool:
        return math.isfinite(loss) and all(bool(torch.isfinite(p).all()) for p in self.params)

    # ------------------------------------------------------------------ Adam phase
    def _adam_step(self) -> bool:
        """One Adam step (on a new batch for a streaming data task); always goes on."""
        if getattr(self.problem, "streaming", False) and self.step:
            self.batch = self.problem.next_batch().to(self.dtype, self.device)
        self._adapt_points()
        metrics = self._adam_update()
        self.step += 1
        if metrics is not None:
            self._after_step(metrics)
        return True

    def _adam_update(self) -> dict[str, float] | None:
        cfg = self.cfg
        self.opt.zero_grad(set_to_none=True)
        micro = self.batch.split(cfg.accumulation_steps) if cfg.accumulation_steps > 1 else [self.batch]
        sums: dict[str, float] = {}
        total = 0.0
        for i, mb in enumerate(micro):
            with self._autocast():
                terms = self.problem.loss_terms(self.model, mb)
            terms = {k: v.float() if v.dtype in (torch.bfloat16, torch.float16) else v
                     for k, v in terms.items()}
            if i == 0:
                self.balancer.maybe_update(self.step, terms, self.params)
            loss = self.balancer.combine(terms) / len(micro)
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / len(micro)
        self.scaler.unscale_(self.opt)
        grads = [p.grad for p in self.params if p.grad is not None]
        if cfg.clip_grad_norm is not None:
            gnorm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad_norm))
        else:
            gnorm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        bad = not math.isfinite(total) or (not math.isfinite(gnorm) and cfg.amp != "fp16")
        if cfg.nan_guard and bad:
            self._recover()
            return None
        self.scaler.step(self.opt)
        self.scaler.update()
        if cfg.nan_guard and not self._finite(total):
            self._recover()
            return None
        step_scheduler(self.sched, total)
        return self._metrics(total, sums, gnorm)

    def _metrics(self, total: float, terms: dict[str, float], gnorm: float) -> dict[str, float]:
        group = self.opt.param_groups[0]
        rate = {"damping": group["damping"]} if "damping" in group else {"lr": group["lr"]}
        m = {"loss": total, **rate, "grad_norm": gnorm, "nan_events": float(self.nan_events)}
        for k, v in terms.items():
            m[f"loss_{k}"] = v
            m[f"weight_{k}"] = self.balancer.weight(k)
        return m

    def _after_step(self, metrics: dict[str, float]) -> None:
        cfg = self.cfg
        loss = metrics["loss"]
        self.losses.append(loss)
        if loss < self.best - cfg.early_stop_min_delta:
            self.best, self.wait = loss, 0
        else:
            self.wait += 1
        if self.step % cfg.nan_snapshot_every == 0:
            self._snapshot()
        for cb in self.callbacks:
            cb.on_step(self.step, metrics)
        if cfg.al_every and self.step % cfg.al_every == 0:
            self._shift_targets()
        if cfg.eval_every and self.step % cfg.eval_every == 0:
            self.evaluate()
        if cfg.checkpoint_every and self.checkpoint_path and self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint(self.checkpoint_path)

    def _paused(self) -> bool:
        return self.until is not None and self.step >= self.until

    def _early_stop(self) -> bool:
        p = self.cfg.early_stop_patience
        if p and self.wait >= p:
            self.stopped_early = True
            return True
        return False

    def _adapt_points(self) -> bool:
        """Resample the interior, or add residual-adaptive points (RAR-D), on schedule.
        Returns whether the points changed."""
        cfg, s = self.cfg, self.step
        changed = False
        if cfg.resample_every and s and s % cfg.resample_every == 0:
            new = self.problem.sample_interior(self.problem.n_interior, self.gen)
            self.batch.interior = new.to(self.device, self.dtype)
            changed = True
        if cfg.rar_every and s and s % cfg.rar_every == 0:
            cands = self.problem.sample_interior(cfg.rar_candidates, self.gen)
            cands = cands.to(self.device, self.dtype)

            def residual(x: Tensor) -> Tensor:
                with torch.no_grad():
                    r = self.problem.residual(self.model.derivatives(x), x)
                return r if r.ndim == 1 else r.norm(dim=1)  # a system: its equations' residual per point

            new = sampling.rar_d(cands, residual, cfg.rar_points, self.gen, cfg.rar_k, cfg.rar_c)
            self.batch.interior = torch.cat([self.batch.interior, new])
            changed = True
        if changed:
            self._weigh_volumes()
        return changed

    @torch.no_grad()
    def _shift_targets(self) -> None:
        """Augmented Lagrangian update: each condition's target t ← t − (u(x) − v)."""
        for k, value in self._al_values.items():
            pts, target = self.batch.conditions[k]
            violation = like(self.model(pts), value).to(target.dtype) - value
            self.batch.conditions[k] = (pts, target - violation)

    def _weigh_volumes(self) -> None:
        if self.cfg.volume_weights and isinstance(self.batch, Collocation):
            self.batch.weight = sampling.volume_weights(self.batch.interior)

    # ------------------------------------------------------------------ NaN guard
    def _snapshot(self) -> None:
        """Keep the current state for the NaN guard; copies into the previous snapshot's
        tensors in place (a deepcopy every step cost ~10 % of a small model's step)."""
        state = {"model": self.model.state_dict(), "problem": self.problem.state_dict(),
                 "optimizer": self.opt.state_dict()}
        self._good = copy_into(self._good, state)

    def _recover(self) -> None:
        """Skip the step, restore the last good state and lower the learning rate."""
        self.nan_events += 1
        self.opt.zero_grad(set_to_none=True)
        if self._good is not None:
            self.model.load_state_dict(self._good["model"])
            self.problem.load_state_dict(self._good["problem"])
            # a private copy: load_state_dict may keep the tensors it is given, and the
            # snapshot's tensors are overwritten in place by the next _snapshot
            self.opt.load_state_dict(copy.deepcopy(self._good["optimizer"]))
        scale_lr(self.opt, self.cfg.nan_lr_factor)
        if self._good is not None:  # keep the lowered lr if we must restore again
            self._good["optimizer"] = copy.deepcopy(self.opt.state_dict())

    # ------------------------------------------------------------------ L-BFGS phase
    def _make_lbfgs(self, lr: float) -> torch.optim.LBFGS:
        return torch.optim.LBFGS(
            self.params, lr=lr, max_iter=self.cfg.lbfgs_chunk, history_size=self.cfg.lbfgs_history,
            line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-15,
        )

    def _closure(self) -> Tensor:
        """Full batch, full precision (no autocast): L-BFGS's line search needs exact values."""
        self.opt.zero_grad(set_to_none=True)
        terms = self.problem.loss_terms(self.model, self.batch)
        loss = self.balancer.combine(terms)
        loss.backward()
        self._last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return loss

    def _lbfgs_chunk(self, end: int) -> int:
        """Iterations of the next L-BFGS call: at most ``lbfgs_chunk``, and stopping exactly
        at the next scheduled event (resampling, RAR, evaluation, checkpoint, ``until``)."""
        cfg = self.cfg
        stop = min(end, self.step + cfg.lbfgs_chunk)
        if self.until is not None:
            stop = min(stop, self.until)
        for every in (cfg.resample_every, cfg.rar_every, cfg.eval_every, cfg.checkpoint_every):
            if every:
                stop = min(stop, (self.step // every + 1) * every)
        return max(stop - self.step, 1)

    def _lbfgs_step(self) -> bool:
        """One L-BFGS call of up to ``lbfgs_chunk`` iterations; False once it stops moving."""
        end = self.end["lbfgs"]
        if self._adapt_points():  # a new objective: old curvature pairs would mislead
            self.opt = self._make_lbfgs(self.opt.param_groups[0]["lr"])
        self.opt.param_groups[0]["max_iter"] = self._lbfgs_chunk(end)
        before = self.opt.state[self.params[0]].get("n_iter", 0)
        loss = float(self.opt.step(self._closure).detach())
        done = self.opt.state[self.params[0]].get("n_iter", 0) - before
        if self.cfg.nan_guard and not self._finite(loss):
            self._recover()
            self.opt = self._make_lbfgs(self.opt.param_groups[0]["lr"])
            self.step += 1
            return True
        self.step = min(end, self.step + max(done, 1))
        gnorm = float(torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None]))
        self._after_step(self._metrics(loss, self._last_terms, gnorm))
        return done > 0

    # ------------------------------------------------------------------ Levenberg–Marquardt phase
    def _check_lm(self) -> None:
        if not hasattr(self.problem, "terms"):
            raise ValueError(f"lm_steps: Levenberg–Marquardt needs pointwise residual terms (the PDE "
                             f"problems); {type(self.problem).__name__} has none: use lm_steps=0")
        self.problem.terms(self.batch)  # a problem whose loss is not a sum of squares says so now
        n = sum(p.numel() for p in self.params)
        if n > MAX_PARAMETERS:
            raise ValueError(f"lm_steps: Levenberg–Marquardt builds a dense {n} × {n} system; allowed "
                             f"up to {MAX_PARAMETERS} parameters: use L-BFGS (lm_steps=0)")

    def _lm_step(self) -> bool:
        """One LM iteration on the current points; returns whether the parameters moved
        (False: no damping lowers the loss, a (local) minimum)."""
        self._adapt_points()
        if self._jacobian is None:
            self._jacobian = ResidualJacobian(self.model, self.problem, self.params)
        jacobian = self._jacobian
        terms = self.problem.terms(self.batch)
        weights = {k: self.balancer.weight(k) for k in terms}
        parts: dict[str, float] = {}

        def loss_now() -> float:
            parts.update(jacobian.term_losses(terms))
            return sum(weights[k] * v for k, v in parts.items())

        out = self.opt.step(lambda: jacobian(terms, weights), loss_now)
        self.step += 1
        if self.cfg.nan_guard and not self._finite(out.loss):
            self._recover()
            return True
        if not out.moved:
            loss_now()  # the terms at the kept point (the last trial was rejected)
        self._after_step(self._metrics(out.loss, parts, out.grad_norm))
        return out.moved
