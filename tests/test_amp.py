"""PaddleClas's AMP section and Arch.use_sync_bn (issue 11, item 4), as its engine reads them:
ppcls/engine/engine.py `_init_amp`, ppcls/utils/amp.py `build_scaler`, ppcls/engine/train/
train.py (scale, backward, step, update) and ppcls/arch/__init__.py `build_model`."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import paddle
import pytest
from safetensors import safe_open

from offline_ssld import distributed as dist
from offline_ssld import train as train_mod
from offline_ssld.config.loading import load_config
from offline_ssld.config.paddleclas import check_supported, overlay_summary
from offline_ssld.config.specs import AmpSpec, amp_spec, use_sync_bn
from offline_ssld.errors import ConfigError

# The AMP section of PaddleClas's SSLD recipes (e.g. PPLCNet_x2_5_ssld.yaml).
SSLD_AMP = {
    "use_amp": True,
    "use_fp16_test": False,
    "scale_loss": 128.0,
    "use_dynamic_loss_scaling": True,
    "use_promote": False,
    "level": "O1",
}


@pytest.mark.parametrize(
    "section, expected",
    [
        (None, AmpSpec(False)),  # no AMP section: fp32
        ({}, AmpSpec(False)),  # an empty section is falsy in `amp_config and ...`
        ({"scale_loss": 128.0}, AmpSpec(True, scale_loss=128.0)),  # use_amp defaults to True
        ({**SSLD_AMP, "use_amp": False}, AmpSpec(False, "O1", 128.0, True)),
        (SSLD_AMP, AmpSpec(True, "O1", 128.0, True)),
        ({"use_promote": True, "use_fp16_test": True}, AmpSpec(True, "O1", 1.0, False, True, True)),
        ({"use_amp": False, "level": "O2"}, AmpSpec(False, "O2")),  # off: its level is unused
    ],
)
def test_amp_section_as_paddleclas_init_amp_reads_it(section, expected):
    assert amp_spec({} if section is None else {"AMP": section}) == expected


@pytest.mark.parametrize(
    "section, key",
    [
        ({"level": "O2"}, "AMP.level"),  # pure fp16 (paddle.amp.decorate) is not implemented
        ({"level": "O3"}, "AMP.level"),  # PaddleClas would fall back to O1 with a warning
        ({"scale_loss": 0}, "AMP.scale_loss"),
        ({"scale_loss": "128"}, "AMP.scale_loss"),
        ({"scale_loss": float("inf")}, "AMP.scale_loss"),
        ({"use_amp": "yes"}, "AMP.use_amp"),
        ({"use_dynamic_loss_scaling": 1}, "AMP.use_dynamic_loss_scaling"),
        ({"custom_white_list": ["conv2d"]}, "AMP.custom_white_list"),
        ([1], "AMP"),
    ],
)
def test_amp_values_not_honoured_are_refused_naming_the_key(project, section, key):
    path, _ = project
    cfg = load_config([str(path)], [])
    cfg["AMP"] = section
    with pytest.raises(ConfigError) as info:
        check_supported(cfg)
    assert str(info.value).startswith(f"{key}:"), str(info.value)
    assert "\n" not in str(info.value)


def test_grad_scaler_gets_paddleclas_build_scaler_arguments(monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(paddle.amp, "GradScaler", lambda **kwargs: calls.append(kwargs))
    train_mod.grad_scaler(amp_spec({"AMP": SSLD_AMP}))
    train_mod.grad_scaler(amp_spec({"AMP": {"use_amp": True}}))
    assert calls == [
        {"init_loss_scaling": 128.0, "use_dynamic_loss_scaling": True},
        {"init_loss_scaling": 1.0, "use_dynamic_loss_scaling": False},  # PaddleClas defaults
    ]


def test_grad_scaler_constructs_on_cpu_but_paddle_disables_it():
    """Why a CPU run keeps no scaler: Paddle's AmpScaler turns itself off off-GPU."""
    with pytest.warns(UserWarning, match="AmpScaler can only be enabled on CUDAPlace"):
        scaler = train_mod.grad_scaler(amp_spec({"AMP": SSLD_AMP}))
    assert scaler.state_dict() == {}


def test_amp_runs_only_on_gpu_and_cpu_says_so_once(capsys):
    amp = amp_spec({"AMP": SSLD_AMP})
    assert train_mod.run_amp(amp, "gpu", True) is amp
    assert capsys.readouterr().err == ""
    assert train_mod.run_amp(amp, "cpu", True) is None
    assert capsys.readouterr().err.count("AMP is configured but the device is cpu") == 1
    assert train_mod.run_amp(amp, "cpu", False) is None  # other ranks, eval: silent
    assert train_mod.run_amp(AmpSpec(False), "gpu", True) is None
    assert capsys.readouterr().err == ""


