"""checkpoint.py: a round trip restores weights, optimizer state, lr schedule and the AMP loss
scaler exactly; a checkpoint is one unit (staged, committed by its manifest, recovered after a
kill, checked file by file); Global.checkpoints reads PaddleClas's own files on trust only."""

from __future__ import annotations

import json

import numpy as np
import paddle
import pytest
from safetensors import safe_open

from offline_ssld.checkpoint import (
    PaddleClasNames,
    has_checkpoint,
    keep_metrics_through,
    load_checkpoint,
    recover,
    resume_checkpoint,
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


def _names() -> PaddleClasNames:
    """The names a fresh process gives this model (what paddleclas_names does for an Arch)."""
    with paddle.utils.unique_name.guard():
        return PaddleClasNames("", {k: p.name for k, p in _model(0).state_dict().items()})


def _save(out, tag, model, optimizer, info, **kw) -> None:
    save_checkpoint(out, tag, model, optimizer, info, _names(), **kw)


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


def _continue_alike(a: tuple, b: tuple, x: paddle.Tensor) -> None:
    """One more step of both runs ends on the same weights: momentum and schedule came back."""
    for net, opt, sch in (a, b):
        net(x).square().mean().backward()
        opt.step()
        opt.clear_grad()
        sch.step()
    for key, value in a[0].state_dict().items():
        assert np.allclose(value.numpy(), b[0].state_dict()[key].numpy(), atol=1e-6), key


def test_round_trip_restores_weights_optimizer_and_schedule(tmp_path):
    model, optimizer, sched, x = _trained(seed=1, steps=4)
    _save(tmp_path, "latest", model, optimizer, {"epoch": 2, "best_top1": 0.5}, metric=0.25)
    assert has_checkpoint(tmp_path, "latest") and not has_checkpoint(tmp_path, "best_model")
    names = {p.name for p in tmp_path.iterdir()}
    suffixes = (".safetensors", ".opt.safetensors", ".pdparams", ".pdopt", ".pdstates", ".json")
    assert names == {f"latest{s}" for s in suffixes}  # no staging or temporary file left
    assert paddle.load(str(tmp_path / "latest.pdstates")) == {"metric": 0.25, "epoch": 2}

    # Another instance: Paddle's generated parameter names differ, structured names do not.
    fresh = _model(seed=2)
    fresh_opt, fresh_sched = build_optimizer(CFG, fresh.parameters(), steps_per_epoch=3, epochs=4)
    info = load_checkpoint(tmp_path, "latest", fresh, fresh_opt)
    assert info == {"epoch": 2, "best_top1": 0.5}
    for key, value in model.state_dict().items():
        assert np.array_equal(value.numpy(), fresh.state_dict()[key].numpy()), key
    assert float(fresh_opt.get_lr()) == pytest.approx(float(optimizer.get_lr()))

    _continue_alike((model, optimizer, sched), (fresh, fresh_opt, fresh_sched), x)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    model, optimizer, _, _ = _trained(seed=1, steps=1)
    _save(tmp_path, "latest", model, optimizer, {"epoch": 1})
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
    _save(tmp_path, "latest", model, optimizer, {"epoch": 1}, scaler=_scaler())
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
    _save(tmp_path, "latest", model, optimizer, {"epoch": 1})
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


# ------------------------------------------------------------------------------ one unit


def test_best_model_set_is_what_paddleclas_save_model_writes(tmp_path):
    """best_model adds best_model/model.pdparams and, for keys holding "Student.",
    best_model_student.pdparams with that prefix cut (save_load._extract_student_weights)."""
    model, optimizer, _, _ = _trained(seed=1, steps=1)
    names = PaddleClasNames("Student.", _names().generated)
    save_checkpoint(tmp_path, "best_model", model, optimizer, {"epoch": 1}, names, metric=0.5)
    full = paddle.load(str(tmp_path / "best_model.pdparams"))
    assert sorted(full) == sorted(f"Student.{k}" for k in model.state_dict())
    student = paddle.load(str(tmp_path / "best_model_student.pdparams"))
    assert sorted(student) == sorted(model.state_dict())
    assert sorted(paddle.load(str(tmp_path / "best_model" / "model.pdparams"))) == sorted(full)
    listed = json.loads((tmp_path / "best_model.json").read_text())["files"]
    assert "best_model/model.pdparams" in listed and "best_model_student.pdparams" in listed
    # a plain Arch has no Student. keys: PaddleClas writes no _student file then
    save_checkpoint(tmp_path / "plain", "best_model", model, optimizer, {"epoch": 1}, _names())
    assert not (tmp_path / "plain" / "best_model_student.pdparams").exists()


def test_pdopt_is_keyed_by_the_names_of_a_fresh_process(tmp_path):
    model, optimizer, _, _ = _trained(seed=1, steps=2)
    _save(tmp_path, "latest", model, optimizer, {"epoch": 1})
    [state] = paddle.load(str(tmp_path / "latest.pdopt"))
    fresh = {_names().generated[k] for k, p in model.named_parameters() if not p.stop_gradient}
    accumulators = [k for k in state if k != "LR_Scheduler"]
    assert {k[: k.index("_velocity")] for k in accumulators} == fresh
    ours = {p.name for p in model.parameters()}
    assert not ours & fresh  # the test's own model has other names: the renaming mattered


def _staged(tmp_path, epoch: int, moved: int | None):
    """latest of epoch 1 in place, then epoch `epoch` staged and `moved` of its files renamed
    into place (None: staging manifest not yet written)."""
    model, optimizer, _, _ = _trained(seed=1, steps=1)
    _save(tmp_path, "latest", model, optimizer, {"epoch": 1})
    first = (tmp_path / "latest.safetensors").read_bytes()
    model2, optimizer2, _, _ = _trained(seed=3, steps=2)
    _save(tmp_path / "next", "latest", model2, optimizer2, {"epoch": epoch})
    staging = tmp_path / ".latest.staging"
    (tmp_path / "next").rename(staging)
    manifest = staging / "latest.json"
    files = list(json.loads(manifest.read_text())["files"])
    if moved is None:
        manifest.unlink()
    else:
        for name in files[:moved]:
            (staging / name).rename(tmp_path / name)
    return first, model2


@pytest.mark.parametrize("moved", [0, 2, 5])
def test_a_committed_staging_is_rolled_forward(tmp_path, moved):
    _, model2 = _staged(tmp_path, epoch=2, moved=moved)
    fresh = _model(seed=5)
    fresh_opt, _ = build_optimizer(CFG, fresh.parameters(), 3, 4)
    assert load_checkpoint(tmp_path, "latest", fresh, fresh_opt)["epoch"] == 2
    for key, value in model2.state_dict().items():
        assert np.array_equal(value.numpy(), fresh.state_dict()[key].numpy()), key
    assert paddle.load(str(tmp_path / "latest.pdstates"))["epoch"] == 2
    assert not (tmp_path / ".latest.staging").exists()


def test_an_uncommitted_staging_is_discarded(tmp_path):
    first, _ = _staged(tmp_path, epoch=2, moved=None)
    recover(tmp_path, "latest")
    assert not (tmp_path / ".latest.staging").exists()
    assert (tmp_path / "latest.safetensors").read_bytes() == first
    assert json.loads((tmp_path / "latest.json").read_text())["epoch"] == 1


def test_a_file_changed_after_the_manifest_is_named(tmp_path):
    model, optimizer, _, _ = _trained(seed=1, steps=1)
    _save(tmp_path, "latest", model, optimizer, {"epoch": 1})
    paddle.save({"metric": 0.0, "epoch": 7}, str(tmp_path / "latest.pdstates"))  # PaddleClas
    with pytest.raises(ConfigError, match=r"^--resume: .*latest\.pdstates is not the file"):
        load_checkpoint(tmp_path, "latest", model, optimizer)


def test_global_checkpoints_reads_paddleclas_files_on_trust_only(tmp_path):
    """PaddleClas's own set (no .json): refused without Offline.allow_pickle_weights; with it,
    weights, momentum, schedule and epoch come back."""
    model, optimizer, sched, x = _trained(seed=1, steps=4)
    names = _names()
    save_checkpoint(tmp_path, "latest", model, optimizer, {"epoch": 3}, names)
    (tmp_path / "latest.json").unlink()  # now only PaddleClas's files speak for it
    fresh = _model(seed=2)
    fresh_opt, fresh_sched = build_optimizer(CFG, fresh.parameters(), 3, 4)
    with pytest.raises(ConfigError, match=r"^Global.checkpoints: .*latest\.pdparams is a pickle"):
        resume_checkpoint(tmp_path / "latest", fresh, fresh_opt, names)
    info = resume_checkpoint(tmp_path / "latest", fresh, fresh_opt, names, allow_pickle=True)
    assert info == {"epoch": 3}
    _continue_alike((model, optimizer, sched), (fresh, fresh_opt, fresh_sched), x)
