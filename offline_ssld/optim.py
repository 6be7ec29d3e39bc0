"""The `Optimizer` section: PaddleClas Momentum, a Cosine, Piecewise or MultiStepDecay lr
schedule with linear warmup, and L2 decay (`regularizer` or `weight_decay`), computed as
PaddleClas's ppcls/optimizer computes them.

The only reader of those keys: `config.check_supported` validates through `check_optimizer`
and training builds through `build_optimizer`, so the supported keys are defined once. The
schedule steps every iteration, as PaddleClas's does with `by_epoch: False`.
"""

from __future__ import annotations

from collections.abc import Iterable

import paddle
from paddle.optimizer.lr import (
    CosineAnnealingDecay,
    LambdaDecay,
    LinearWarmup,
    LRScheduler,
    MultiStepDecay,
    PiecewiseDecay,
)

from offline_ssld.config.loading import as_mapping, get, only_keys
from offline_ssld.errors import ConfigError

OPTIMIZERS = ("Momentum",)
OPTIMIZER_KEYS = ("name", "momentum", "lr", "regularizer", "weight_decay")
LR_KEYS: dict[str, tuple[str, ...]] = {
    "Cosine": ("name", "learning_rate", "warmup_epoch", "warmup_start_lr", "eta_min", "by_epoch"),
    "Piecewise": (
        "name",
        "learning_rate",  # PaddleClas: when set, replaces decay_epochs/values (/10 every 30)
        "decay_epochs",
        "values",
        "warmup_epoch",
        "warmup_start_lr",
        "by_epoch",
    ),
    "MultiStepDecay": (
        "name",
        "learning_rate",
        "milestones",
        "gamma",
        "warmup_epoch",
        "warmup_start_lr",
        "by_epoch",
        "step_each_epoch",  # PaddleClas overwrites it with the real iterations per epoch
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
    needed = {"Piecewise": ("decay_epochs", "values"), "MultiStepDecay": ("milestones",)}
    if not (name == "Piecewise" and lr.get("learning_rate")):
        for key in needed.get(name, ()):
            if not isinstance(lr.get(key), list):
                raise ConfigError(f"Optimizer.lr.{key}: required list for {name}")
    if name == "MultiStepDecay" and lr.get("learning_rate") is None:
        raise ConfigError("Optimizer.lr.learning_rate: required for MultiStepDecay")
    if opt.get("regularizer") and opt.get("weight_decay") is not None:
        raise ConfigError(
            "Optimizer.weight_decay: give either regularizer or weight_decay (PaddleClas "
            "ignores weight_decay then, with a warning)"
        )
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
    if not reg and opt.get("weight_decay") is not None:
        reg, regularizer = {"weight_decay": True}, f"L2 coeff {opt['weight_decay']}"
    return [
        f"optimizer: {opt.get('name', OPTIMIZERS[0])}, momentum "
        f"{opt.get('momentum', DEFAULT_MOMENTUM)}, " + (regularizer if reg else "no regularizer"),
        f"lr: {lr.get('name', DEFAULT_LR)} ({lr_text}), stepped every iteration",
    ]


def _piecewise(lr: dict, epochs: int) -> tuple[list, list]:
    """decay_epochs and values as PaddleClas's Piecewise takes them: a `learning_rate`
    replaces both with a tenfold decay every 30 epochs."""
    if not lr.get("learning_rate"):
        return list(lr["decay_epochs"]), list(lr["values"])
    base = float(lr["learning_rate"])
    decay_epochs = list(range(0, epochs, 30))
    values = [base * 0.1**i for i in range(len(decay_epochs))]
    if len(decay_epochs) == 1:
        return [epochs], [values[0], values[0]]
    return decay_epochs[1:], values


def build_schedule(lr: dict, steps_per_epoch: int, epochs: int) -> LRScheduler:
    """The per-iteration schedule of a checked `Optimizer.lr` section, as PaddleClas builds
    it: warmup takes round(warmup_epoch * steps) steps and the decay runs after it, so the
    Piecewise and MultiStepDecay boundaries (epoch * steps) count from the end of warmup,
    and Cosine anneals over (epochs - warmup_epoch) * steps."""
    name = lr.get("name", DEFAULT_LR)
    warmup_epoch = lr.get("warmup_epoch", 0)
    warmup = int(round(warmup_epoch * steps_per_epoch))
    sched: LRScheduler
    if name == "Cosine":
        base = float(lr.get("learning_rate", 0.1))
        t_max = int((epochs - warmup_epoch) * steps_per_epoch)
        if t_max > 0:
            sched = CosineAnnealingDecay(base, t_max, float(lr.get("eta_min", 0.0)))
        else:
            sched = LambdaDecay(base, lambda _: 1.0)
    elif name == "Piecewise":
        decay_epochs, values = _piecewise(lr, epochs)
        sched = PiecewiseDecay([int(e * steps_per_epoch) for e in decay_epochs], values)
        base = values[0]
    else:
        base = float(lr["learning_rate"])
        milestones = [int(m * steps_per_epoch) for m in lr["milestones"]]
        sched = MultiStepDecay(base, milestones, float(lr.get("gamma", 0.1)))
    if warmup > 0:
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
    coeff = reg.get("coeff", 0.0) if reg else opt.get("weight_decay")
    decay = None if coeff is None else paddle.regularizer.L2Decay(float(coeff))
    optimizer = paddle.optimizer.Momentum(
        learning_rate=sched,
        momentum=float(opt.get("momentum", DEFAULT_MOMENTUM)),
        parameters=parameters,
        weight_decay=decay,
    )
    return optimizer, sched
