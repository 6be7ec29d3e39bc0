"""The loss maths: per-row functions of the student's logits and a dense teacher PROBABILITY
matrix, and the batch-mean losses built from them.

Offline, the teacher's logits are gone: the cache decodes to probabilities (softmax of fp16
logits, sampled counts/N with exact zeros, or top-k probabilities plus one "rest" bucket).
Every loss here therefore takes probabilities, never teacher logits, and must stay finite
when the target contains exact zeros (0 * log 0 is taken as 0).

A top-k target has C + 1 columns (Codec.decode_target): the stored classes, zeros, and the
rest mass. `bucketed` scores the student on the same k + 1 buckets; `spread` gives the other
losses the rest spread evenly over the zero classes (losses.pairing says which loss gets which).

Each loss is a per-row function (`*_rows`) so that losses.combine can fuse the KD terms with
ground-truth cross-entropy row by row.
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import Tensor

DML_EPS = 1e-12  # PaddleClas DMLLoss epsilon, kept so DML values match PaddleClas exactly
_TINY = 1e-30  # floor for logs/denominators of quantities that are legitimately ~0
_NEG_BIG = -1e9  # "minus infinity" that keeps gradients finite when masking a logit

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


def masked_mean(rows: Tensor, mask: Tensor) -> Tensor:
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


def dml_class_rows(
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


def multilabel_rows(student_logits: Tensor, labels: Tensor, args: dict[str, float]) -> Tensor:
    """PaddleClas MultiLabelLoss per row: sigmoid BCE of the student's logits against the
    attribute vector, weighted by ratio2weight with weight_ratio; summed over the attributes
    with size_sum, else averaged (PaddleClas's mean over all B x C terms)."""
    gt = labels[:, 0, :] if labels.ndim == 3 else labels
    cost = F.binary_cross_entropy_with_logits(student_logits, gt, reduction="none")
    if args["weight_ratio"]:
        cost = cost * _ratio_weights(labels)
    return cost.sum(axis=1) if args["size_sum"] else cost.mean(axis=1)


def js_rows(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    log_s = F.log_softmax(student_logits, axis=1)
    s = paddle.exp(log_s)
    t = _as_target(teacher_probs, student_logits)
    m = (s + t) / 2.0
    log_m = paddle.log(paddle.clip(m, min=_TINY))
    kl_sm = (s * (log_s - log_m)).sum(axis=1)
    kl_tm = (_xlogy(t, t) - _xlogy(t, m)).sum(axis=1)
    return (kl_sm + kl_tm) / 2.0


def kl_rows(student_logits: Tensor, teacher_probs: Tensor, temperature: float) -> Tensor:
    t_t = _temper(_as_target(teacher_probs, student_logits), temperature)
    log_s_t = F.log_softmax(student_logits / temperature, axis=1)
    cross = -(t_t * log_s_t).sum(axis=1)
    # KL = cross-entropy - entropy; written this way a zero in t_T contributes exactly 0.
    return (cross + _neg_entropy_rows(t_t)) * (temperature**2)


def ce_soft_rows(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    t = _as_target(teacher_probs, student_logits)
    return -(t * F.log_softmax(student_logits, axis=1)).sum(axis=1)


def gt_ce_rows(student_logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    mask, safe = _labels_1d(labels)
    log_s = F.log_softmax(student_logits, axis=1)
    picked = paddle.take_along_axis(log_s, safe.unsqueeze(1), axis=1).squeeze(1)
    return -picked * mask.astype(log_s.dtype), mask


def dkd_rows(
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


# --------------------------------------------------------------------------- batch losses


def dml_loss(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """PaddleClas DMLLoss ("SSLD JS loss"): symmetric KL with eps=1e-12, batch mean.

    Kept bit-for-bit in formula with PaddleClas so SSLD recipes reproduce; not a true JS.
    """
    return _dml_rows(student_logits, teacher_probs).mean()


def js_loss(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """True Jensen-Shannon divergence (mixture form), bounded by ln 2; finite with zeros."""
    return js_rows(student_logits, teacher_probs).mean()


def kl_loss(student_logits: Tensor, teacher_probs: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD, KL(t_T || s_T) * T^2, with the teacher tempered from probabilities."""
    return kl_rows(student_logits, teacher_probs, float(temperature)).mean()


def ce_soft_loss(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """Soft cross-entropy -sum t log s (PaddleClas DistillationCELoss against the teacher)."""
    return ce_soft_rows(student_logits, teacher_probs).mean()


def gt_ce_loss(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Hard-label CE averaged over labeled rows (label != -1); 0, not NaN, if none are."""
    rows, mask = gt_ce_rows(student_logits, labels)
    return masked_mean(rows, mask)


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
    rows, mask = dkd_rows(
        student_logits, teacher_probs, labels, float(temperature), float(alpha), float(beta)
    )
    return masked_mean(rows, mask)


def _argmax_where_unlabeled(teacher_probs: Tensor, labels: Tensor, always: bool) -> Tensor:
    """The hard target of SKD/WSL: the label, or the teacher's argmax where there is none
    (PaddleClas's target=None path) or when `use_target_as_gt` asks for it."""
    mask, safe = _labels_1d(labels)
    top = teacher_probs.argmax(axis=1).astype("int64")
    return top if always else paddle.where(mask, safe, top)


def _pick(log_probs: Tensor, index: Tensor) -> Tensor:
    return paddle.take_along_axis(log_probs, index.unsqueeze(1), axis=1).squeeze(1)


def dist_rows(
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


def skd_rows(
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


def wsl_rows(
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


# --------------------------------------------------------------------------- target forms


def bucketed(student_logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Student logits and teacher target over the k + 1 buckets of a top-k target (C + 1
    columns, zero on the unstored classes). The zero classes' logits become -inf-like and one
    extra logit, their logsumexp, carries their mass: softmax of the result is exactly the
    student's distribution over the buckets."""
    stored = target[:, :-1] > 0
    big = paddle.full_like(student_logits, _NEG_BIG)
    rest = paddle.logsumexp(paddle.where(stored, big, student_logits), axis=1, keepdim=True)
    z = paddle.concat([paddle.where(stored, student_logits, big), rest], axis=1)
    return z, target


def spread(target: Tensor) -> Tensor:
    """A top-k target as a dense (B, C) distribution: the rest mass spread evenly over the
    zero classes, for the losses that need one probability per class."""
    probs, rest = target[:, :-1], target[:, -1:]
    zero = (probs <= 0).astype(probs.dtype)
    return probs + zero * rest / paddle.clip(zero.sum(axis=1, keepdim=True), min=1.0)