class _RecordingScaler:
    """Stands in for an enabled GradScaler, which needs a GPU: records the loop's calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def scale(self, loss: paddle.Tensor) -> paddle.Tensor:
        self.calls.append("scale")
        return loss * 1.0

    def step(self, optimizer: paddle.optimizer.Optimizer) -> None:
        self.calls.append("step")
        optimizer.step()

    def update(self) -> None:
        self.calls.append("update")

    def state_dict(self) -> dict:
        return {
            "scale": np.array([256.0], dtype=np.float32),
            "incr_ratio": 2.0,
            "decr_ratio": 0.5,
            "incr_every_n_steps": 2000,
            "decr_every_n_nan_or_inf": 1,
            "incr_count": len(self.calls),
            "decr_count": 0,
            "use_dynamic_loss_scaling": True,
        }


@pytest.mark.parametrize("use_amp", [True, False])
def test_training_loop_follows_the_amp_section(project, monkeypatch, use_amp):
    """On a (pretended) GPU the loop uses autocast and the scaler exactly when AMP is on."""
    path, tmp = project
    cfg = load_config([str(path)], ["Global.epochs=1"])
    cfg["AMP"] = {**SSLD_AMP, "use_amp": use_amp}
    casts: list[AmpSpec | None] = []
    scalers: list[_RecordingScaler] = []

    def autocast(spec: AmpSpec | None) -> contextlib.nullcontext:
        casts.append(spec)
        return contextlib.nullcontext()

    def grad_scaler(spec: AmpSpec) -> _RecordingScaler:
        assert spec == amp_spec(cfg)
        scalers.append(_RecordingScaler())
        return scalers[-1]

    monkeypatch.setattr(train_mod, "select_device", lambda _: "gpu")
    monkeypatch.setattr(train_mod, "autocast", autocast)
    monkeypatch.setattr(train_mod, "grad_scaler", grad_scaler)
    train_mod.train(cfg, "supervised", progress=False)
    with safe_open(str(tmp / "output" / "latest.opt.safetensors"), framework="numpy") as fh:
        meta = fh.metadata()
    if use_amp:
        (scaler,) = scalers
        steps = scaler.calls.count("step")
        assert steps > 0 and scaler.calls == ["scale", "step", "update"] * steps
        # training batches under the section's autocast; eval (use_fp16_test false) in fp32
        assert casts[:steps] == [amp_spec(cfg)] * steps and set(casts[steps:]) == {None}
        assert json.loads(meta["GradScaler"])["scale"] == 256.0
    else:
        assert scalers == [] and set(casts) == {None} and "GradScaler" not in meta


# --------------------------------------------------------------------------- use_sync_bn


def _bn_model() -> paddle.nn.Layer:
    return paddle.nn.Sequential(
        paddle.nn.Conv2D(3, 4, 3),
        paddle.nn.BatchNorm2D(4),
        paddle.nn.ReLU(),
        paddle.nn.Sequential(paddle.nn.Conv2D(4, 4, 1), paddle.nn.BatchNorm2D(4)),
    )


def _sync_count(model: paddle.nn.Layer) -> int:
    return sum(isinstance(m, paddle.nn.SyncBatchNorm) for m in model.sublayers())


def test_sync_bn_converts_every_batch_norm_when_launched_on_gpus(monkeypatch):
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    assert dist.is_distributed()
    model = _bn_model()
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    converted = train_mod.sync_batch_norm(model, True, "gpu")
    assert _sync_count(converted) == 2
    # same keys and values: checkpoints and .pdparams do not change
    assert converted.state_dict().keys() == before.keys()
    for key, value in converted.state_dict().items():
        assert np.array_equal(value.numpy(), before[key]), key


@pytest.mark.parametrize(
    "world, requested, device",
    [("1", True, "gpu"), ("2", False, "gpu"), ("2", True, "cpu")],
)
def test_sync_bn_only_when_requested_on_several_gpus(monkeypatch, world, requested, device):
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", world)
    model = _bn_model()
    assert train_mod.sync_batch_norm(model, requested, device) is model
    assert _sync_count(model) == 0


def test_use_sync_bn_is_read_from_the_arch_section(project):
    path, _ = project
    assert use_sync_bn(load_config([str(path)], [])) is False
    cfg = load_config([str(path)], ["Arch.use_sync_bn=True"])
    check_supported(cfg)
    assert use_sync_bn(cfg) is True
    assert any("SyncBatchNorm" in line for line in overlay_summary(cfg))
    with pytest.raises(ConfigError, match=r"^Arch\.use_sync_bn: expected true or false"):
        check_supported(load_config([str(path)], ["Arch.use_sync_bn=2"]))
