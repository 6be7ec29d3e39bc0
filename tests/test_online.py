"""The online baseline tested for real against the offline path (issue 32): on replayed views
the live teacher gives the cache's targets, one online step moves the student as one offline
step does, and precise BN computes the statistics it claims."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from offline_ssld.config import specs
from offline_ssld.config.loading import load_config
from offline_ssld.config.offline import offline_spec
from offline_ssld.config.specs import ModelSpec
from offline_ssld.data.loader import BatchLoader
from offline_ssld.data.samplers import EpochBatches
from offline_ssld.dump import run_dump
from offline_ssld.errors import ConfigError
from offline_ssld.models import build_model
from offline_ssld.targets import TARGET_SOURCES
from offline_ssld.train import _batch_norms, _source, recalibrate_batch_norm
from tests.helpers import CLASSES, STUDENT
from tests.test_like_for_like import run_captured

FP16_RELATIVE = 2.0**-11  # half an fp16 ulp, relative: the fp16 codec's rounding of a logit


def _replay_online(project, *extra: str):
    """A dumped project and its online target source on replayed views, teacher BN eval."""
    path, _ = project
    overrides = ["Offline.online_views=replay", "Offline.online_teacher_bn=eval"]
    cfg = load_config([str(path)], [*overrides, *extra])
    run_dump(cfg, progress=False)
    student = specs.student_spec(cfg)
    source, pipeline, spec = _source(cfg, "Train", student.class_num)
    online = TARGET_SOURCES["online"](cfg, source, pipeline, student, 0)
    sampler = EpochBatches(len(online.dataset), spec.batch_size, True, False, 0)
    return cfg, online, sampler


def test_live_teacher_on_replayed_views_gives_the_cached_targets(project):
    _, online, sampler = _replay_online(project)
    batches = 0
    for epoch in range(3):  # 3 views: every stored view of every image once
        online.set_epoch(epoch)
        sampler.set_epoch(epoch)
        for x, cached, _ in BatchLoader(online.dataset, sampler):
            with paddle.no_grad():
                logits = online.teacher(x).numpy()
            live = F.softmax(paddle.to_tensor(logits), axis=-1).numpy()
            # softmax moves each probability by at most half the largest logit change, and
            # fp16 moves a logit z by at most |z| * 2^-11
            bound = 0.5 * np.abs(logits).max() * FP16_RELATIVE + 1e-6
            assert np.abs(live - cached.numpy()).max() <= bound, f"epoch {epoch}"
            batches += 1
    assert batches == 3 * len(sampler)
    # the comparison can tell teachers apart: in train mode BN uses the batch's statistics
    online.teacher.train()
    x, cached, _ = next(iter(BatchLoader(online.dataset, sampler)))
    with paddle.no_grad():
        live = F.softmax(online.teacher(x), axis=-1).numpy()
    assert np.abs(live - cached.numpy()).max() > 1e-3


def test_one_online_step_updates_the_student_as_one_offline_step(project, monkeypatch):
    path, tmp = project
    one_step = ["Global.epochs=1", "DataLoader.Train.sampler.batch_size=24"]  # 24 images
    one_step += ["Offline.precise_bn_batches=0", "Offline.online_teacher_bn=eval"]
    run_dump(load_config([str(path)], one_step), progress=False)
    updates = {}
    for name, extra in (("offline", []), ("online", ["Offline.online_views=replay"])):
        cfg = load_config([str(path)], [*one_step, *extra, f"Global.output_dir={tmp / name}"])
        capture = run_captured(monkeypatch, cfg, name, stop=False)
        final = capture.state()
        weights = [k for k, _ in capture.model.named_parameters()]  # not BN's running stats
        updates[name] = {k: final[k] - capture.initial[k] for k in weights}
        assert updates[name]["conv.conv.weight"].any()  # a step was taken
    offline, online = updates["offline"], updates["online"]
    flat = np.concatenate([v.ravel() for v in offline.values()])
    gap = np.concatenate([(online[k] - offline[k]).ravel() for k in offline])
    # live fp32 targets against fp16-coded ones (relative error <= 2^-11 per logit): the
    # updates agree to that precision
    assert np.linalg.norm(gap) <= 4 * FP16_RELATIVE * np.linalg.norm(flat)


def _bn_inputs(layers) -> tuple[list, list]:
    """Forward pre-hooks recording each BatchNorm layer's input, per call."""
    seen: list[list[np.ndarray]] = [[] for _ in layers]
    hooks = [
        layer.register_forward_pre_hook(
            lambda _layer, inputs, i=i: seen[i].append(inputs[0].numpy().copy())
        )
        for i, layer in enumerate(layers)
    ]
    return seen, hooks


def test_precise_bn_is_the_mean_of_the_batch_statistics():
    """Precise BN as fvcore/Detectron2 define it: each running mean and variance becomes the
    plain average over the batches of that batch's mean and (biased, as Paddle's BatchNorm
    takes it) variance, with the weights fixed; earlier layers normalise with the batch's
    statistics meanwhile (train mode), as they do in the forward being averaged."""
    paddle.seed(0)
    model = build_model(ModelSpec(STUDENT, CLASSES, None, "Arch"))
    layers = _batch_norms(model)
    momenta = [layer._momentum for layer in layers]
    rng = np.random.default_rng(0)
    batches = [(paddle.to_tensor(rng.normal(1.0, 2.0, (6, 3, 16, 16)).astype("float32")),)]
    batches += [(paddle.to_tensor(rng.normal(-1.0, 0.5, (6, 3, 16, 16)).astype("float32")),)]
    batches += [(paddle.to_tensor(rng.normal(0.0, 1.0, (6, 3, 16, 16)).astype("float32")),)]
    seen, hooks = _bn_inputs(layers)
    assert recalibrate_batch_norm(model, batches, 2) == 2  # stops after the batches asked
    for hook in hooks:
        hook.remove()
    assert [layer._momentum for layer in layers] == momenta  # restored
    for layer, inputs in zip(layers, seen, strict=True):
        assert len(inputs) == 2
        mean = np.mean([x.mean(axis=(0, 2, 3)) for x in inputs], axis=0)
        var = np.mean([x.var(axis=(0, 2, 3)) for x in inputs], axis=0)
        np.testing.assert_allclose(layer._mean.numpy(), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer._variance.numpy(), var, rtol=1e-4, atol=1e-5)
    # not the variance of the pooled batches: that adds the spread of the batch means
    first = seen[0]
    pooled = np.concatenate(first).var(axis=(0, 2, 3))
    assert not np.allclose(layers[0]._variance.numpy(), pooled, rtol=1e-2)
    assert recalibrate_batch_norm(model, batches, 0) == 0
    assert recalibrate_batch_norm(model, batches, 10) == 3  # capped at the loader's batches


def test_online_views_is_checked_by_key_path():
    with pytest.raises(ConfigError, match=r"^Offline.online_views: 'stored'; supported: fresh, "):
        offline_spec({"Offline": {"online_views": "stored"}})
