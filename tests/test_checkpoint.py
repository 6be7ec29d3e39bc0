"""checkpoint.py: a round trip restores weights, optimizer state, lr schedule and the AMP loss
scaler exactly."""

from __future__ import annotations

import json

import numpy as np
import paddle
import pytest
from safetensors import safe_open

from offline_ssld.atomic import TMP_MARK
from offline_ssld.checkpoint import (
    has_checkpoint,
    keep_metrics_through,
    load_checkpoint,
    save_checkpoint,
    scaler_state_from_json,
    scaler_state_to_json,
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


# --------------------------------------------------------------------- AMP loss scaler


def _scaler(state: dict | None = None) -> paddle.amp.GradScaler:
    """A real GradScaler with its state set. Paddle disables the scaler off-GPU (state_dict()
    then returns {}), so the test turns it back on: only its state is used, never scaling."""
    with pytest.warns(UserWarning, match="AmpScaler can only be enabled"):
        scaler = paddle.amp.GradScaler(init_loss_scaling=128.0, use_dynamic_loss_scaling=True)
    scaler._enable = True
    scaler.load_state_dict(state or SCALER_STATE)
    return scaler


SCALER_STATE = {
    "scale": np.array([4096.0], dtype=np.float32),
    "incr_ratio": 2.0,
    "decr_ratio": 0.5,
    "incr_every_n_steps": 2000,
    "decr_every_n_nan_or_inf": 1,
    "incr_count": 37,
    "decr_count": 1,
    "use_dynamic_loss_scaling": True,
}


def test_scaler_state_round_trips_as_json_numbers(tmp_path):
    model, optimizer, _, _ = _trained(seed=1, steps=1)
    save_checkpoint(tmp_path, "latest", model, optimizer, {"epoch": 1}, scaler=_scaler())
    with safe_open(str(tmp_path / "latest.opt.safetensors"), framework="numpy") as fh:
        stored = json.loads(fh.metadata()["GradScaler"])
    assert stored == {**SCALER_STATE, "scale": 4096.0}

    fresh = _scaler({**SCALER_STATE, "scale": np.array([128.0], np.float32), "incr_count": 0})
    fresh_opt, _ = build_optimizer(CFG, model.parameters(), 3, 4)
    load_checkpoint(tmp_path, "latest", model, fresh_opt, fresh)
    restored = fresh.state_dict()
    assert restored["scale"].tolist() == [4096.0]
    assert {k: v for k, v in restored.items() if k != "scale"} == {
        k: v for k, v in SCALER_STATE.items() if k != "scale"
    }


def test_fp32_checkpoints_hold_no_scaler_and_leave_a_new_one_at_scale_loss(tmp_path):
    model, optimizer, _, _ = _trained(seed=1, steps=1)
    save_checkpoint(tmp_path, "latest", model, optimizer, {"epoch": 1})
    with safe_open(str(tmp_path / "latest.opt.safetensors"), framework="numpy") as fh:
        assert "GradScaler" not in fh.metadata()
    scaler = _scaler()
    load_checkpoint(tmp_path, "latest", model, optimizer, scaler)
    assert scaler.state_dict()["scale"].tolist() == [4096.0]  # untouched


@pytest.mark.parametrize(
    "text, field",
    [
        ("[1]", "exactly the keys"),
        ('{"scale": 1.0}', "exactly the keys"),
        ({"scale": 0.0}, "GradScaler.scale"),
        ({"scale": float("nan")}, "GradScaler.scale"),
        ({"incr_count": 1.5}, "GradScaler.incr_count"),
        ({"incr_count": True}, "GradScaler.incr_count"),
        ({"decr_count": -1}, "GradScaler.decr_count"),
        ({"use_dynamic_loss_scaling": 1}, "GradScaler.use_dynamic_loss_scaling"),
        ("{not json", "not JSON"),
    ],
)
def test_malformed_scaler_state_is_refused_naming_the_field(text, field):
    if isinstance(text, dict):
        text = scaler_state_to_json(SCALER_STATE)[:-1] + ", " + json.dumps(text)[1:]
    with pytest.raises(ConfigError, match=rf"^--resume: x: .*{field}"):
        scaler_state_from_json(text, "--resume: x")
