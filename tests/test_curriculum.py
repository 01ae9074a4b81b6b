"""The multi-resolution curriculum: its schedule, its patch sizes, weights carried across levels."""

import json

import pytest
import torch

from cpikan.config import ConfigError
from cpikan.psi.curriculum import CurriculumConfig, level_patch, train_levels
from cpikan.psi.data import open_memmap_dataset
from cpikan.psi.model import PSINet
from cpikan.psi.synth import WaferSpec, write_dataset
from cpikan.psi.train import PSITask, PSITrainSpec
from cpikan.train import Callback, TrainConfig


@pytest.mark.parametrize("factors, steps, field", [
    ((2, 4, 1), (1, 1, 1), "factors"), ((4, 2), (1, 1), "factors"), ((4, 1), (1,), "steps"),
    ((4, 1), (5, 0), "steps"),
])
def test_bad_schedules_name_the_field(factors, steps, field):
    with pytest.raises(ConfigError) as e:
        CurriculumConfig(factors, steps)
    assert e.value.field == field


def test_schedule_round_trips_and_patches_stay_on_the_stride_grid():
    cfg = CurriculumConfig((8, 2, 1), (3, 2, 1))
    assert CurriculumConfig(**json.loads(cfg.to_json())) == cfg
    assert [level_patch(64, f, 8) for f in cfg.factors] == [8, 32, 64]
    assert level_patch(64, 16, 8) == 8 and level_patch(60, 1, 8) == 56


class Steps(Callback):
    def __init__(self):
        self.steps, self.ends = [], 0

    def on_step(self, step, metrics):
        self.steps.append(step)

    def on_train_end(self, result):
        self.ends += 1


def test_weights_carry_from_level_to_level(tmp_path):
    data = {}
    for f in (2, 1):
        d = write_dataset(WaferSpec(64 // f, 64 // f, seed=3), tmp_path / str(f), progress=False)
        data[f] = open_memmap_dataset(d)
    val = open_memmap_dataset(write_dataset(WaferSpec(32, 32, seed=4), tmp_path / "val", progress=False))
    torch.manual_seed(0)
    model = PSINet(width=4, depth=2)
    factor = model.downsampling_factor
    tasks = [PSITask(*data[f], PSITrainSpec(loss="both", patch=level_patch(16, f, factor), batch_size=2,
                                            eval_size=32), val) for f in (2, 1)]
    head = model.unet.head.weight.detach().clone()
    counter = Steps()
    cfg = CurriculumConfig((2, 1), (4, 3))
    result = train_levels(model, tasks, cfg, TrainConfig(adam_steps=1, lr=1e-2), [counter])
    assert counter.steps == list(range(1, 8)) and counter.ends == 1  # one run to the callbacks
    assert result.steps == 3  # the last level's own count
    assert not torch.equal(model.unet.head.weight, head)  # zero-initialised head has learned
    # the coarse level alone moves the weights the full level then starts from
    torch.manual_seed(0)
    other = PSINet(width=4, depth=2)
    train_levels(other, tasks[1:], CurriculumConfig((1,), (3,)), TrainConfig(adam_steps=1, lr=1e-2))
    assert not torch.equal(model.unet.head.weight, other.unet.head.weight)
    with pytest.raises(ValueError, match="tasks"):
        train_levels(model, tasks[:1], cfg, TrainConfig(adam_steps=1))


def test_the_pretrain_study_names_its_curriculum_fields_and_skips_empty_levels():
    from studies.psi_pretrain import PSIPretrainConfig

    with pytest.raises(ConfigError) as e:
        PSIPretrainConfig(curriculum_factors=(2, 4))
    assert e.value.field == "curriculum_factors"
    with pytest.raises(ConfigError) as e:
        PSIPretrainConfig(curriculum_steps=(5,))
    assert e.value.field == "curriculum_steps"
    assert PSIPretrainConfig(curriculum_steps=(0, 5)).schedule() == CurriculumConfig((2, 1), (5, 300))
    assert PSIPretrainConfig(curriculum_factors=(), curriculum_steps=()).schedule().factors == (1,)
