"""checkpoint.py: a round trip restores weights, optimizer state and lr schedule exactly."""

from __future__ import annotations

import json

import numpy as np
import paddle
import pytest

from offline_ssld.atomic import TMP_MARK
from offline_ssld.checkpoint import (
    has_checkpoint,
    keep_metrics_through,
    load_checkpoint,
    save_checkpoint,
)
from offline_ssld.errors import ConfigError
from offline_ssld.optim import build_optimizer

CFG = {
    "Optimizer": {
        "name": "Momentum",
        "momentum": 0.9,
        "lr": {"name": "Cosine", "learning_rate": 0.1, "warmup_epoch": 1},
        "regularizer": {"name": "L2", "coeff": 1e-4},
    }
}


def _model(seed: int) -> paddle.nn.Layer:
    paddle.seed(seed)
    return paddle.nn.Sequential(paddle.nn.Linear(4, 8), paddle.nn.BatchNorm1D(8))


def _trained(seed: int, steps: int):
    model = _model(seed)
    optimizer, sched = build_optimizer(CFG, model.parameters(), steps_per_epoch=3, epochs=4)
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((6, 4)).astype("float32"))
    for _ in range(steps):
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.clear_grad()
        sched.step()
    return model, optimizer, sched, x


def test_round_trip_restores_weights_optimizer_and_schedule(tmp_path):
    model, optimizer, sched, x = _trained(seed=1, steps=4)
    save_checkpoint(tmp_path, "latest", model, optimizer, {"epoch": 2, "best_top1": 0.5})
    assert has_checkpoint(tmp_path, "latest") and not has_checkpoint(tmp_path, "best")
    names = {p.name for p in tmp_path.iterdir()}
    assert {
        f"latest{s}" for s in (".safetensors", ".opt.safetensors", ".pdparams", ".pdopt")
    } < names
    assert not any(TMP_MARK in name for name in names)

    # Another instance: Paddle's generated parameter names differ, structured names do not.
    fresh = _model(seed=2)
    fresh_opt, fresh_sched = build_optimizer(CFG, fresh.parameters(), steps_per_epoch=3, epochs=4)
    info = load_checkpoint(tmp_path, "latest", fresh, fresh_opt)
    assert info == {"epoch": 2, "best_top1": 0.5}
    for key, value in model.state_dict().items():
        assert np.array_equal(value.numpy(), fresh.state_dict()[key].numpy()), key
    assert float(fresh_opt.get_lr()) == pytest.approx(float(optimizer.get_lr()))

    # Both continue identically: momentum buffers and schedule position came back.
    for net, opt, sch in ((model, optimizer, sched), (fresh, fresh_opt, fresh_sched)):
        net(x).square().mean().backward()
        opt.step()
        opt.clear_grad()
        sch.step()
    for key, value in model.state_dict().items():
        assert np.allclose(value.numpy(), fresh.state_dict()[key].numpy(), atol=1e-6), key


def test_checkpoint_of_another_model_is_refused(tmp_path):
    model, optimizer, _, _ = _trained(seed=1, steps=1)
    save_checkpoint(tmp_path, "latest", model, optimizer, {"epoch": 1})
    other = paddle.nn.Sequential(paddle.nn.Linear(4, 8))  # lacks the BatchNorm
    other_opt, _ = build_optimizer(CFG, other.parameters(), 3, 4)
    with pytest.raises(ConfigError, match="--resume"):
        load_checkpoint(tmp_path, "latest", other, other_opt)


def test_keep_metrics_through_drops_later_and_cut_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"epoch": e, "loss": 1.0 / e}) for e in (1, 2, 3)]
    path.write_text("\n".join(lines) + '\n{"epoch": 4, "lo')
    keep_metrics_through(path, 2)
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
    keep_metrics_through(tmp_path / "absent.jsonl", 1)  # nothing to trim
    assert not (tmp_path / "absent.jsonl").exists()
