"""Distillation losses computed from the student's logits and a dense teacher PROBABILITY matrix.

Offline, the teacher's logits are gone: the cache decodes to probabilities (softmax of fp16
logits, sampled counts/N with exact zeros, or top-k probabilities plus one "rest" bucket).
Every loss here therefore takes probabilities, never teacher logits, and must stay finite
when the target contains exact zeros (0 * log 0 is taken as 0).

A top-k target has C + 1 columns (Codec.decode_target): the stored classes, zeros, and the
rest mass. Losses that depend only on the two distributions (LossKind.buckets) score the
student on the same k + 1 buckets, its rest being the mass it puts on the zero classes; the
others get the rest spread evenly over the zero classes (losses.pairing says which is which).

Each loss is built from a per-row function (`_*_rows`) so that `DistillLoss` can fuse the KD
terms with ground-truth cross-entropy row by row (see `DistillLoss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paddle
import paddle.nn.functional as F
from paddle import Tensor

from offline_ssld.errors import ConfigError

DML_EPS = 1e-12  # PaddleClas DMLLoss epsilon, kept so DML values match PaddleClas exactly
_TINY = 1e-30  # floor for logs/denominators of quantities that are legitimately ~0
_NEG_BIG = -1e9  # "minus infinity" that keeps gradients finite when masking a logit

__all__ = [
    "DistillLoss",
    "build_loss",
    "ce_soft_loss",
    "dkd_loss",
    "dml_loss",
    "gt_ce_loss",
    "js_loss",
    "kl_loss",
    "needs_dense_target",
    "LOSSES",
    "LossKind",
    "check_pairing",
    "pairing",
]


# --------------------------------------------------------------------------- helpers


def _as_target(teacher_probs: Tensor, like: Tensor) -> Tensor:
    """The target is a constant: never let gradients flow into the cache decoder."""
    t = teacher_probs if teacher_probs.dtype == like.dtype else teacher_probs.astype(like.dtype)
    return t.detach()


def _xlogy(x: Tensor, y: Tensor) -> Tensor:
    """x * log(y) with 0 where x == 0, and no NaN in either branch's gradient."""
    pos = x > 0
    y_safe = paddle.where(pos, paddle.clip(y, min=_TINY), paddle.ones_like(y))
    return paddle.where(pos, x * paddle.log(y_safe), paddle.zeros_like(x))


def _neg_entropy_rows(p: Tensor) -> Tensor:
    """sum_c p log p per row, with 0 log 0 = 0 (so sparse/sampled targets stay finite)."""
    return _xlogy(p, p).sum(axis=1)


def _temper(t: Tensor, temperature: float) -> Tensor:
    """Teacher distribution at temperature T from probabilities: t_T ∝ t ** (1/T).

    softmax(z / T) ∝ exp(z) ** (1/T) ∝ softmax(z) ** (1/T), so this equals tempering the
    teacher's logits when they existed; zeros stay zero. Rows are renormalised, which also
    absorbs small fp16 rounding drift in decoded caches.
    """
    if temperature != 1.0:
        t = paddle.pow(t, 1.0 / temperature)
    return t / paddle.clip(t.sum(axis=1, keepdim=True), min=_TINY)


