"""optim.py: schedule values against hand-computed ones, and one-line errors naming the key."""

from __future__ import annotations

import math

import paddle
import pytest

from offline_ssld.config.paddleclas import check_supported
from offline_ssld.errors import ConfigError
from offline_ssld.optim import build_optimizer, build_schedule, check_optimizer


def _values(sched, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(float(sched()))  # last_lr: get_lr() would advance a recursive schedule
        sched.step()
    return out


def test_cosine_with_warmup_matches_hand_computed_values():
    lr = {"name": "Cosine", "learning_rate": 0.1, "warmup_epoch": 1, "warmup_start_lr": 0.01}
    got = _values(build_schedule(lr, steps_per_epoch=10, epochs=3), 30)
    warm = [0.01 + (0.1 - 0.01) * s / 10 for s in range(10)]  # linear, 10 steps
    cosine = [0.1 * (1 + math.cos(math.pi * t / 20)) / 2 for t in range(20)]  # the other 20
    assert got == pytest.approx(warm + cosine, abs=1e-7)


def test_cosine_eta_min_is_the_floor():
    lr = {"name": "Cosine", "learning_rate": 0.2, "eta_min": 0.02}
    got = _values(build_schedule(lr, steps_per_epoch=4, epochs=2), 8)
    expected = [0.02 + 0.18 * (1 + math.cos(math.pi * t / 8)) / 2 for t in range(8)]
    assert got == pytest.approx(expected, abs=1e-7)


def test_piecewise_boundaries_count_from_the_end_of_warmup_as_in_paddleclas():
    """PaddleClas's Piecewise puts its boundaries at epoch * steps and wraps the schedule in
    LinearWarmup, which runs the inner schedule only after the warmup steps."""
    lr = {
        "name": "Piecewise",
        "decay_epochs": [1, 2],
        "values": [0.1, 0.01, 0.001],
        "warmup_epoch": 0.5,
    }
    got = _values(build_schedule(lr, steps_per_epoch=10, epochs=3), 30)
    expected = [0.1 * s / 5 for s in range(5)] + [0.1] * 10 + [0.01] * 10 + [0.001] * 5
    assert got == pytest.approx(expected, abs=1e-9)


def test_piecewise_learning_rate_means_tenfold_decay_every_30_epochs():
    lr = {"name": "Piecewise", "learning_rate": 0.5, "decay_epochs": [1], "values": [9.0, 9.0]}
    got = _values(build_schedule(lr, steps_per_epoch=1, epochs=70), 70)
    assert got == pytest.approx([0.5] * 30 + [0.05] * 30 + [0.005] * 10)
    short = _values(build_schedule(lr, steps_per_epoch=2, epochs=3), 6)
    assert short == pytest.approx([0.5] * 6)


def test_multistep_decay_with_warmup():
    lr = {
        "name": "MultiStepDecay",
        "learning_rate": 0.2,
        "milestones": [1, 2],
        "gamma": 0.5,
        "step_each_epoch": 1,
        "warmup_epoch": 1,
    }
    got = _values(build_schedule(lr, steps_per_epoch=4, epochs=4), 16)
    expected = [0.2 * s / 4 for s in range(4)] + [0.2] * 4 + [0.1] * 4 + [0.05] * 4
    assert got == pytest.approx(expected, abs=1e-9)


def test_weight_decay_is_l2_and_excludes_regularizer():
    from offline_ssld.optim import build_optimizer, check_optimizer

    cfg = {
        "Optimizer": {
            "name": "Momentum",
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "lr": {"name": "Cosine", "learning_rate": 0.1},
        }
    }
    optimizer, _ = build_optimizer(cfg, paddle.nn.Linear(2, 2).parameters(), 2, 2)
    assert optimizer._regularization_method == "l2_decay"
    assert optimizer._regularization_coeff == pytest.approx(1e-4)
    cfg["Optimizer"]["regularizer"] = {"name": "L2", "coeff": 1e-5}
    with pytest.raises(ConfigError, match="^Optimizer.weight_decay: "):
        check_optimizer(cfg)


def test_build_optimizer_momentum_and_l2():
    cfg = {
        "Optimizer": {
            "name": "Momentum",
            "momentum": 0.8,
            "lr": {"name": "Cosine", "learning_rate": 0.3},
            "regularizer": {"name": "L2", "coeff": 1e-4},
        }
    }
    layer = paddle.nn.Linear(2, 2)
    optimizer, sched = build_optimizer(cfg, layer.parameters(), steps_per_epoch=5, epochs=2)
    assert isinstance(optimizer, paddle.optimizer.Momentum)
    assert optimizer._momentum == pytest.approx(0.8)
    assert float(optimizer.get_lr()) == pytest.approx(0.3)
    assert optimizer._regularization_method == "l2_decay"  # Momentum folds L2 into its update
    assert optimizer._regularization_coeff == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("optimizer", "key"),
    [
        ({"name": "AdamW"}, "Optimizer.name"),
        ({"weight_decay": 0.1, "regularizer": {"name": "L2"}}, "Optimizer.weight_decay"),
        ({"no_weight_decay_name": "bn"}, "Optimizer.no_weight_decay_name"),
        ({"lr": {"name": "ReduceOnPlateau"}}, "Optimizer.lr.name"),
        ({"lr": {"name": "MultiStepDecay", "learning_rate": 0.1}}, "Optimizer.lr.milestones"),
        ({"lr": {"name": "Cosine", "milestones": [3]}}, "Optimizer.lr.milestones"),
        ({"lr": {"name": "Cosine", "by_epoch": True}}, "Optimizer.lr.by_epoch"),
        ({"lr": {"name": "Piecewise", "values": [0.1]}}, "Optimizer.lr.decay_epochs"),
        ({"regularizer": {"name": "L1"}}, "Optimizer.regularizer.name"),
        ({"regularizer": {"name": "L2", "factor": 1}}, "Optimizer.regularizer.factor"),
    ],
)
def test_errors_are_one_line_naming_the_key(optimizer, key):
    cfg = {"Optimizer": optimizer}
    with pytest.raises(ConfigError) as err:
        check_optimizer(cfg)
    message = str(err.value)
    assert message.startswith(f"{key}:") and "\n" not in message
    with pytest.raises(ConfigError, match=key):  # the same check builds and validates configs
        build_optimizer(cfg, paddle.nn.Linear(2, 2).parameters(), 1, 1)
    with pytest.raises(ConfigError, match=key):
        check_supported({"Arch": {"name": "ResNet18", "class_num": 2}, **cfg})
