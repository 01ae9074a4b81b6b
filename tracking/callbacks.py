"""The bridge from the solver core's :class:`~cpikan.train.callbacks.Callback` hooks to a
run: per-step metrics (only when they change), evaluations, the convergence figure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cpikan.train.callbacks import Callback

if TYPE_CHECKING:
    from tracking.tracker import Tracker


class MetricsCallback(Callback):
    """Bridges the trainer's per-step metrics (and evaluations) to a :class:`Tracker`."""

    def __init__(self, run: Tracker, prefix: str = "") -> None:
        self.run, self.prefix = run, prefix
        self.last: dict[str, tuple[float, int]] = {}  # key -> (value, step) last logged
        self.step = 0

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """Log the values that changed since the key was last logged.

        Fixed loss weights and a zero NaN count would otherwise be a third of every
        step's rows, and writing rows is what tracking costs (≈ 0.2 ms each in SQLite).
        """
        self.step = step
        changed = {k: v for k, v in metrics.items() if self.last.get(k, (None,))[0] != v}
        self.last.update((k, (v, step)) for k, v in changed.items())
        self.run.log_metrics(changed, step, prefix=self.prefix)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log_metrics(metrics, step, prefix=self.prefix + "eval_")

    def on_train_end(self, result: Any) -> None:
        """Close constant series at the last step, attach the residual-convergence figure."""
        tail = {k: v for k, (v, s) in self.last.items() if s != self.step}
        if tail:
            self.run.log_metrics(tail, self.step, prefix=self.prefix)
        losses = getattr(result, "losses", None)
        if losses:
            self.run.log_figure(convergence_figure(losses), f"figures/{self.prefix}convergence.html")


def convergence_figure(losses: list[float], title: str = "training") -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(y=losses, mode="lines", name="loss"))
    fig.update_layout(title=f"{title}: residual convergence", xaxis_title="step", yaxis_title="loss",
                      yaxis_type="log", template="plotly_white")
    return fig


