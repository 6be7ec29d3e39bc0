"""PaddleClas's batch ops (`batch_transform_ops`: MixupOperator, CutmixOperator, OpSampler)
as stored per-view mixes (ppcls/data/preprocess/batch_ops/batch_operators.py).

PaddleClas mixes each batch with a permutation of itself. Offline, as in Apple's dataset
reinforcement, each stored view is mixed with one partner image, and the view stores what the
mix needs: the partner's image number in the cache, the lambda (Mixup) or the box (Cutmix), and
for OpSampler which op was drawn. The partner contributes its own view of the same index,
unmixed (the base view its stored params give), so a mix never depends on another mix. The
cached logits are the teacher's output on the mixed image; train-student replays both base
views and mixes them again with the stored values, bit for bit.

Draws (views.mix_rng, a generator of its own, so the base view of an image is the same whether
or not batch ops are configured) come from (seed, content key, view): a dump is reproducible
and resumable. The partner is drawn uniformly among the images of the same dump part (the
whole list, or the images an extension adds), so its bytes are in the list being dumped.

Stored params (each a narrow integer column, see `param_ranges`):
    op       OpSampler only: 0 none, else 1 + index of the drawn op in its config
    partner  [0, 2**31 - 1]  the partner's image number in the cache (0 when op is none)
    lam      [0, LAMBDA_STEPS]  Mixup's lambda, quantised: the dump mixes with
             lam / LAMBDA_STEPS, the stored value, so replay is exact
    top, left, bottom, right  [0, MAX_IMAGE_SIDE]  Cutmix's box (rows top:bottom, columns
             left:right of the CHW view), clipped as PaddleClas clips it

OpSampler picks an op per view here, not per batch: offline there is no batch at dump time,
and each view still sees each op with PaddleClas's probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from offline_ssld.data.transforms import (
    CHW,
    MAX_IMAGE_SIDE,
    Op,
    _BadParams,
    _is_num,
    register,
)
from offline_ssld.errors import ConfigError

LAMBDA_STEPS = 2**16 - 1
"""Mixup's lambda is stored as round(lambda * LAMBDA_STEPS) in uint16 (steps of 1.5e-5)."""
MAX_PARTNER = 2**31 - 1
MIXUP, CUTMIX = "MixupOperator", "CutmixOperator"


@dataclass(frozen=True)
class Mix:
    """One view's mix: `kind` is MIXUP, CUTMIX or None (no mix)."""

    kind: str | None
    partner: int = 0
    lam: int = 0  # quantised, see LAMBDA_STEPS
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right


def _alpha(v: Any, where: str) -> float:
    if not _is_num(v) or float(v) <= 0:
        raise ConfigError(f"{where}: expected a positive number, got {v!r}")
    return float(v)


def mixup(x: np.ndarray, partner: np.ndarray, lam: float) -> np.ndarray:
    """PaddleClas's MixupOperator on one pair: `lam * imgs + (1 - lam) * imgs[idx]`."""
    return np.ascontiguousarray(lam * x + (1 - lam) * partner)


