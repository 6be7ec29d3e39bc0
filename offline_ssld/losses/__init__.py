"""Distillation losses on the student's logits and a dense teacher probability matrix.

functional: the maths, row by row; registry: one self-describing entry per loss; combine: the
weighted (and GTFusion-fused) sum; names: PaddleClas Loss.Train entries -> a DistillLoss;
pairing: which codec can feed which loss.
"""

from offline_ssld.losses.combine import DistillLoss
from offline_ssld.losses.functional import (
    ce_soft_loss,
    dkd_loss,
    dml_loss,
    gt_ce_loss,
    js_loss,
    kl_loss,
)
from offline_ssld.losses.names import NAME_MAP, build_loss
from offline_ssld.losses.pairing import check_pairing, needs_dense_target, pairing
from offline_ssld.losses.registry import LOSSES, LossKind

__all__ = [
    "LOSSES",
    "NAME_MAP",
    "DistillLoss",
    "LossKind",
    "build_loss",
    "ce_soft_loss",
    "check_pairing",
    "dkd_loss",
    "dml_loss",
    "gt_ce_loss",
    "js_loss",
    "kl_loss",
    "needs_dense_target",
    "pairing",
]
