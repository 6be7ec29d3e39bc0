"""The loss registry: one self-describing entry per way of scoring the student.

Everything else about a loss (the PaddleClas names it answers to, its arguments and defaults,
which labels it reads, the overlay summary, which codecs can feed it) is read from its entry,
so adding a loss is one row function in losses.functional and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from paddle import Tensor

from offline_ssld.losses.functional import (
    ce_soft_rows,
    dist_rows,
    dkd_rows,
    dml_class_rows,
    gt_ce_rows,
    js_rows,
    kl_rows,
    multilabel_rows,
    skd_rows,
    wsl_rows,
)

Args = dict[str, float]


def _never(_: Args) -> bool:
    return False


def _no_reason(_: Args) -> str | None:
    return None


@dataclass(frozen=True, kw_only=True)
class LossKind:
    """One way of scoring the student against its target, and what it reads."""

    kind: str
    rows: Callable[[Tensor, Tensor, Tensor, Args], tuple[Tensor, Tensor | None]]
    params: Args  # argument -> default
    paddleclas_names: tuple[str, ...]
    summary: str
    # True if, for these arguments, the value depends on the ground-truth labels (class ids,
    # or attribute vectors under Global.use_multilabel).
    needs_labels: Callable[[Args], bool] = _never
    # True if the labels it reads (for some arguments) are one class id per image, which a
    # multi-label batch (attribute vectors) does not have.
    reads_class_labels: bool = False
    # True if the loss is linear in the target for these arguments: then a sampled target
    # (counts / N, an unbiased estimate of t) gives an unbiased loss and gradient.
    linear: Callable[[Args], bool] = _never
    # Why the loss needs every class's true probability for these arguments (tempering
    # t ** (1/T), logs of tail classes, a layer norm over all logits), or None. A target whose
    # tail is invented (topk) would then be changed, so such pairs are refused.
    needs_full: Callable[[Args], str | None] = _no_reason
    uses_target: bool = True
    # False if the loss couples the rows of a batch (DIST's per-class correlation): its rows
    # then only carry the batch value, and GTFusion's per-row fusion is refused.
    per_row: bool = True
    # True if, for these arguments, the loss is a function of the two distributions alone
    # (no labels, no per-class structure, no tempering), so it is exact on a partition of the
    # classes: a top-k target is then scored on its k classes plus one rest bucket.
    buckets: Callable[[Args], bool] = _never
    # True if swapping student and teacher gives the same loss, so PaddleClas's
    # model_name_pairs [[Teacher, Student]] means the same as [[Student, Teacher]].
    symmetric: bool = False
    # Names PaddleClas accepts in Loss.Eval for this loss; PaddleClas only reports them, so
    # they are accepted and not computed (Metric.Eval is what we report).
    eval_names: tuple[str, ...] = ()


def _t(args: Args) -> float:
    return float(args["temperature"])


def _tempering(args: Args) -> str | None:
    if _t(args) == 1.0:
        return None
    return "tempering (T != 1) would give the evenly spread tail far more mass than the teacher's"


def _always(reason: str) -> Callable[[Args], str | None]:
    return lambda _: reason


def _yes(_: Args) -> bool:
    return True


def _unless_target_as_gt(args: Args) -> bool:
    """SKD and WSL read the label where a row has one, unless use_target_as_gt."""
    return not args["use_target_as_gt"]


LOSSES: dict[str, LossKind] = {
    entry.kind: entry
    for entry in (
        LossKind(
            kind="dml",
            rows=lambda s, t, y, a: (dml_class_rows(s, t, y, a), None),
            params={"weight_ratio": False, "sum_across_class_dim": False},
            paddleclas_names=("DistillationDMLLoss", "DMLLoss"),
            summary="symmetric KL (SSLD's JS loss), PaddleClas DMLLoss",
            needs_labels=lambda a: bool(a["weight_ratio"]),
            needs_full=lambda a: (
                "it weights each class's term by the list's label ratio"
                if a["weight_ratio"]
                else None
            ),
            buckets=lambda a: not (a["weight_ratio"] or a["sum_across_class_dim"]),
            symmetric=True,
        ),
        LossKind(
            kind="js",
            rows=lambda s, t, y, a: (js_rows(s, t), None),
            params={},
            paddleclas_names=("DistillationJSLoss", "JSLoss"),
            summary="Jensen-Shannon divergence, mixture form",
            buckets=_yes,
            symmetric=True,
        ),
        LossKind(
            kind="kl",
            rows=lambda s, t, y, a: (kl_rows(s, t, _t(a)), None),
            params={"temperature": 4.0},
            paddleclas_names=("DistillationKLDivLoss", "KLDivLoss"),
            summary="Hinton KD: KL(t_T || s_T) * T^2",
            linear=lambda a: _t(a) == 1.0,
            needs_full=_tempering,
            buckets=lambda a: _t(a) == 1.0,
        ),
        LossKind(
            kind="ce_soft",
            rows=lambda s, t, y, a: (ce_soft_rows(s, t), None),
            params={},
            paddleclas_names=("DistillationCELoss",),
            summary="soft cross-entropy -sum t log s",
            linear=_yes,
            buckets=_yes,
            eval_names=("DistillationCELoss",),
        ),
        LossKind(
            kind="gt_ce",
            rows=lambda s, t, y, a: gt_ce_rows(s, y),
            params={},
            paddleclas_names=("DistillationGTCELoss", "CELoss"),
            summary="cross-entropy with the ground-truth label (labeled rows only)",
            needs_labels=_yes,
            reads_class_labels=True,
            linear=_yes,
            uses_target=False,
            eval_names=("CELoss", "DistillationGTCELoss"),
        ),
        LossKind(
            kind="multilabel",
            rows=lambda s, t, y, a: (multilabel_rows(s, y, a), None),
            params={"weight_ratio": False, "size_sum": False},
            paddleclas_names=("DistillationMultiLabelLoss", "MultiLabelLoss"),
            summary="sigmoid BCE with the ground-truth attributes (multi-label)",
            needs_labels=_yes,
            linear=_yes,
            uses_target=False,
            eval_names=("MultiLabelLoss",),
        ),
        LossKind(
            kind="dkd",
            rows=lambda s, t, y, a: dkd_rows(s, t, y, _t(a), float(a["alpha"]), float(a["beta"])),
            params={"temperature": 1.0, "alpha": 1.0, "beta": 1.0},
            paddleclas_names=("DistillationDKDLoss", "DKDLoss"),
            summary="decoupled KD (target and non-target parts), labeled rows only",
            needs_labels=_yes,
            reads_class_labels=True,
            needs_full=_tempering,
        ),
        LossKind(
            kind="dist",
            rows=lambda s, t, y, a: dist_rows(s, t, float(a["beta"]), float(a["gamma"])),
            params={"beta": 1.0, "gamma": 1.0},
            paddleclas_names=("DistillationDISTLoss", "DISTLoss"),
            summary="DIST: Pearson correlation between and within classes (batch-level)",
            per_row=False,
        ),
        LossKind(
            kind="skd",
            rows=lambda s, t, y, a: skd_rows(
                s,
                t,
                y,
                _t(a),
                float(a["multiplier"]),
                float(a["alpha"]),
                bool(a["use_target_as_gt"]),
            ),
            params={
                "temperature": 1.0,
                "multiplier": 2.0,
                "alpha": 0.9,
                "use_target_as_gt": False,
            },
            paddleclas_names=("DistillationSKDLoss", "SKDLoss"),
            summary="spherical KD: CE between layer-normed logits, plus hard CE",
            needs_labels=_unless_target_as_gt,
            reads_class_labels=True,
            needs_full=_always("it layer-normalises all of the teacher's logits"),
        ),
        LossKind(
            kind="wsl",
            rows=lambda s, t, y, a: wsl_rows(s, t, y, _t(a), bool(a["use_target_as_gt"])),
            params={"temperature": 2.0, "use_target_as_gt": False},
            paddleclas_names=("DistillationWSLLoss", "WSLLoss"),
            summary="weighted soft labels: KD weighted by the student/teacher CE ratio",
            needs_labels=_unless_target_as_gt,
            reads_class_labels=True,
            needs_full=_always("it reads the teacher's log-probability of the label class"),
        ),
    )
}
