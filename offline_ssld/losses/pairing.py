"""Which codec can feed which loss: one rule for train-student, the overlay summary and the
README table."""

from __future__ import annotations

from offline_ssld.errors import ConfigError
from offline_ssld.losses.combine import DistillLoss
from offline_ssld.losses.registry import LOSSES

EXACT, UNBIASED, BUCKETED, APPROXIMATE, REFUSED = (
    "exact",
    "unbiased",
    "buckets",
    "approximate",
    "refused",
)


def needs_dense_target(loss: DistillLoss) -> bool:
    """True if some term is not linear in the target, so a sampled (counts/N) target is biased.

    Linear terms (soft CE, KL at T=1, hard CE) have an unbiased gradient under an unbiased
    estimate of t. DML and JS take logs of t; KL at T != 1 and DKD (both tempering t ** (1/T)
    and renormalising the non-target mass) are non-linear too.
    """
    return any(not LOSSES[kind].linear(kwargs) for kind, _, kwargs in loss.terms)


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