def cutmix(x: np.ndarray, partner: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """PaddleClas's CutmixOperator on one pair: the partner's pixels inside the box."""
    top, left, bottom, right = box
    out = x.copy()
    out[:, top:bottom, left:right] = partner[:, top:bottom, left:right]
    return out


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, ...]:
    """PaddleClas's `_rand_bbox` on a (B, C, H, W) batch: its `w` is H and its `h` is W, so
    its bbx1..bbx2 are rows and bby1..bby2 columns; returned as (top, left, bottom, right)."""
    cut_rat = np.sqrt(1.0 - lam)
    cut_rows, cut_cols = int(height * cut_rat), int(width * cut_rat)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = (int(np.clip(v, 0, height)) for v in (cy - cut_rows // 2, cy + cut_rows // 2))
    left, right = (int(np.clip(v, 0, width)) for v in (cx - cut_cols // 2, cx + cut_cols // 2))
    return top, left, bottom, right


class MixOp(Op):
    """A batch op: the last op of a pipeline; its input is (view, partner's view)."""

    needs = CHW
    mixes = True
    args: tuple[str, ...] = ("alpha",)

    def __init__(self, key: str, choices: list[tuple[str, float, float]], sampler: bool) -> None:
        """`choices`: (kind, alpha, probability) of each op it may draw; a `sampler` draws
        which (param `op`)."""
        self.key = key
        self.choices = choices
        kinds = {kind for kind, _, _ in choices}
        self.param_names = (
            *(("op",) if sampler else ()),
            "partner",
            *(("lam",) if MIXUP in kinds else ()),
            *(("top", "left", "bottom", "right") if CUTMIX in kinds else ()),
        )

    def param_ranges(self) -> tuple[tuple[int, int], ...]:
        side = (0, MAX_IMAGE_SIDE)
        ranges = {"op": (0, len(self.choices)), "partner": (0, MAX_PARTNER)}
        ranges |= {"lam": (0, LAMBDA_STEPS), "top": side, "left": side, "bottom": side}
        return tuple({**ranges, "right": side}[n] for n in self.param_names)

    def draw_mix(self, shape: tuple[int, ...], partners: range, rng: np.random.Generator) -> Mix:
        """PaddleClas's choices for one view: the op (OpSampler), the partner (uniform over
        `partners`, the image numbers of this dump part), then lambda, then the box."""
        if "op" in self.param_names:
            u, total, kind, alpha = rng.random(), 0.0, None, 1.0
            for name, a, prob in self.choices:
                total += prob
                if u < total:
                    kind, alpha = name, a
                    break
        else:
            kind, alpha, _ = self.choices[0]
        partner = partners.start + int(rng.integers(len(partners)))
        if kind is None:
            return Mix(None)
        lam = float(rng.beta(alpha, alpha))
        if kind == MIXUP:
            return Mix(kind, partner, lam=round(lam * LAMBDA_STEPS))
        top, left, bottom, right = cutmix_box(shape[-2], shape[-1], lam, rng)
        return Mix(kind, partner, box=(top, left, bottom, right))

    def pack(self, mix: Mix) -> tuple[int, ...]:
        index = 0 if mix.kind is None else 1 + [k for k, _, _ in self.choices].index(mix.kind)
        values = {"op": index, "partner": mix.partner, "lam": mix.lam}
        values |= dict(zip(("top", "left", "bottom", "right"), mix.box, strict=True))
        return tuple(values[n] for n in self.param_names)

    def unpack(self, params: tuple[int, ...]) -> Mix:
        values = dict(zip(self.param_names, params, strict=True))
        index = values.get("op", 1)
        if not 0 <= index <= len(self.choices):
            raise _BadParams(f"op {index} outside [0, {len(self.choices)}]")
        if index == 0:
            return Mix(None)
        box = tuple(values.get(n, 0) for n in ("top", "left", "bottom", "right"))
        kind = self.choices[index - 1][0]
        return Mix(kind, values["partner"], values.get("lam", 0), box)  # type: ignore[arg-type]

    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        """`img` is (view, partner's view); with no mix drawn, the partner may be None."""
        x, partner = img
        mix = self.unpack(params)
        if mix.kind is None:
            return x
        if partner.shape != x.shape:
            raise _BadParams(f"the partner's view is {partner.shape}, this view {x.shape}")
        if mix.kind == MIXUP:
            return mixup(x, partner, mix.lam / LAMBDA_STEPS)
        top, left, bottom, right = mix.box
        if not (top <= bottom <= x.shape[-2] and left <= right <= x.shape[-1]):
            raise _BadParams(f"box {mix.box} outside a {x.shape[-2]}x{x.shape[-1]} view")
        return cutmix(x, partner, mix.box)

    def spec(self) -> dict:
        return {"name": self.name, "choices": [list(c) for c in self.choices]}


class MixupOperator(MixOp):
    """Mixup (https://arxiv.org/abs/1710.09412): lambda ~ Beta(alpha, alpha)."""

    name = MIXUP

    def __init__(self, key: str, alpha: Any = 1.0) -> None:
        super().__init__(key, [(MIXUP, _alpha(alpha, f"{key}.alpha"), 1.0)], sampler=False)


class CutmixOperator(MixOp):
    """Cutmix (https://arxiv.org/abs/1905.04899): a box of area (1 - lambda)."""

    name = CUTMIX

    def __init__(self, key: str, alpha: Any = 0.2) -> None:
        super().__init__(key, [(CUTMIX, _alpha(alpha, f"{key}.alpha"), 1.0)], sampler=False)


class OpSampler(MixOp):
    """One of its ops with its `prob`, none with the rest (PaddleClas's None op)."""

    name = "OpSampler"
    args = (MIXUP, CUTMIX)

    def __init__(self, key: str, **ops: Any) -> None:
        choices = []
        defaults = {MIXUP: 1.0, CUTMIX: 0.2}
        for name, args in ops.items():
            args = dict(args or {})
            prob = args.pop("prob", 0)  # PaddleClas: a missing prob is 0
            if not _is_num(prob) or not 0 <= float(prob) <= 1:
                raise ConfigError(f"{key}.{name}.prob: expected a probability, got {prob!r}")
            extra = sorted(set(args) - {"alpha"})
            if extra:
                raise ConfigError(f"{key}.{name}.{extra[0]}: unknown argument; supported: alpha")
            alpha = _alpha(args.get("alpha", defaults[name]), f"{key}.{name}.alpha")
            choices.append((name, alpha, float(prob)))
        if not choices:
            raise ConfigError(f"{key}: lists no op; give MixupOperator and/or CutmixOperator")
        if sum(p for _, _, p in choices) > 1 + 1e-9:
            raise ConfigError(f"{key}: the probs of its ops sum to more than 1")
        super().__init__(key, choices, sampler=True)


register(MixupOperator, CutmixOperator, OpSampler)
