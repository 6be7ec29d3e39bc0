"""PaddleClas `Loss.Train` entries -> a DistillLoss: names, arguments and their key paths.

Anything that would silently change the maths (unknown names, feature losses, args we do not
honour) is a ConfigError naming the exact key, so a copied PaddleClas config either means the
same thing offline or fails loudly.
"""

from __future__ import annotations

import math
from typing import Any

from offline_ssld.errors import ConfigError
from offline_ssld.losses.combine import DistillLoss
from offline_ssld.losses.registry import LOSSES

# PaddleClas loss name -> registry kind
NAME_MAP: dict[str, str] = {
    name: entry.kind for entry in LOSSES.values() for name in entry.paddleclas_names
}
GT_FUSION = "GTFusion"  # the offline extension fusing ground-truth CE per row (combine)

# Losses on intermediate features/embeddings: the cache stores teacher outputs only.
FEATURE_LOSSES = frozenset(
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
    supported = ", ".join([*NAME_MAP, GT_FUSION])
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
        if name == GT_FUSION:
            if gt_alpha is not None:
                raise ConfigError(f"{loc}: GTFusion given more than once")
            gt_alpha = _parse_gt_fusion(args, loc)
            continue
        if name in FEATURE_LOSSES:
            raise ConfigError(
                f"{loc}: feature-based loss; offline distillation caches teacher outputs "
                f"only and needs output (logit) losses only. Supported: {supported}"
            )
        if name not in NAME_MAP:
            raise ConfigError(f"{where}: unknown loss {name!r}; supported: {supported}")
        kind = NAME_MAP[name]
        weight, kwargs = _parse_term(kind, args, loc)
        terms.append((kind, weight, kwargs))
    if not terms:
        raise ConfigError(f"{key}: GTFusion needs at least one distillation loss to fuse with")
    return DistillLoss(terms, gt_alpha=gt_alpha)
