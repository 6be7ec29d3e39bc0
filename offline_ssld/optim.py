"""The `Optimizer` section: PaddleClas Momentum, a Cosine or Piecewise lr schedule with linear
warmup, and L2 decay.

The only reader of those keys: `config.check_supported` validates through `check_optimizer`
and training builds through `build_optimizer`, so the supported keys are defined once. The
schedule steps every iteration, as PaddleClas's does with `by_epoch: False`.
"""

from __future__ import annotations

from collections.abc import Iterable

import paddle
from paddle.optimizer.lr import (
    CosineAnnealingDecay,
    LinearWarmup,
    LRScheduler,
    PiecewiseDecay,
)

from offline_ssld.config import as_mapping, get, only_keys
from offline_ssld.errors import ConfigError

OPTIMIZERS = ("Momentum",)
OPTIMIZER_KEYS = ("name", "momentum", "lr", "regularizer")
LR_KEYS: dict[str, tuple[str, ...]] = {
    "Cosine": ("name", "learning_rate", "warmup_epoch", "warmup_start_lr", "eta_min", "by_epoch"),
    "Piecewise": (
        "name",
        "learning_rate",  # accepted as PaddleClas does; Piecewise starts at values[0]
        "decay_epochs",
        "values",
        "warmup_epoch",
        "warmup_start_lr",
        "by_epoch",
    ),
}
REGULARIZERS = ("L2",)
DEFAULT_LR = "Cosine"
DEFAULT_MOMENTUM = 0.9
REGULARIZER_KEYS = ("name", "coeff")


def check_optimizer(cfg: dict) -> None:
    """Refuse any Optimizer key or value `build_optimizer` would not honour, naming it."""
    opt = as_mapping(cfg.get("Optimizer"), "Optimizer")
    if not opt:
        return
    if opt.get("name", OPTIMIZERS[0]) not in OPTIMIZERS:
        raise ConfigError(
            f"Optimizer.name: {opt.get('name')!r} is not supported; supported: "
            f"{', '.join(OPTIMIZERS)}"
        )
    if opt.get("no_weight_decay_name"):
        raise ConfigError(
            "Optimizer.no_weight_decay_name: excluding parameters from weight decay is not "
            "supported; remove it (L2 applies to every parameter)"
        )
    only_keys(opt, "Optimizer", OPTIMIZER_KEYS, ("no_weight_decay_name",))
    lr = as_mapping(opt.get("lr"), "Optimizer.lr")
    name = lr.get("name", DEFAULT_LR)
    if name not in LR_KEYS:
        raise ConfigError(
            f"Optimizer.lr.name: {name!r} is not supported; supported: {', '.join(LR_KEYS)}"
        )
    only_keys(lr, "Optimizer.lr", LR_KEYS[name])
    if lr.get("by_epoch"):
        raise ConfigError(
            "Optimizer.lr.by_epoch: True is not supported; the schedule steps every iteration"
        )
    if name == "Piecewise":
        for needed in ("decay_epochs", "values"):
            if not isinstance(lr.get(needed), list):
                raise ConfigError(f"Optimizer.lr.{needed}: required list for Piecewise")
    reg = as_mapping(opt.get("regularizer"), "Optimizer.regularizer")
    only_keys(reg, "Optimizer.regularizer", REGULARIZER_KEYS)
    if reg and reg.get("name", REGULARIZERS[0]) not in REGULARIZERS:
        raise ConfigError(
            f"Optimizer.regularizer.name: {reg.get('name')!r} is not supported; supported: "
            f"{', '.join(REGULARIZERS)}"
        )


def describe_optimizer(cfg: dict) -> list[str]:
    """What training takes from the Optimizer section, for `offline-ssld overlay`."""
    opt = cfg.get("Optimizer") or {}
    lr = dict(opt.get("lr") or {})
    reg = opt.get("regularizer") or {}
    lr_text = ", ".join(f"{k} {v}" for k, v in lr.items() if k != "name")
    regularizer = f"{reg.get('name', REGULARIZERS[0])} coeff {reg.get('coeff', 0.0)}"
    return [
        f"optimizer: {opt.get('name', OPTIMIZERS[0])}, momentum "
        f"{opt.get('momentum', DEFAULT_MOMENTUM)}, " + (regularizer if reg else "no regularizer"),
        f"lr: {lr.get('name', DEFAULT_LR)} ({lr_text}), stepped every iteration",
    ]


def build_schedule(lr: dict, steps_per_epoch: int, epochs: int) -> LRScheduler:
    """The per-iteration schedule of a checked `Optimizer.lr` section.

    Warmup takes the first `warmup_epoch` epochs and the decay the rest: Cosine anneals over
    the remaining steps, Piecewise boundaries stay at their epochs of the whole run."""
    name = lr.get("name", DEFAULT_LR)
    total = steps_per_epoch * epochs
    warmup = int(round(lr.get("warmup_epoch", 0) * steps_per_epoch))
    sched: LRScheduler
    if name == "Cosine":
        base = float(lr.get("learning_rate", 0.1))
        eta_min = float(lr.get("eta_min", 0.0))
        sched = CosineAnnealingDecay(base, max(1, total - warmup), eta_min)
    else:
        values = lr["values"]
        boundaries = [int(e * steps_per_epoch) - warmup for e in lr["decay_epochs"]]
        sched = PiecewiseDecay(boundaries, values)
        base = values[0]
    if warmup:
        sched = LinearWarmup(sched, warmup, float(lr.get("warmup_start_lr", 0.0)), base)
    return sched


def build_optimizer(
    cfg: dict, parameters: Iterable[paddle.Tensor], steps_per_epoch: int, epochs: int
) -> tuple[paddle.optimizer.Momentum, LRScheduler]:
    """(optimizer, schedule) of the config's Optimizer section; step the schedule per batch."""
    check_optimizer(cfg)
    opt = as_mapping(get(cfg, "Optimizer"), "Optimizer")
    sched = build_schedule(opt.get("lr") or {}, steps_per_epoch, epochs)
    reg = opt.get("regularizer") or {}
    decay = paddle.regularizer.L2Decay(float(reg.get("coeff", 0.0))) if reg else None
    optimizer = paddle.optimizer.Momentum(
        learning_rate=sched,
        momentum=float(opt.get("momentum", DEFAULT_MOMENTUM)),
        parameters=parameters,
        weight_decay=decay,
    )
    return optimizer, sched
