"""Eval metrics of PaddleClas's `Metric.Eval`, one registry entry per metric.

Each entry accumulates over the eval batches a fixed-size vector of sums (`state`), so that
under `paddle.distributed.launch` the ranks' states are summed once and every rank gets the
metric of the whole eval list. As in PaddleClas's CombinedMetrics, the first listed metric's
main value (the first of its `values`) decides the best checkpoint.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import paddle
import paddle.nn.functional as F

from offline_ssld.errors import ConfigError

__all__ = ["METRICS", "Metric", "build_metrics"]


def _labels_1d(labels: np.ndarray) -> np.ndarray:
    return labels.reshape(-1).astype(np.int64)


class Metric(ABC):
    """One PaddleClas eval metric: parse its arguments once, then accumulate and report."""

    names: ClassVar[tuple[str, ...]]  # the PaddleClas Metric names it answers to
    main: str  # the value that picks the best checkpoint when this metric is listed first
    args: ClassVar[tuple[str, ...]]  # accepted arguments
    multilabel: ClassVar[bool] = False  # takes attribute vectors (Global.use_multilabel)

    def __init__(self, args: dict, class_num: int, key: str) -> None:
        """Validate `args` (errors name `key`); the state starts at zero."""
        self.state = np.zeros(self.state_size(class_num), dtype=np.float64)

    @abstractmethod
    def state_size(self, class_num: int) -> int:
        """Length of the summed state vector."""

    @abstractmethod
    def update(self, logits: paddle.Tensor, labels: np.ndarray) -> None:
        """Add one batch (the student's logits and the batch's labels) to the state."""

    @abstractmethod
    def values(self) -> dict[str, float]:
        """Named values of the summed state; the first is the main one."""


class TopkAcc(Metric):
    """PaddleClas TopkAcc: the share of labeled images whose label is among the k highest
    logits. Unlabeled rows (label -1) are left out; k larger than class_num is skipped, as
    PaddleClas skips it."""

    names = ("TopkAcc", "DistillationTopkAcc")
    args = ("topk", "model_key")

    def __init__(self, args: dict, class_num: int, key: str) -> None:
        topk = args.get("topk", (1, 5))
        topk = [topk] if isinstance(topk, int) and not isinstance(topk, bool) else topk
        if not isinstance(topk, list | tuple) or not all(
            isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in topk
        ):
            raise ConfigError(f"{key}.topk: expected a positive integer or a list of them")
        if args.get("model_key", "Student") != "Student":
            raise ConfigError(f"{key}.model_key: {args['model_key']!r}; we evaluate the Student")
        self.topk = [k for k in topk if k <= class_num] or [1]
        self.main = f"top{self.topk[0]}"
        super().__init__(args, class_num, key)

    def state_size(self, class_num: int) -> int:
        return len(self.topk) + 1  # correct per k, labeled rows

    def update(self, logits: paddle.Tensor, labels: np.ndarray) -> None:
        label = _labels_1d(labels)
        order = np.argsort(-logits.numpy(), axis=1, kind="stable")[:, : max(self.topk)]
        hits = order == label[:, None]
        for i, k in enumerate(self.topk):
            self.state[i] += hits[:, :k].any(axis=1).sum()
        self.state[-1] += (label >= 0).sum()

    def values(self) -> dict[str, float]:
        seen = self.state[-1]
        return {
            f"top{k}": float(self.state[i] / seen) if seen else float("nan")
            for i, k in enumerate(self.topk)
        }


_TPR_STEPS = 10000  # PaddleClas tries the thresholds i / 10000 for i in [0, 10000)


class TprAtFpr(Metric):
    """PaddleClas TprAtFpr (PULC *_exists): the highest true-positive rate, over the
    thresholds i/10000 on softmax(logits)[:, 1], whose false-positive rate is at most
    max_fpr. Label 0 is negative and any other label positive, as in PaddleClas; unlabeled
    rows (-1) are left out. The state is a histogram of how many thresholds each score
    exceeds, so the counts above every threshold are exact and sum over ranks."""

    names = ("TprAtFpr",)
    args = ("max_fpr",)

    def __init__(self, args: dict, class_num: int, key: str) -> None:
        max_fpr = args.get("max_fpr", 1 / 1000.0)
        if isinstance(max_fpr, bool) or not isinstance(max_fpr, int | float):
            raise ConfigError(f"{key}.max_fpr: expected a number, got {max_fpr!r}")
        self.max_fpr = float(max_fpr)
        self.thresholds = np.arange(_TPR_STEPS) / float(_TPR_STEPS)
        self.main = "tpr_at_fpr"
        super().__init__(args, class_num, key)

    def state_size(self, class_num: int) -> int:
        return 2 * (_TPR_STEPS + 1)  # negatives' then positives' histogram

    def update(self, logits: paddle.Tensor, labels: np.ndarray) -> None:
        label = _labels_1d(labels)
        score = F.softmax(logits.astype("float32"), axis=-1).numpy()[:, 1].astype(np.float64)
        exceeded = np.searchsorted(self.thresholds, score, side="left")
        for offset, rows in ((0, label == 0), (_TPR_STEPS + 1, label > 0)):
            hist = np.bincount(exceeded[rows], minlength=_TPR_STEPS + 1)
            self.state[offset : offset + _TPR_STEPS + 1] += hist

    def values(self) -> dict[str, float]:
        neg, pos = self.state[: _TPR_STEPS + 1], self.state[_TPR_STEPS + 1 :]
        # images whose score exceeds threshold i: those that exceed more than i thresholds
        above_neg = np.cumsum(neg[::-1])[::-1][1:]
        above_pos = np.cumsum(pos[::-1])[::-1][1:]
        if pos.sum() == 0:
            return {"tpr_at_fpr": 0.0, "tpr_threshold": float("nan")}
        tpr = above_pos / pos.sum()
        ok = above_neg / neg.sum() <= self.max_fpr if neg.sum() else np.ones_like(tpr, bool)
        best = np.where(ok, tpr, 0.0)
        if best.max() <= 0.0:
            return {"tpr_at_fpr": 0.0, "tpr_threshold": float("nan")}
        first = int(np.argmax(best))  # PaddleClas keeps the first threshold reaching the max
        return {"tpr_at_fpr": float(best[first]), "tpr_threshold": float(self.thresholds[first])}


_ATTR_EPS = 1e-20


class ATTRMetric(Metric):
    """PaddleClas ATTRMetric (PULC *_attribute): label-level mean accuracy `ma` (the main
    value), F1 and recalls, and instance-level accuracy, precision, recall and F1. As in
    PaddleClas's eval, `threshold` applies to the student's raw outputs (logits; PaddleClas
    adds the sigmoid only when exporting), and label -1 marks an attribute left out."""

    names = ("ATTRMetric",)
    args = ("threshold",)
    multilabel = True

    def __init__(self, args: dict, class_num: int, key: str) -> None:
        threshold = args.get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ConfigError(f"{key}.threshold: expected a number, got {threshold!r}")
        self.threshold = float(threshold)
        self.class_num = class_num
        self.main = "ma"
        super().__init__(args, class_num, key)

    def state_size(self, class_num: int) -> int:
        # gt_pos, gt_neg, true_pos, true_neg, false_pos per attribute; instance sums, count
        return 5 * class_num + 4

    def update(self, logits: paddle.Tensor, labels: np.ndarray) -> None:
        gt = labels[:, 0, :] if labels.ndim == 3 else labels
        pred = (logits.numpy() > self.threshold).astype(int)
        pred[gt == -1] = -1
        c = self.class_num
        label_sums = (
            gt == 1,
            gt == 0,
            (gt == 1) & (pred == 1),
            (gt == 0) & (pred == 0),
            (gt == 0) & (pred == 1),
        )
        for i, mask in enumerate(label_sums):
            self.state[i * c : (i + 1) * c] += mask.sum(axis=0)
        gt_pos = (gt == 1).sum(axis=1)
        pred_pos = (pred == 1).sum(axis=1)
        inter = ((gt == 1) & (pred == 1)).sum(axis=1)
        union = ((gt == 1) | (pred == 1)).sum(axis=1)
        self.state[5 * c :] += (
            (inter / (union + _ATTR_EPS)).sum(),
            (inter / (pred_pos + _ATTR_EPS)).sum(),
            (inter / (gt_pos + _ATTR_EPS)).sum(),
            len(gt),
        )

    def values(self) -> dict[str, float]:
        c = self.class_num
        gt_pos, gt_neg, tp, tn, fp = (self.state[i * c : (i + 1) * c] for i in range(5))
        pos_recall = tp / (gt_pos + _ATTR_EPS)
        neg_recall = tn / (gt_neg + _ATTR_EPS)
        prec = tp / (tp + fp + _ATTR_EPS)
        label_f1 = np.mean(2 * prec * pos_recall / (prec + pos_recall + _ATTR_EPS))
        acc, ins_prec, ins_recall = self.state[5 * c : 5 * c + 3] / max(self.state[-1], 1.0)
        ins_f1 = 2 * ins_prec * ins_recall / (ins_prec + ins_recall + _ATTR_EPS)
        return {
            "ma": float(np.mean((pos_recall + neg_recall) / 2)),
            "label_f1": float(label_f1),
            "label_pos_recall": float(np.mean(pos_recall)),
            "label_neg_recall": float(np.mean(neg_recall)),
            "instance_f1": float(ins_f1),
            "instance_acc": float(acc),
            "instance_prec": float(ins_prec),
            "instance_recall": float(ins_recall),
        }


METRICS: dict[str, type[Metric]] = {
    name: cls for cls in (TopkAcc, TprAtFpr, ATTRMetric) for name in cls.names
}
DEFAULT = [{"TopkAcc": {"topk": [1]}}]  # no Metric.Eval: top-1


def build_metrics(entries: Any, class_num: int, multilabel: bool, key: str) -> list[Metric]:
    """Metrics from a PaddleClas `Metric.Eval` list (None: top-1); errors name the key."""
    if entries is None:
        entries = DEFAULT
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{key}: expected a list like [{{TopkAcc: {{topk: [1, 5]}}}}]")
    metrics = []
    for i, entry in enumerate(entries):
        where = f"{key}.{i}"
        name = next(iter(entry)) if isinstance(entry, dict) and len(entry) == 1 else None
        if name not in METRICS:
            raise ConfigError(
                f"{where}: {name or entry!r} is not supported; supported: {', '.join(METRICS)}"
            )
        cls = METRICS[name]
        args = entry[name] or {}
        if not isinstance(args, dict):
            raise ConfigError(f"{where}.{name}: arguments must be a mapping, got {args!r}")
        for arg in args:
            if arg not in cls.args:
                supported = ", ".join(cls.args) or "none"
                raise ConfigError(f"{where}.{name}.{arg}: unknown argument; supported: {supported}")
        if cls.multilabel != multilabel:
            need = "true" if cls.multilabel else "false or unset"
            raise ConfigError(f"{where}: {name} needs Global.use_multilabel {need}")
        metrics.append(cls(args, class_num, f"{where}.{name}"))
    return metrics
