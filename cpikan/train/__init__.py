"""Training: config, schedulers, callbacks, the trainer."""

from cpikan.train.callbacks import Callback, History
from cpikan.train.config import AMP_MODES, SCHEDULERS, TrainConfig
from cpikan.train.trainer import Trainer, TrainResult, seed_everything

__all__ = ["AMP_MODES", "SCHEDULERS", "Callback", "History", "TrainConfig", "TrainResult",
           "Trainer", "seed_everything"]
