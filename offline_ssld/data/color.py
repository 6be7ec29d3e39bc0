"""PaddleClas's ColorJitter as a replayable op.

PaddleClas's ColorJitter (ppcls/data/preprocess/ops/operators.py) runs paddle.vision's
ColorJitter on a PIL image with probability `prob` (default 2: always): brightness, contrast,
saturation and hue adjustments in a random order, each with a factor drawn uniformly from its
range (an adjustment whose range is exactly the identity is skipped and draws nothing).

Stored params: the order, and each factor. Brightness, contrast and saturation factors are
continuous; they are rounded to 1/FACTOR_RESOLUTION (0.0001) and the rounded value is applied,
so teacher and student apply the same factor. Hue needs no rounding: paddle shifts the HSV hue
channel by int(hue_factor * 255) levels, and that integer is what is stored.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from offline_ssld.data._pil import _check, _to_pil
from offline_ssld.data.transforms import HWC, Op, _is_num, register
from offline_ssld.errors import ConfigError

FACTOR_RESOLUTION = 10000
"""Stored brightness/contrast/saturation factors are integers in units of 0.0001."""

ORDERS = tuple(itertools.permutations(range(4)))
"""All 24 orders of (brightness, contrast, saturation, hue); the stored `order` indexes this."""

_COMPONENTS = ("brightness", "contrast", "saturation", "hue")


def _factor_range(v: Any, where: str, hue: bool) -> tuple[float, float] | None:
    """paddle.vision's _check_input: a number x gives [max(0, 1 - x), 1 + x] ([-x, x] for hue);
    a pair is taken as is; an identity range ([1, 1], or [0, 0] for hue) means "skip"."""
    center = 0.0 if hue else 1.0
    bound = (-0.5, 0.5) if hue else (0.0, float("inf"))
    if _is_num(v):
        if v < 0:
            raise ConfigError(f"{where}: expected a non-negative number, got {v!r}")
        lo, hi = center - float(v), center + float(v)
        if not hue:
            lo = max(lo, 0.0)
    elif isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_num(x) for x in v):
        lo, hi = float(v[0]), float(v[1])
    else:
        raise ConfigError(f"{where}: expected a number or [min, max], got {v!r}")
    if not bound[0] <= lo <= hi <= bound[1]:
        raise ConfigError(f"{where}: range [{lo}, {hi}] must lie within {list(bound)}")
    if lo == hi == center:
        return None
    return lo, hi


def _adjust_hue(img: Image.Image, shift: int) -> Image.Image:
    """paddle.vision's PIL adjust_hue with its integer shift of the HSV hue channel."""
    if img.mode in ("L", "1", "I", "F"):
        return img
    h, s, v = img.convert("HSV").split()
    hue = ((np.asarray(h, dtype=np.int16) + shift) % 256).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert(img.mode)


_ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)


class ColorJitter(Op):
    """Random brightness, contrast, saturation and hue, in a random order.

    Stored params and ranges:
      applied     [0, 1]    the `prob` gate fired
      order       [0, 23]   index into ORDERS
      brightness  [round(lo * 10000), round(hi * 10000)]  factor in units of 0.0001 (0 if unused)
      contrast    as brightness
      saturation  as brightness
      hue         [int(lo * 255), int(hi * 255)] within [-127, 127]: hue shift in levels
    All are 0 when not applied.
    """

    name = "ColorJitter"
    param_names = ("applied", "order", *_COMPONENTS)
    args = ("prob", *_COMPONENTS)
    needs = HWC
    needs_uint8 = True

    def __init__(
        self,
        key: str,
        prob: Any = 2,
        brightness: Any = 0,
        contrast: Any = 0,
        saturation: Any = 0,
        hue: Any = 0,
    ) -> None:
        self.key = key
        if not _is_num(prob):
            raise ConfigError(f"{key}.prob: expected a number, got {prob!r}")
        self.prob = float(prob)
        values = (brightness, contrast, saturation, hue)
        self.values = values
        self.factor_ranges = tuple(
            _factor_range(v, f"{key}.{name}", name == "hue")
            for name, v in zip(_COMPONENTS, values, strict=True)
        )

    def param_ranges(self) -> tuple[tuple[int, int], ...]:
        out = [(0, 1), (0, len(ORDERS) - 1)]
        for i, r in enumerate(self.factor_ranges):
            if r is None:
                out.append((0, 0))
            elif i == 3:
                out.append((int(r[0] * 255), int(r[1] * 255)))
            else:
                out.append((round(r[0] * FACTOR_RESOLUTION), round(r[1] * FACTOR_RESOLUTION)))
        return tuple(out)

    def draw(self, img: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
        if not rng.random() < self.prob:
            return (0,) * 6
        order = tuple(int(i) for i in rng.permutation(4))
        factors = [0, 0, 0, 0]
        for i in order:  # drawn in application order, as paddle does
            r = self.factor_ranges[i]
            if r is None:
                continue
            f = r[0] + (r[1] - r[0]) * float(rng.random())
            factors[i] = int(f * 255) if i == 3 else round(f * FACTOR_RESOLUTION)
        return (1, ORDERS.index(order), *factors)

    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        if not _check(int(params[0]), 0, 1, "applied"):
            return img
        bounds = self.param_ranges()
        values = [
            _check(int(p), lo, hi, n)
            for p, (lo, hi), n in zip(params, bounds, self.param_names, strict=True)
        ]
        pil = _to_pil(img)
        for i in ORDERS[values[1]]:
            if self.factor_ranges[i] is None:
                continue
            if i == 3:
                pil = _adjust_hue(pil, values[5])
            else:
                pil = _ENHANCERS[i](pil).enhance(values[2 + i] / FACTOR_RESOLUTION)
        return np.asarray(pil)

    def spec(self) -> dict:
        return {
            "name": self.name,
            "prob": self.prob,
            **{
                n: list(r) if r else None
                for n, r in zip(_COMPONENTS, self.factor_ranges, strict=True)
            },
            "factor_resolution": FACTOR_RESOLUTION,
        }


register(ColorJitter)
