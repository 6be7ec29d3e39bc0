"""Our Loss.Train terms against PaddleClas's own loss classes (ppcls/loss, imported from its
source tree, not restated): on random logits, the value and the student's gradient agree.

Ours see the teacher's probabilities (all a cache keeps), PaddleClas's the teacher's logits;
every row is labeled here, where both definitions coincide (on unlabeled rows ours average
over the labeled ones, tests/test_losses.py)."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from offline_ssld.losses import LOSSES, build_loss
from tests.paddleclas_source import import_ppcls

PAIR = {"model_name_pairs": [["Student", "Teacher"]]}
STUDENT_ONLY = {"model_names": ["Student"]}

# PaddleClas class, its arguments (the same in our Loss.Train entry), and the label kind
CASES = [
    ("DistillationDMLLoss", PAIR, "class"),
    ("DistillationDMLLoss", {**PAIR, "sum_across_class_dim": True}, "class"),
    ("DistillationKLDivLoss", {**PAIR, "temperature": 4}, "class"),
    ("DistillationKLDivLoss", {**PAIR, "temperature": 1}, "class"),
    ("DistillationCELoss", PAIR, "class"),
    ("DistillationGTCELoss", STUDENT_ONLY, "class"),
    ("DistillationDKDLoss", {**PAIR, "temperature": 2.0, "alpha": 1.0, "beta": 8.0}, "class"),
    ("DistillationDISTLoss", {**PAIR, "beta": 1.5, "gamma": 0.5}, "class"),
    ("DistillationSKDLoss", {**PAIR, "temperature": 2.0, "alpha": 0.9}, "class"),
    ("DistillationWSLLoss", {**PAIR, "temperature": 2.0}, "class"),
    ("DistillationMultiLabelLoss", STUDENT_ONLY, "attributes"),
]


def test_every_paddleclas_class_we_answer_to_is_compared():
    """A new registry entry with a PaddleClas Distillation* class needs a case here."""
    ours = {n for e in LOSSES.values() for n in e.paddleclas_names if n.startswith("Distil")}
    theirs = {n for n in vars(import_ppcls("loss.distillationloss")) if n.startswith("Distil")}
    assert {name for name, _, _ in CASES} == ours & theirs


@pytest.mark.parametrize(("name", "args", "labels"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_loss_matches_paddleclas(name, args, labels):
    module = import_ppcls("loss.distillationloss")
    rng = np.random.default_rng(7)
    batch, classes = 6, 5
    student = (rng.normal(size=(batch, classes)) * 2).astype("float32")
    teacher = (rng.normal(size=(batch, classes)) * 3).astype("float32")
    if labels == "class":
        label = rng.integers(0, classes, size=(batch, 1)).astype("int64")  # PaddleClas's shape
    else:
        label = rng.integers(0, 2, size=(batch, classes)).astype("float32")
    probs = np.exp(teacher - teacher.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)

    theirs_in = paddle.to_tensor(student, stop_gradient=False)
    predicts = {"Student": theirs_in, "Teacher": paddle.to_tensor(teacher)}
    theirs = sum(getattr(module, name)(**args)(predicts, paddle.to_tensor(label)).values())
    theirs.backward()

    ours_in = paddle.to_tensor(student, stop_gradient=False)
    ours_label = paddle.to_tensor(label if labels == "attributes" else label[:, 0])
    ours, _ = build_loss([{name: {"weight": 1.0, **args}}])(
        ours_in, paddle.to_tensor(probs), ours_label
    )
    ours.backward()

    assert float(ours) == pytest.approx(float(theirs), rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(ours_in.grad.numpy(), theirs_in.grad.numpy(), rtol=1e-3, atol=1e-6)
