"""PULC semantics against PaddleClas's own code: TprAtFpr, ATTRMetric, MultiLabelLoss and
DMLLoss with weight_ratio, on random inputs. The paddleclas wheel ships neither ppcls.metric
nor ppcls.loss, so their forward code is restated below line for line from PaddleClas at the
commit the config test data records (ppcls/metric/metrics.py TprAtFpr, get_attr_metrics;
ppcls/utils/misc.py AttrMeter.res; ppcls/loss/multilabelloss.py; ppcls/loss/dmlloss.py)."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from offline_ssld.data.lists import read_list
from offline_ssld.data.views import ImageSource
from offline_ssld.errors import ConfigError, DataError
from offline_ssld.losses import build_loss, check_pairing
from offline_ssld.metrics import build_metrics

# ------------------------------------------------------------------ PaddleClas, restated


def _ppcls_tpr_at_fpr(logits: np.ndarray, labels: np.ndarray, max_fpr: float) -> float:
    x = F.softmax(paddle.to_tensor(logits), axis=-1)
    pos, neg = [], []
    for i, label_i in enumerate(labels.reshape(-1, 1)):
        (neg if label_i[0] == 0 else pos).append(x[i][1].numpy())
    pos_a, neg_a, max_tpr = np.array(pos), np.array(neg), 0.0
    for i in range(0, 10000):
        threshold = i / 10000.0
        if len(pos_a) == 0:
            continue
        tpr = np.sum(pos_a > threshold) / len(pos_a)
        if len(neg_a) == 0 and tpr > max_tpr:
            max_tpr = tpr
        fpr = np.sum(neg_a > threshold) / len(neg_a) if len(neg_a) else np.nan
        if fpr <= max_fpr and tpr > max_tpr:
            max_tpr = tpr
    return float(max_tpr)


def _ppcls_attr(batches: list[tuple[np.ndarray, np.ndarray]], threshold: float) -> list[float]:
    eps = 1e-20
    sums = dict.fromkeys(("gt_pos", "gt_neg", "true_pos", "true_neg", "false_pos"), 0.0)
    inst: dict[str, list] = {"gt_pos_ins": [], "true_pos_ins": [], "inter": [], "union": []}
    for gt_label, preds in batches:
        pred_label = (preds > threshold).astype(int)
        pred_label[gt_label == -1] = -1
        sums["gt_pos"] += np.sum(gt_label == 1, axis=0).astype(float)
        sums["gt_neg"] += np.sum(gt_label == 0, axis=0).astype(float)
        sums["true_pos"] += np.sum((gt_label == 1) * (pred_label == 1), axis=0).astype(float)
        sums["true_neg"] += np.sum((gt_label == 0) * (pred_label == 0), axis=0).astype(float)
        sums["false_pos"] += np.sum((gt_label == 0) * (pred_label == 1), axis=0).astype(float)
        inst["gt_pos_ins"] += np.sum(gt_label == 1, axis=1).astype(float).tolist()
        inst["true_pos_ins"] += np.sum(pred_label == 1, axis=1).astype(float).tolist()
        inst["inter"] += np.sum((gt_label == 1) * (pred_label == 1), axis=1).tolist()
        inst["union"] += np.sum((gt_label == 1) + (pred_label == 1), axis=1).tolist()
    pos_recall = sums["true_pos"] / (sums["gt_pos"] + eps)
    neg_recall = sums["true_neg"] / (sums["gt_neg"] + eps)
    prec = sums["true_pos"] / (sums["true_pos"] + sums["false_pos"] + eps)
    label_f1 = np.mean(2 * prec * pos_recall / (prec + pos_recall + eps))
    inter, union = np.array(inst["inter"], float), np.array(inst["union"], float)
    acc = np.mean(inter / (union + eps))
    ins_prec = np.mean(inter / (np.array(inst["true_pos_ins"]) + eps))
    ins_rec = np.mean(inter / (np.array(inst["gt_pos_ins"]) + eps))
    ins_f1 = 2 * ins_prec * ins_rec / (ins_prec + ins_rec + eps)
    ma = np.mean((pos_recall + neg_recall) / 2)
    return [ma, label_f1, np.mean(pos_recall), np.mean(neg_recall), ins_f1, acc, ins_prec, ins_rec]


def _ratio2weight(targets, ratio):
    pos_weights = targets * (1.0 - ratio)
    neg_weights = (1.0 - targets) * ratio
    weights = paddle.exp(neg_weights + pos_weights)
    return weights - weights * (targets > 1).astype(weights.dtype)


def _ppcls_multilabel(x, target, size_sum: bool, weight_ratio: bool):
    if weight_ratio:
        target, label_ratio = target[:, 0, :], target[:, 1, :]
    elif target.ndim == 3:
        target = target[:, 0, :]
    cost = F.binary_cross_entropy_with_logits(logit=x, label=target, reduction="none")
    if weight_ratio:
        weight = _ratio2weight(paddle.cast(target > 0.5, "float32"), label_ratio)
        cost = cost * weight * (target > -1).astype(weight.dtype)
    if size_sum:
        cost = cost.sum(1).mean()
    return cost.mean()


def _ppcls_dml(x, target, gt_label, sum_across_class_dim: bool, eps: float = 1e-12):
    x, target = F.softmax(x, axis=-1), F.softmax(target, axis=-1)
    n = x.shape[-1]

    def kldiv(a, b):
        return b * paddle.log((b + eps) / (a + eps)) * n

    loss = (kldiv(x, target) + kldiv(target, x)) / 2
    if gt_label is not None:
        gt, ratio = gt_label[:, 0, :], gt_label[:, 1, :]
        weight = _ratio2weight(paddle.cast(gt > 0.5, "float32"), ratio)
        loss = loss * weight * (gt > -1).astype(weight.dtype)
    return loss.sum(1).mean() if sum_across_class_dim else loss.mean()


# ------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("max_fpr", [0.01, 0.001, 0.3])
@pytest.mark.parametrize("seed", [0, 1])
def test_tpr_at_fpr_matches_paddleclas_over_batches(max_fpr, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(300, 2)) * 3).astype(np.float32)
    labels = rng.integers(0, 2, 300)
    (metric,) = build_metrics([{"TprAtFpr": {"max_fpr": max_fpr}}], 2, False, "Metric.Eval")
    for start in range(0, 300, 64):  # summed batch by batch, as the evaluator does
        metric.update(paddle.to_tensor(logits[start : start + 64]), labels[start : start + 64])
    got = metric.values()["tpr_at_fpr"]
    assert got == _ppcls_tpr_at_fpr(logits, labels, max_fpr)  # exact: counts, not floats


def test_tpr_at_fpr_default_and_no_negatives():
    (metric,) = build_metrics([{"TprAtFpr": None}], 2, False, "Metric.Eval")
    assert metric.max_fpr == 1 / 1000.0
    logits = np.array([[0.0, 1.0], [0.0, -1.0]], np.float32)
    metric.update(paddle.to_tensor(logits), np.array([1, 1]))
    assert metric.values()["tpr_at_fpr"] == _ppcls_tpr_at_fpr(logits, np.array([1, 1]), 0.001)


@pytest.mark.parametrize("threshold", [0.5, 0.0])
def test_attr_metric_matches_paddleclas(threshold):
    rng = np.random.default_rng(3)
    batches = []
    for _ in range(3):
        gt = rng.integers(0, 2, (16, 6))
        gt[rng.random((16, 6)) < 0.1] = -1  # attributes left out
        batches.append((gt, rng.normal(size=(16, 6)).astype(np.float32)))
    entries = [{"ATTRMetric": {"threshold": threshold}}]
    (metric,) = build_metrics(entries, 6, True, "Metric.Eval")
    ratio = np.full(6, 0.5, np.float32)
    for gt, logits in batches:  # (B, 2, C) batches, as label_ratio datasets give
        label = np.stack([gt.astype(np.float32), np.broadcast_to(ratio, gt.shape)], axis=1)
        metric.update(paddle.to_tensor(logits), label)
    got = list(metric.values().values())
    assert got == pytest.approx(_ppcls_attr(batches, threshold), rel=1e-9, abs=1e-12)
    assert metric.main == "ma"


def _multilabel_batch(seed: int, c: int = 6):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 2, (8, c)).astype(np.float32)
    ratio = rng.uniform(0.05, 0.95, c).astype(np.float32)
    label = np.stack([gt, np.broadcast_to(ratio, gt.shape)], axis=1)
    s = (rng.normal(size=(8, c)) * 2).astype(np.float32)
    z_t = (rng.normal(size=(8, c)) * 2).astype(np.float32)
    return paddle.to_tensor(s), paddle.to_tensor(z_t), paddle.to_tensor(label)


@pytest.mark.parametrize("size_sum", [True, False])
@pytest.mark.parametrize("weight_ratio", [True, False])
def test_multilabel_loss_matches_paddleclas(size_sum, weight_ratio):
    s, z_t, label = _multilabel_batch(0)
    entry = {"weight_ratio": weight_ratio, "size_sum": size_sum, "model_names": ["Student"]}
    loss = build_loss([{"DistillationMultiLabelLoss": entry}])
    got, _ = loss(s, F.softmax(z_t, axis=1), label)
    want = _ppcls_multilabel(s, label, size_sum, weight_ratio)
    assert float(got) == pytest.approx(float(want), rel=1e-6)


@pytest.mark.parametrize("sum_across", [True, False])
@pytest.mark.parametrize("weight_ratio", [True, False])
def test_dml_weight_ratio_matches_paddleclas(sum_across, weight_ratio):
    s, z_t, label = _multilabel_batch(1)
    args = {"weight_ratio": weight_ratio, "sum_across_class_dim": sum_across}
    loss = build_loss([{"DistillationDMLLoss": args}])
    # the cache's target is the softmax of the teacher's logits (the fp16 codec, decoded)
    got, _ = loss(s, F.softmax(z_t, axis=1), label)
    want = _ppcls_dml(s, z_t, label if weight_ratio else None, sum_across)
    assert float(got) == pytest.approx(float(want), rel=1e-5)


def test_weight_ratio_refuses_topk_and_sampled_caches():
    loss = build_loss([{"DistillationDMLLoss": {"weight_ratio": True}}])
    for codec, target in (("topk", "topk"), ("sampled", "sampled")):
        with pytest.raises(ConfigError, match=r"^Loss.Train.0: DistillationDMLLoss.*fp16"):
            check_pairing(codec, target, loss, "Loss.Train")
    check_pairing("fp16", "exact", loss, "Loss.Train")
    gt_only = build_loss([{"DistillationMultiLabelLoss": {"weight_ratio": True}}])
    check_pairing("topk", "topk", gt_only, "Loss.Train")  # reads the attributes only


def test_multilabel_loss_refuses_epsilon_by_key():
    with pytest.raises(ConfigError, match=r"^Loss.Train.0.DistillationMultiLabelLoss.epsilon:"):
        build_loss([{"DistillationMultiLabelLoss": {"epsilon": 0.1}}])


def test_multilabel_list_and_label_ratio(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("a.jpg\t1,0,1\nb.jpg\t0,0,1\n")
    samples = read_list(listing, 3, "\t", multilabel=True)
    assert [s.attributes for s in samples] == [(1, 0, 1), (0, 0, 1)]
    source = ImageSource(tmp_path, listing, samples, label_ratio=True)
    np.testing.assert_array_equal(source.label(0), [[1, 0, 1], [0.5, 0, 1]])
    assert ImageSource(tmp_path, listing, samples).label(1).tolist() == [0, 0, 1]
    listing.write_text("a.jpg\t1,0\n")
    with pytest.raises(DataError, match=r"list.txt:1: 2 attributes, class_num is 3"):
        read_list(listing, 3, "\t", multilabel=True)


def test_metric_needs_matching_use_multilabel():
    with pytest.raises(ConfigError, match=r"^Metric.Eval.0: ATTRMetric needs Global.use_multi"):
        build_metrics([{"ATTRMetric": None}], 6, False, "Metric.Eval")
    with pytest.raises(ConfigError, match=r"^Metric.Eval.0.TprAtFpr.fpr: unknown argument"):
        build_metrics([{"TprAtFpr": {"fpr": 0.1}}], 2, False, "Metric.Eval")
