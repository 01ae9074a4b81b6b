"""Small configs shared by the tests (fast on one CPU thread)."""

from cpikan.experiment import ModelConfig, PINNConfig
from cpikan.train import TrainConfig


def tiny_config(problem: str = "diffusion", **train: object) -> PINNConfig:
    kw = {"n_interior": 200, "n_boundary": 40, "n_initial": 40}
    if problem == "helmholtz1d":
        kw = {"n_interior": 100}
    train.setdefault("adam_steps", 20)
    return PINNConfig(problem, kw, ModelConfig(hidden=(6, 6), degree=4, dtype="float64"),
                      TrainConfig(**train))