def _labels_1d(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten labels to [B]; return (labeled mask as float, labels with -1 replaced by 0)."""
    lab = labels.reshape([-1]).astype("int64")
    mask = lab != -1
    safe = paddle.where(mask, lab, paddle.zeros_like(lab))
    return mask, safe


def _masked_mean(rows: Tensor, mask: Tensor) -> Tensor:
    """Mean over rows where mask is True; exactly 0 (still differentiable) when none are."""
    m = mask.astype(rows.dtype)
    return (rows * m).sum() / paddle.clip(m.sum(), min=1.0)


# --------------------------------------------------------------------------- per-row losses


def _dml_terms(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """PaddleClas DMLLoss per class, before its class_num scaling and mean over classes."""
    s = F.softmax(student_logits, axis=1)
    t = _as_target(teacher_probs, student_logits)
    log_s = paddle.log(s + DML_EPS)
    log_t = paddle.log(t + DML_EPS)
    return (t * (log_t - log_s) + s * (log_s - log_t)) / 2.0


def _dml_rows(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    return _dml_terms(student_logits, teacher_probs).sum(axis=1)


def _ratio_weights(labels: Tensor) -> Tensor:
    """PaddleClas ratio2weight for a (B, 2, C) multi-label batch (attributes, list ratios):
    exp(1 - ratio) on present attributes, exp(ratio) on absent ones, 0 on left-out (-1)."""
    gt, ratio = labels[:, 0, :], labels[:, 1, :]
    present = (gt > 0.5).astype(gt.dtype)
    weights = paddle.exp(present * (1.0 - ratio) + (1.0 - present) * ratio)
    return weights * (gt > -1).astype(gt.dtype)


def _dml_class_rows(
    student_logits: Tensor, teacher_probs: Tensor, labels: Tensor, args: dict[str, float]
) -> Tensor:
    """PaddleClas DMLLoss with weight_ratio (multi-label: each class's symmetric-KL term
    weighted by ratio2weight) and sum_across_class_dim (rows summed, not averaged, over its
    class_num-scaled terms, i.e. class_num times the plain loss)."""
    terms = _dml_terms(student_logits, teacher_probs)
    if args["weight_ratio"]:
        terms = terms * _ratio_weights(labels)
    rows = terms.sum(axis=1)
    return rows * student_logits.shape[1] if args["sum_across_class_dim"] else rows


def _multilabel_rows(student_logits: Tensor, labels: Tensor, args: dict[str, float]) -> Tensor:
    """PaddleClas MultiLabelLoss per row: sigmoid BCE of the student's logits against the
    attribute vector, weighted by ratio2weight with weight_ratio; summed over the attributes
    with size_sum, else averaged (PaddleClas's mean over all B x C terms)."""
    gt = labels[:, 0, :] if labels.ndim == 3 else labels
    cost = F.binary_cross_entropy_with_logits(student_logits, gt, reduction="none")
    if args["weight_ratio"]:
        cost = cost * _ratio_weights(labels)
    return cost.sum(axis=1) if args["size_sum"] else cost.mean(axis=1)


def _js_rows(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    log_s = F.log_softmax(student_logits, axis=1)
    s = paddle.exp(log_s)
    t = _as_target(teacher_probs, student_logits)
    m = (s + t) / 2.0
    log_m = paddle.log(paddle.clip(m, min=_TINY))
    kl_sm = (s * (log_s - log_m)).sum(axis=1)
    kl_tm = (_xlogy(t, t) - _xlogy(t, m)).sum(axis=1)
    return (kl_sm + kl_tm) / 2.0


def _kl_rows(student_logits: Tensor, teacher_probs: Tensor, temperature: float) -> Tensor:
    t_t = _temper(_as_target(teacher_probs, student_logits), temperature)
    log_s_t = F.log_softmax(student_logits / temperature, axis=1)
    cross = -(t_t * log_s_t).sum(axis=1)
    # KL = cross-entropy - entropy; written this way a zero in t_T contributes exactly 0.
    return (cross + _neg_entropy_rows(t_t)) * (temperature**2)


def _ce_soft_rows(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    t = _as_target(teacher_probs, student_logits)
    return -(t * F.log_softmax(student_logits, axis=1)).sum(axis=1)


def _gt_ce_rows(student_logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    mask, safe = _labels_1d(labels)
    log_s = F.log_softmax(student_logits, axis=1)
    picked = paddle.take_along_axis(log_s, safe.unsqueeze(1), axis=1).squeeze(1)
    return -picked * mask.astype(log_s.dtype), mask


def _dkd_rows(
    student_logits: Tensor,
    teacher_probs: Tensor,
    labels: Tensor,
    temperature: float,
    alpha: float,
    beta: float,
) -> tuple[Tensor, Tensor]:
    """alpha*TCKD + beta*NCKD per row (0 on unlabeled rows) and the labeled mask.

    TCKD: KL between the binary (target, non-target) distributions of teacher and student.
    NCKD: KL between the distributions over the non-target classes, each renormalised.
    Both at temperature T and scaled by T^2, as in PaddleClas DKDLoss / mdistiller. The
    student side is computed in log space (log p_gt, log(1 - p_gt) from logsumexp) so that
    confident students do not produce log(0).
    """
    mask, safe = _labels_1d(labels)
    num_classes = student_logits.shape[1]
    gt = F.one_hot(safe, num_classes).astype("bool")

    z = student_logits / temperature
    lse_all = paddle.logsumexp(z, axis=1)
    z_other = paddle.where(gt, paddle.full_like(z, _NEG_BIG), z)
    lse_other = paddle.logsumexp(z_other, axis=1)
    z_gt = paddle.take_along_axis(z, safe.unsqueeze(1), axis=1).squeeze(1)
    log_s_gt = z_gt - lse_all
    log_s_other = lse_other - lse_all

    t_t = _temper(_as_target(teacher_probs, student_logits), temperature)
    zero = paddle.zeros_like(t_t)
    t_other_part = paddle.where(gt, zero, t_t)
    t_other = t_other_part.sum(axis=1)
    t_gt = paddle.where(gt, t_t, zero).sum(axis=1)

    tckd = _xlogy(t_gt, t_gt) - t_gt * log_s_gt + _xlogy(t_other, t_other) - t_other * log_s_other

    t_nt = t_other_part / paddle.clip(t_other, min=_TINY).unsqueeze(1)
    log_s_nt = F.log_softmax(z_other, axis=1)
    # t_nt is exactly 0 on the gt column, so the -1e9 there never enters the sum.
    nckd = _neg_entropy_rows(t_nt) - (t_nt * log_s_nt).sum(axis=1)

    rows = (alpha * tckd + beta * nckd) * (temperature**2)
    return rows * mask.astype(rows.dtype), mask


# --------------------------------------------------------------------------- public losses


def dml_loss(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """PaddleClas DMLLoss ("SSLD JS loss"): symmetric KL with eps=1e-12, batch mean.

    Kept bit-for-bit in formula with PaddleClas so SSLD recipes reproduce; not a true JS.
    """
    return _dml_rows(student_logits, teacher_probs).mean()


def js_loss(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """True Jensen-Shannon divergence (mixture form), bounded by ln 2; finite with zeros."""
    return _js_rows(student_logits, teacher_probs).mean()


def kl_loss(student_logits: Tensor, teacher_probs: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD, KL(t_T || s_T) * T^2, with the teacher tempered from probabilities."""
    return _kl_rows(student_logits, teacher_probs, float(temperature)).mean()


def ce_soft_loss(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """Soft cross-entropy -sum t log s (PaddleClas DistillationCELoss against the teacher)."""
    return _ce_soft_rows(student_logits, teacher_probs).mean()


def gt_ce_loss(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Hard-label CE averaged over labeled rows (label != -1); 0, not NaN, if none are."""
    rows, mask = _gt_ce_rows(student_logits, labels)
    return _masked_mean(rows, mask)


def dkd_loss(
    student_logits: Tensor,
    teacher_probs: Tensor,
    labels: Tensor,
    temperature: float = 1.0,
    alpha: float = 1.0,
    beta: float = 1.0,
) -> Tensor:
    """Decoupled KD (Zhao et al. 2022) averaged over labeled rows; 0 if none are labeled.

    DKD needs the gt class, so unlabeled rows are excluded (PaddleClas divides by the full
    batch; with every row labeled the two agree).
    """
    rows, mask = _dkd_rows(
        student_logits, teacher_probs, labels, float(temperature), float(alpha), float(beta)
    )
    return _masked_mean(rows, mask)


def _argmax_where_unlabeled(teacher_probs: Tensor, labels: Tensor, always: bool) -> Tensor:
    """The hard target of SKD/WSL: the label, or the teacher's argmax where there is none
    (PaddleClas's target=None path) or when `use_target_as_gt` asks for it."""
    mask, safe = _labels_1d(labels)
    top = teacher_probs.argmax(axis=1).astype("int64")
    return top if always else paddle.where(mask, safe, top)


def _pick(log_probs: Tensor, index: Tensor) -> Tensor:
    return paddle.take_along_axis(log_probs, index.unsqueeze(1), axis=1).squeeze(1)


def _dist_rows(
    student_logits: Tensor, teacher_probs: Tensor, beta: float, gamma: float
) -> tuple[Tensor, None]:
    """PaddleClas DISTLoss: beta*(1 - mean row Pearson) + gamma*(1 - mean column Pearson) of
    the two probability matrices. Row r carries beta*(1 - rho_r) + gamma*intra, so the mean
    of the rows is the loss."""
    y_s = F.softmax(student_logits, axis=1)
    y_t = _as_target(teacher_probs, y_s)

    def pearson(a: Tensor, b: Tensor) -> Tensor:
        a = a - a.mean(axis=1, keepdim=True)
        b = b - b.mean(axis=1, keepdim=True)
        return (a * b).sum(axis=1) / (a.norm(axis=1) * b.norm(axis=1) + 1e-8)

    intra = 1.0 - pearson(y_s.transpose([1, 0]), y_t.transpose([1, 0])).mean()
    return beta * (1.0 - pearson(y_s, y_t)) + gamma * intra, None


def _skd_rows(
    student_logits: Tensor,
    teacher_probs: Tensor,
    labels: Tensor,
    temperature: float,
    multiplier: float,
    alpha: float,
    use_target_as_gt: bool,
) -> tuple[Tensor, None]:
    """PaddleClas SKDLoss per row. The teacher's logits are log t up to a per-row constant,
    which the layer norm removes, so LN(log t) is exactly LN(teacher logits)."""
    t = _as_target(teacher_probs, student_logits)
    target = _argmax_where_unlabeled(t, labels, use_target_as_gt)

    def norm(x: Tensor) -> Tensor:
        mean = x.mean(axis=1, keepdim=True)
        var = ((x - mean) ** 2).mean(axis=1, keepdim=True)
        return (x - mean) / paddle.sqrt(var + 1e-7) * multiplier

    z_t = norm(paddle.log(paddle.clip(t, min=_TINY)))
    z_s = norm(student_logits)
    kd = -(F.softmax(z_t / temperature, axis=1) * F.log_softmax(z_s / temperature, axis=1)).sum(
        axis=1
    )
    ce = -_pick(F.log_softmax(z_s, axis=1), target)  # PaddleClas: CE on the normed logits
    return alpha * kd * temperature**2 + (1.0 - alpha) * ce, None


def _wsl_rows(
    student_logits: Tensor,
    teacher_probs: Tensor,
    labels: Tensor,
    temperature: float,
    use_target_as_gt: bool,
) -> tuple[Tensor, None]:
    """PaddleClas WSLLoss per row: T^2 * KL-style soft CE at T, weighted by
    1 - exp(-CE_student / CE_teacher) on the hard target (no gradient through the weight)."""
    t = _as_target(teacher_probs, student_logits)
    target = _argmax_where_unlabeled(t, labels, use_target_as_gt)
    ce_s = -_pick(F.log_softmax(student_logits.detach(), axis=1), target)
    ce_t = -_pick(paddle.log(paddle.clip(t, min=_TINY)), target)
    ratio = paddle.clip(ce_s / (ce_t + 1e-7), min=0.0)
    kd = -(_temper(t, temperature) * F.log_softmax(student_logits / temperature, axis=1)).sum(
        axis=1
    )
    return temperature**2 * kd * (1.0 - paddle.exp(-ratio)), None


# --------------------------------------------------------------------------- combined loss


@dataclass(frozen=True)
class LossKind:
    """One way of scoring the student against its target. Everything else about a loss (the
    PaddleClas names it answers to, its arguments and defaults, the overlay summary, which
    codecs can feed it) is derived from this entry, so adding a loss is one entry here."""

    kind: str
    rows: Callable[[Tensor, Tensor, Tensor, dict[str, float]], tuple[Tensor, Tensor | None]]
    params: dict[str, float]  # argument -> default
    paddleclas_names: tuple[str, ...]
    needs_labels: bool
    summary: str
    # True if the loss is linear in the target for these arguments: then a sampled target
    # (counts / N, an unbiased estimate of t) gives an unbiased loss and gradient.
    linear: Callable[[dict[str, float]], bool] = lambda _: False
    # Why the loss needs every class's true probability for these arguments (tempering
    # t ** (1/T), logs of tail classes, a layer norm over all logits), or None. A target whose
    # tail is invented (topk) would then be changed, so such pairs are refused.
    needs_full: Callable[[dict[str, float]], str | None] = lambda _: None
    uses_target: bool = True
    # False if the loss couples the rows of a batch (DIST's per-class correlation): its rows
    # then only carry the batch value, and GTFusion's per-row fusion is refused.
    per_row: bool = True
    # True if, for these arguments, the loss is a function of the two distributions alone
    # (no labels, no per-class structure, no tempering), so it is exact on a partition of the
    # classes: a top-k target is then scored on its k classes plus one rest bucket.
    buckets: Callable[[dict[str, float]], bool] = lambda _: False


def _t(args: dict[str, float]) -> float:
    return float(args["temperature"])


def _tempering(args: dict[str, float]) -> str | None:
    if _t(args) == 1.0:
        return None
    return "tempering (T != 1) would give the evenly spread tail far more mass than the teacher's"


def _always(reason: str) -> Callable[[dict[str, float]], str | None]:
    return lambda _: reason


LOSSES: dict[str, LossKind] = {
    entry.kind: entry
    for entry in (
        LossKind(
            "dml",
            lambda s, t, y, a: (_dml_class_rows(s, t, y, a), None),
            {"weight_ratio": False, "sum_across_class_dim": False},
            ("DistillationDMLLoss", "DMLLoss"),
            False,
            "symmetric KL (SSLD's JS loss), PaddleClas DMLLoss",
            needs_full=lambda a: (
                "it weights each class's term by the list's label ratio"
                if a["weight_ratio"]
                else None
            ),
            buckets=lambda a: not (a["weight_ratio"] or a["sum_across_class_dim"]),
        ),
        LossKind(
            "js",
            lambda s, t, y, a: (_js_rows(s, t), None),
            {},
            ("DistillationJSLoss", "JSLoss"),
            False,
            "Jensen-Shannon divergence, mixture form",
            buckets=lambda _: True,
        ),
        LossKind(
            "kl",
            lambda s, t, y, a: (_kl_rows(s, t, _t(a)), None),
            {"temperature": 4.0},
            ("DistillationKLDivLoss", "KLDivLoss"),
            False,
            "Hinton KD: KL(t_T || s_T) * T^2",
            linear=lambda a: _t(a) == 1.0,
            needs_full=_tempering,
            buckets=lambda a: _t(a) == 1.0,
        ),
        LossKind(
            "ce_soft",
            lambda s, t, y, a: (_ce_soft_rows(s, t), None),
            {},
            ("DistillationCELoss",),
            False,
            "soft cross-entropy -sum t log s",
            linear=lambda _: True,
            buckets=lambda _: True,
        ),
        LossKind(
            "gt_ce",
            lambda s, t, y, a: _gt_ce_rows(s, y),
            {},
            ("DistillationGTCELoss", "CELoss"),
            True,
            "cross-entropy with the ground-truth label (labeled rows only)",
            linear=lambda _: True,
            uses_target=False,
        ),
        LossKind(
            "multilabel",
            lambda s, t, y, a: (_multilabel_rows(s, y, a), None),
            {"weight_ratio": False, "size_sum": False},
            ("DistillationMultiLabelLoss", "MultiLabelLoss"),
            True,
            "sigmoid BCE with the ground-truth attributes (multi-label)",
            linear=lambda _: True,
            uses_target=False,
        ),
        LossKind(
            "dkd",
            lambda s, t, y, a: _dkd_rows(s, t, y, _t(a), float(a["alpha"]), float(a["beta"])),
            {"temperature": 1.0, "alpha": 1.0, "beta": 1.0},
            ("DistillationDKDLoss", "DKDLoss"),
            True,
            "decoupled KD (target and non-target parts), labeled rows only",
            needs_full=_tempering,
        ),
        LossKind(
            "dist",
            lambda s, t, y, a: _dist_rows(s, t, float(a["beta"]), float(a["gamma"])),
            {"beta": 1.0, "gamma": 1.0},
            ("DistillationDISTLoss", "DISTLoss"),
            False,
            "DIST: Pearson correlation between and within classes (batch-level)",
            per_row=False,
        ),
        LossKind(
            "skd",
            lambda s, t, y, a: _skd_rows(
                s,
                t,
                y,
                _t(a),
                float(a["multiplier"]),
                float(a["alpha"]),
                bool(a["use_target_as_gt"]),
            ),
            {"temperature": 1.0, "multiplier": 2.0, "alpha": 0.9, "use_target_as_gt": False},
            ("DistillationSKDLoss", "SKDLoss"),
            False,
            "spherical KD: CE between layer-normed logits, plus hard CE",
            needs_full=_always("it layer-normalises all of the teacher's logits"),
        ),
        LossKind(
            "wsl",
            lambda s, t, y, a: _wsl_rows(s, t, y, _t(a), bool(a["use_target_as_gt"])),
            {"temperature": 2.0, "use_target_as_gt": False},
            ("DistillationWSLLoss", "WSLLoss"),
            False,
            "weighted soft labels: KD weighted by the student/teacher CE ratio",
            needs_full=_always("it reads the teacher's log-probability of the label class"),
        ),
    )
}


def _bucketed(student_logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Student logits and teacher target over the k + 1 buckets of a top-k target (C + 1
    columns, zero on the unstored classes). The zero classes' logits become -inf-like and one
    extra logit, their logsumexp, carries their mass: softmax of the result is exactly the
    student's distribution over the buckets."""
    stored = target[:, :-1] > 0
    big = paddle.full_like(student_logits, _NEG_BIG)
    rest = paddle.logsumexp(paddle.where(stored, big, student_logits), axis=1, keepdim=True)
    z = paddle.concat([paddle.where(stored, student_logits, big), rest], axis=1)
    return z, target


def _spread(target: Tensor) -> Tensor:
    """A top-k target as a dense (B, C) distribution: the rest mass spread evenly over the
    zero classes, for the losses that need one probability per class."""
    probs, rest = target[:, :-1], target[:, -1:]
    zero = (probs <= 0).astype(probs.dtype)
    return probs + zero * rest / paddle.clip(zero.sum(axis=1, keepdim=True), min=1.0)


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

    @property
    def uses_labels(self) -> bool:
        """True if any term or the fusion needs ground-truth labels."""
        return self.gt_alpha is not None or any(LOSSES[k].needs_labels for k, _, _ in self.terms)

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
                "buckets": _bucketed(student_logits, teacher_probs),
                "dense": (student_logits, _spread(teacher_probs)),
            }
        for (kind, weight, kwargs), name in zip(self.terms, self._log_names, strict=True):
            form = "buckets" if "buckets" in forms and LOSSES[kind].buckets(kwargs) else "dense"
            rows, mask = LOSSES[kind].rows(*forms[form], labels, kwargs)
            value = rows.mean() if mask is None else _masked_mean(rows, mask)
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
        ce_rows, lab = _gt_ce_rows(student_logits, labels)
        fused = paddle.where(lab, alpha * kd_rows + (1.0 - alpha) * ce_rows, kd_rows)
        logs["kd"] = float(kd_total.item())
        logs["gt_fusion_ce"] = float(_masked_mean(ce_rows, lab).item())
        return fused.mean(), logs


# --------------------------------------------------------------------------- config mapping

_NAME_MAP: dict[str, str] = {
    name: entry.kind for entry in LOSSES.values() for name in entry.paddleclas_names
}
_GT_FUSION = "GTFusion"

# Losses on intermediate features/embeddings: the cache stores teacher outputs only.
_FEATURE_LOSSES = frozenset(
    {
        "AFDLoss",
        "MGDLoss",
        "PEFDLoss",
        "RKdAngle",
        "RkdDistance",
        "RKDLoss",
        "DistillationDistanceLoss",
        "DistillationRKDLoss",
        "DistillationPairLoss",
        "DistillationMGDLoss",
        "DistillationPEFDLoss",
        "DistillationCRDLoss",
        "CRDLoss",
        "DistanceLoss",
    }
)

# Args that do not change the maths here; `key` and `act` are checked for their value.
_HARMLESS = frozenset({"weight", "model_name_pairs", "model_names", "key", "name", "act"})


def _number(value: Any, where: str, *, positive: bool = False, nonneg: bool = False) -> float:
    """A finite real number from YAML (bools rejected), with the key path in the error."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ConfigError(f"{where} must be finite, got {value!r}")
    if positive and out <= 0:
        raise ConfigError(f"{where} must be > 0, got {value!r}")
    if nonneg and out < 0:
        raise ConfigError(f"{where} must be >= 0, got {value!r}")
    return out


def _parse_gt_fusion(args: dict, where: str) -> float:
    extra = set(args) - {"alpha"}
    if extra:
        raise ConfigError(f"{where}.{sorted(extra)[0]}: unknown argument (GTFusion takes alpha)")
    if "alpha" not in args:
        raise ConfigError(f"{where}.alpha: required")
    alpha = _number(args["alpha"], f"{where}.alpha")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"{where}.alpha must be in [0, 1], got {alpha}")
    return alpha


def _parse_term(kind: str, args: dict, where: str) -> tuple[float, dict]:
    defaults = LOSSES[kind].params
    for arg in args:
        if arg not in _HARMLESS and arg not in defaults:
            raise ConfigError(f"{where}.{arg}: unsupported argument for offline distillation")
    if args.get("key") is not None:
        raise ConfigError(f"{where}.key: only null is supported (students output plain logits)")
    if "act" in args and args["act"] != "softmax":
        raise ConfigError(f"{where}.act: only 'softmax' is supported, got {args['act']!r}")
    weight = _number(args.get("weight", 1.0), f"{where}.weight", nonneg=True)
    kwargs: dict[str, float] = {}
    for arg, default in defaults.items():
        value = args.get(arg, default)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{arg} must be true or false, got {value!r}")
            kwargs[arg] = value
            continue
        kwargs[arg] = _number(value, f"{where}.{arg}", positive=(arg == "temperature"))
    return weight, kwargs


def build_loss(loss_train: list, key: str = "Loss.Train") -> DistillLoss:
    """Map PaddleClas `Loss.Train` entries onto the logit losses above.

    Anything that would silently change the maths (unknown names, feature losses, args we
    do not honour) is a ConfigError naming the exact key, so a copied PaddleClas config
    either means the same thing offline or fails loudly.
    """
    if not isinstance(loss_train, list) or not loss_train:
        raise ConfigError(f"{key}: must be a non-empty list of one-key loss entries")
    supported = ", ".join([*_NAME_MAP, _GT_FUSION])
    terms: list[tuple[str, float, dict]] = []
    gt_alpha: float | None = None
    for i, entry in enumerate(loss_train):
        where = f"{key}.{i}"
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ConfigError(f"{where}: each entry must be a one-key mapping {{LossName: args}}")
        ((name, args),) = entry.items()
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ConfigError(f"{where}.{name}: arguments must be a mapping, got {args!r}")
        loc = f"{where}.{name}"
        if name == _GT_FUSION:
            if gt_alpha is not None:
                raise ConfigError(f"{loc}: GTFusion given more than once")
            gt_alpha = _parse_gt_fusion(args, loc)
            continue
        if name in _FEATURE_LOSSES:
            raise ConfigError(
                f"{loc}: feature-based loss; offline distillation caches teacher outputs "
                f"only and needs output (logit) losses only. Supported: {supported}"
            )
        if name not in _NAME_MAP:
            raise ConfigError(f"{where}: unknown loss {name!r}; supported: {supported}")
        kind = _NAME_MAP[name]
        weight, kwargs = _parse_term(kind, args, loc)
        terms.append((kind, weight, kwargs))
    if not terms:
        raise ConfigError(f"{key}: GTFusion needs at least one distillation loss to fuse with")
    return DistillLoss(terms, gt_alpha=gt_alpha)


def needs_dense_target(loss: DistillLoss) -> bool:
    """True if some term is not linear in the target, so a sampled (counts/N) target is biased.

    Linear terms (soft CE, KL at T=1, hard CE) have an unbiased gradient under an unbiased
    estimate of t. DML and JS take logs of t; KL at T != 1 and DKD (both tempering t ** (1/T)
    and renormalising the non-target mass) are non-linear too.
    """
    return any(not LOSSES[kind].linear(kwargs) for kind, _, kwargs in loss.terms)


# ------------------------------------------------------------------ codec x loss pairing

EXACT, UNBIASED, BUCKETED, APPROXIMATE, REFUSED = (
    "exact",
    "unbiased",
    "buckets",
    "approximate",
    "refused",
)


def pairing(target: str, kind: str, args: dict[str, float]) -> tuple[str, str]:
    """(status, why) of feeding a codec whose decoded target is `target` (a Codec.target:
    exact, topk or sampled; or spread, an ensemble's dense mixture with a top-k member) to
    the loss `kind` with `args`. One rule for train-student, the overlay summary and the
    README table."""
    entry = LOSSES[kind]
    if not entry.uses_target:
        return EXACT, "uses the labels only"
    if target == "exact":
        return EXACT, "the full distribution is stored"
    if target == "sampled":
        if entry.linear(args):
            return UNBIASED, "linear in the target, so counts/N give an unbiased loss"
        return REFUSED, "not linear in the target, so a sampled target biases it"
    if target == "topk" and entry.buckets(args):
        return BUCKETED, "scored on the k stored classes plus one rest bucket, as stored"
    if target in ("topk", "spread"):
        reason = entry.needs_full(args)
        if reason:
            return REFUSED, reason
        return APPROXIMATE, "exact on the k stored classes and the rest mass; tail spread evenly"
    raise ValueError(f"unknown codec target {target!r}")


def check_pairing(codec_name: str, target: str, loss: DistillLoss, key: str) -> None:
    """Refuse a cache whose codec would silently change what `loss` computes."""
    for i, (kind, _, kwargs) in enumerate(loss.terms):
        status, why = pairing(target, kind, kwargs)
        if status == REFUSED:
            name = LOSSES[kind].paddleclas_names[0]
            raise ConfigError(
                f"{key}.{i}: {name}{_args_text(kwargs)} with codec {codec_name!r}: {why}; "
                "dump the cache with Offline.codec=fp16"
                + (", or use temperature 1" if _tempering_only(kind, kwargs) else "")
                + (
                    ", or a loss linear in the target (DistillationCELoss, KLDivLoss at "
                    "temperature 1)"
                    if target == "sampled"
                    else ""
                )
            )


def _tempering_only(kind: str, args: dict[str, float]) -> bool:
    return (
        LOSSES[kind].needs_full(args) is not None
        and LOSSES[kind].needs_full({**args, "temperature": 1.0}) is None
    )


def _args_text(args: dict[str, float]) -> str:
    shown = [f"{k} {v}" if isinstance(v, bool) else f"{k} {v:g}" for k, v in args.items()]
    return f" ({', '.join(shown)})" if args else ""
