"""Issue 32: for one seed, the online (fresh and replayed views), offline and student-only
students start from the same weights and take the same images in the same order, so a
benchmark between the modes compares the targets alone."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

import offline_ssld.train as train_module
from offline_ssld.config.loading import load_config
from offline_ssld.dump import run_dump

# train() mode and the overrides of each run compared; the cache is dumped once per test
RUNS = {
    "student_only": ("supervised", []),
    "online": ("online", []),
    "online_replay": ("online", ["Offline.online_views=replay"]),
    "offline": ("offline", []),
}


class StopAtFirstStep(Exception):
    """Raised by a capture before the first forward, ending the run there."""


@dataclass
class Capture:
    """What train() did up to its first training step: the student's state before any
    update, the first batch's images (list indices and pixels), and the student itself."""

    stop: bool
    model: object = None
    initial: dict[str, np.ndarray] = field(default_factory=dict)
    first_batch: list[int] = field(default_factory=list)
    first_x: np.ndarray | None = None

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.numpy().copy() for k, v in self.model.state_dict().items()}


def run_captured(monkeypatch, cfg: dict, mode: str, stop: bool = True) -> Capture:
    """train(cfg, mode) with the student and the training loader observed (the first model
    and the first loader train() builds); with `stop` it ends before the first forward."""
    capture = Capture(stop)
    build_model, loader_class = train_module.build_model, train_module.BatchLoader

    def before_forward(layer, inputs):
        if not capture.initial:
            capture.initial = capture.state()
            capture.first_x = inputs[0].numpy().copy()
            if capture.stop:
                raise StopAtFirstStep

    def observed_build(spec):
        model = build_model(spec)
        if capture.model is None:
            capture.model = model
            model.register_forward_pre_hook(before_forward)
        return model

    class ObservedLoader(loader_class):
        def __iter__(self):
            if not capture.first_batch:
                capture.first_batch = next(iter(self.batch_sampler))
            yield from super().__iter__()

    monkeypatch.setattr(train_module, "build_model", observed_build)
    monkeypatch.setattr(train_module, "BatchLoader", ObservedLoader)
    try:
        train_module.train(cfg, mode, progress=False)
    except StopAtFirstStep:
        pass
    finally:
        monkeypatch.undo()
    assert capture.initial, "train() never reached its first step"
    return capture


@pytest.fixture
def first_steps(project, monkeypatch) -> dict[str, Capture]:
    """Each run of RUNS up to its first step, seed 3, from one dumped cache."""
    path, tmp = project
    common = ["Global.seed=3"]
    run_dump(load_config([str(path)], common), progress=False)
    out = {}
    for name, (mode, extra) in RUNS.items():
        cfg = load_config([str(path)], [*common, *extra, f"Global.output_dir={tmp / name}"])
        out[name] = run_captured(monkeypatch, cfg, mode)
    return out


def test_every_mode_starts_from_the_same_student(first_steps):
    reference = first_steps["student_only"].initial
    for name, capture in first_steps.items():
        assert capture.initial.keys() == reference.keys(), name
        for key, value in reference.items():
            assert np.array_equal(capture.initial[key], value), f"{name}: {key} differs"


def test_every_mode_takes_the_same_first_batch(first_steps):
    order = first_steps["student_only"].first_batch
    assert order and order != sorted(order)  # shuffled, so an equal order is not trivial
    for name, capture in first_steps.items():
        assert capture.first_batch == order, name
    # the same pixels where the views are the same: fresh views (student-only and online)
    # come from the seed, replayed ones (offline and online on replayed views) from the cache
    for a, b in (("student_only", "online"), ("offline", "online_replay")):
        assert np.array_equal(first_steps[a].first_x, first_steps[b].first_x), (a, b)
    assert not np.array_equal(first_steps["online"].first_x, first_steps["offline"].first_x)
