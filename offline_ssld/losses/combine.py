"""The combiner: a weighted sum of registered loss terms, optionally fused per row with
ground-truth cross-entropy (GTFusion)."""

from __future__ import annotations

import paddle
from paddle import Tensor

from offline_ssld.errors import ConfigError
from offline_ssld.losses.functional import bucketed, gt_ce_rows, masked_mean, spread
from offline_ssld.losses.registry import LOSSES


class DistillLoss:
    """Weighted sum of terms built from PaddleClas `Loss.Train` entries.

    `terms` are (kind, weight, kwargs) with kind in dml, js, kl, ce_soft, gt_ce, dkd.
    Without `gt_alpha` the total is sum_i weight_i * term_i, each term reduced as its public
    function does (label-dependent terms average over labeled rows only).

    With `gt_alpha` (the offline `GTFusion` extension) the fusion is done per row:
        row_r = alpha * KD_r + (1 - alpha) * CE_r   if row r is labeled
        row_r = KD_r                                  if row r is unlabeled
        total = mean_r row_r
    so unlabeled images still get the full distillation signal instead of a down-weighted
    one. KD_r is the weighted sum of the terms' row values; label-dependent terms (dkd,
    gt_ce) are rescaled by B / n_labeled on labeled rows so that mean_r KD_r equals the
    unfused KD total exactly. With every row labeled, total = alpha*KD + (1-alpha)*CE.
    """

    def __init__(self, terms: list[tuple[str, float, dict]], gt_alpha: float | None = None):
        if not terms:
            raise ConfigError("DistillLoss needs at least one loss term")
        checked: list[tuple[str, float, dict]] = []
        for kind, weight, kwargs in terms:
            if kind not in LOSSES:
                raise ConfigError(
                    f"unknown loss kind {kind!r}; supported: {', '.join(sorted(LOSSES))}"
                )
            extra = set(kwargs) - set(LOSSES[kind].params)
            if extra:
                raise ConfigError(f"loss kind {kind!r} does not take {sorted(extra)}")
            checked.append((kind, float(weight), {**LOSSES[kind].params, **kwargs}))
        if gt_alpha is not None and not 0.0 <= float(gt_alpha) <= 1.0:
            raise ConfigError(f"GTFusion alpha must be in [0, 1], got {gt_alpha}")
        coupled = [k for k, _, _ in checked if not LOSSES[k].per_row]
        if gt_alpha is not None and coupled:
            raise ConfigError(
                f"GTFusion fuses per row, and loss kind {coupled[0]!r} couples the rows of a "
                "batch; list its CE term separately instead"
            )
        self.terms = checked
        self.gt_alpha = None if gt_alpha is None else float(gt_alpha)
        self._log_names = self._unique_names([k for k, _, _ in checked])

    @staticmethod
    def _unique_names(kinds: list[str]) -> list[str]:
        """Log keys: the kind, suffixed with its position when a kind repeats."""
        return [k if kinds.count(k) == 1 else f"{k}_{i}" for i, k in enumerate(kinds)]

    def __repr__(self) -> str:
        return f"DistillLoss(terms={self.terms!r}, gt_alpha={self.gt_alpha!r})"

    def __call__(
        self, student_logits: Tensor, teacher_probs: Tensor, labels: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """Return (total loss, unweighted per-term values for logging)."""
        batch = student_logits.shape[0]
        logs: dict[str, float] = {}
        kd_total: Tensor | None = None
        kd_rows: Tensor | None = None
        forms = {"dense": (student_logits, teacher_probs)}
        if teacher_probs.shape[1] == student_logits.shape[1] + 1:  # a top-k target
            forms = {
                "buckets": bucketed(student_logits, teacher_probs),
                "dense": (student_logits, spread(teacher_probs)),
            }
        for (kind, weight, kwargs), name in zip(self.terms, self._log_names, strict=True):
            form = "buckets" if "buckets" in forms and LOSSES[kind].buckets(kwargs) else "dense"
            rows, mask = LOSSES[kind].rows(*forms[form], labels, kwargs)
            value = rows.mean() if mask is None else masked_mean(rows, mask)
            logs[name] = float(value.item())
            kd_total = weight * value if kd_total is None else kd_total + weight * value
            if self.gt_alpha is not None:
                if mask is not None:
                    m = mask.astype(rows.dtype)
                    rows = rows * m * (batch / paddle.clip(m.sum(), min=1.0))
                kd_rows = weight * rows if kd_rows is None else kd_rows + weight * rows
        assert kd_total is not None
        if self.gt_alpha is None:
            return kd_total, logs

        assert kd_rows is not None
        alpha = self.gt_alpha
        ce_rows, lab = gt_ce_rows(student_logits, labels)
        fused = paddle.where(lab, alpha * kd_rows + (1.0 - alpha) * ce_rows, kd_rows)
        logs["kd"] = float(kd_total.item())
        logs["gt_fusion_ce"] = float(masked_mean(ce_rows, lab).item())
        return fused.mean(), logs
