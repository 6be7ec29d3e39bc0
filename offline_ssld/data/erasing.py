"""PaddleClas's RandomErasing as a replayable op (ppcls/data/preprocess/ops/random_erasing.py).

`draw` makes PaddleClas's choices (erase or not with probability EPSILON, then up to `attempt`
tries at a box of random area and aspect that fits, then its position) and stores the box. The
erase values of modes 'rand' (one random colour) and 'pixel' (per-pixel noise) are standard
normal draws, as in PaddleClas; they are not stored: a 31-bit seed drawn from the view generator
is, and `apply` regenerates the same values from it (numpy PCG64), so replay is exact.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from offline_ssld.data.transforms import (
    _FLOAT_RE,
    HWC,
    MAX_IMAGE_PIXELS,
    Op,
    _BadParams,
    _bool,
    _floats3,
    _is_num,
    _pos_int,
    register,
)
from offline_ssld.errors import ConfigError, DataError

SEED_MAX = 2**31 - 1
"""Erase-value seeds are drawn in [0, SEED_MAX], so they fit the cache's int32 params."""

MODES = ("const", "rand", "pixel")


def _number(v: Any, where: str) -> float:
    """A number, or a string 'a' or 'a/b' of float literals (PaddleClas eval()s strings such as
    sh: '1.0/3.0'; nothing is evaluated here)."""
    if _is_num(v):
        return float(v)
    if isinstance(v, str):
        parts = [p.strip() for p in v.split("/")]
        if len(parts) <= 2 and all(_FLOAT_RE.fullmatch(p) for p in parts):
            value = float(parts[0])
            if len(parts) == 2:
                if float(parts[1]) == 0:
                    raise ConfigError(f"{where}: division by zero in {v!r}")
                value /= float(parts[1])
            if math.isfinite(value):
                return value
    raise ConfigError(f"{where}: expected a number or 'a/b' like '1.0/3.0', got {v!r}")


def _uniform(rng: np.random.Generator, a: float, b: float) -> float:
    """python's random.uniform(a, b): a + (b - a) * U[0, 1), also for b < a."""
    return a + (b - a) * float(rng.random())


def erase_values(mode: str, seed: int, shape: tuple[int, int, int]) -> np.ndarray:
    """The noise PaddleClas draws for 'rand' (one value per channel) or 'pixel' (h, w, c)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.standard_normal((1, 1, 3) if mode == "rand" else shape)


class RandomErasing(Op):
    """Erase a random box with a constant (`mean`), a random colour or per-pixel noise.

    Stored params and ranges (box coordinates are bounded by the image side, itself at most
    MAX_IMAGE_PIXELS; for a known input size S they lie in [0, S]):
      erased  [0, 1]              the EPSILON gate fired and a box fitted within `attempt` tries
      top     [0, MAX_IMAGE_PIXELS]  first row of the box (PaddleClas's x1)
      left    [0, MAX_IMAGE_PIXELS]  first column (PaddleClas's y1)
      h       [0, MAX_IMAGE_PIXELS]  box height (may be 0, as in PaddleClas, for tiny areas)
      w       [0, MAX_IMAGE_PIXELS]  box width
      seed    [0, 2**31 - 1]      seed of the erase values (modes rand, pixel; 0 for const)
    All are 0 when nothing was erased.
    """

    name = "RandomErasing"
    param_names = ("erased", "top", "left", "h", "w", "seed")
    args = ("EPSILON", "sl", "sh", "r1", "mean", "attempt", "use_log_aspect", "mode")
    needs = HWC  # PaddleClas reads any ndarray as (h, w, c)

    def __init__(
        self,
        key: str,
        EPSILON: Any = 0.5,  # noqa: N803 (PaddleClas's argument name)
        sl: Any = 0.02,
        sh: Any = 0.4,
        r1: Any = 0.3,
        mean: Any = (0.0, 0.0, 0.0),
        attempt: Any = 100,
        use_log_aspect: Any = False,
        mode: Any = "const",
    ) -> None:
        self.key = key
        self.epsilon = _number(EPSILON, f"{key}.EPSILON")
        if not 0 <= self.epsilon <= 1:
            raise ConfigError(f"{key}.EPSILON: expected a probability in [0, 1], got {EPSILON!r}")
        self.sl = _number(sl, f"{key}.sl")
        self.sh = _number(sh, f"{key}.sh")
        if not 0 <= self.sl <= self.sh:
            raise ConfigError(f"{key}.sh: expected 0 <= sl <= sh, got sl={sl!r} sh={sh!r}")
        self.r1 = _number(r1, f"{key}.r1")
        if self.r1 <= 0:
            raise ConfigError(f"{key}.r1: expected a positive aspect ratio, got {r1!r}")
        self.use_log_aspect = _bool(use_log_aspect, f"{key}.use_log_aspect")
        if self.use_log_aspect:
            self.aspect_range = (math.log(self.r1), math.log(1 / self.r1))
        else:
            self.aspect_range = (self.r1, 1 / self.r1)
        self.attempt = _pos_int(attempt, f"{key}.attempt")
        if mode not in MODES:
            raise ConfigError(f"{key}.mode: expected one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.mean = _floats3(mean, f"{key}.mean")

    def param_ranges(self) -> tuple[tuple[int, int], ...]:
        side = (0, MAX_IMAGE_PIXELS)
        return ((0, 1), side, side, side, side, (0, SEED_MAX))

    def draw(self, img: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
        if rng.random() > self.epsilon:
            return (0, 0, 0, 0, 0, 0)
        img_h, img_w = img.shape[:2]
        area = img_h * img_w
        for _ in range(self.attempt):
            target_area = _uniform(rng, self.sl, self.sh) * area
            aspect = _uniform(rng, *self.aspect_range)
            if self.use_log_aspect:
                aspect = math.exp(aspect)
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < img_w and h < img_h:
                seed = int(rng.integers(0, SEED_MAX, endpoint=True)) if self.mode != "const" else 0
                top = int(rng.integers(0, img_h - h, endpoint=True))
                left = int(rng.integers(0, img_w - w, endpoint=True))
                return (1, top, left, h, w, seed)
        return (0, 0, 0, 0, 0, 0)

    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        erased, top, left, h, w, seed = (int(p) for p in params)
        if erased not in (0, 1) or not 0 <= seed <= SEED_MAX:
            raise _BadParams(f"erased={erased} seed={seed} out of range")
        if not erased:
            return img
        if not isinstance(img, np.ndarray) or img.ndim != 3:
            raise DataError("RandomErasing needs an (h, w, c) image")
        img_h, img_w, channels = img.shape
        if not (h >= 0 and w >= 0 and 0 <= top <= img_h - h and 0 <= left <= img_w - w):
            raise _BadParams(f"box top={top} left={left} h={h} w={w} outside {img_w}x{img_h}")
        if self.mode == "const":
            values = np.array(self.mean, dtype=np.float64).reshape(1, 1, 3)
        else:
            values = erase_values(self.mode, seed, (h, w, channels))
        out = img.copy()
        if channels == 3:
            out[top : top + h, left : left + w, :] = values
        else:  # PaddleClas: only the first channel of a non-3-channel image
            out[top : top + h, left : left + w, 0] = values[:, :, 0]
        return out

    def spec(self) -> dict:
        return {
            "name": self.name,
            "EPSILON": self.epsilon,
            "sl": self.sl,
            "sh": self.sh,
            "r1": self.r1,
            "mean": self.mean,
            "attempt": self.attempt,
            "use_log_aspect": self.use_log_aspect,
            "mode": self.mode,
            "values": "standard_normal(PCG64(seed))",
        }


register(RandomErasing)
