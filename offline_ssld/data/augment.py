"""Replayable strong augmentation: PaddleClas's TimmAutoAugment, AutoAugment and RandAugment.

Each op keeps the draw/apply split of `transforms.py`: `draw` makes every random choice PaddleClas
makes (which sub-policy or op, whether each op fires, the magnitude, the sign, the resampling
filter) and returns them as integers; `apply` runs PIL on the image with exactly those choices.
The cache stores the integers, so the student sees the teacher's pixels bit for bit.

Every stored param is an integer with a declared finite range (`param_ranges`), listed in each
class docstring.

Magnitude noise (`mstd` in a TimmAutoAugment config string) is a Gaussian around the magnitude.
It is drawn, clipped to [0, 10] as PaddleClas does, then rounded to a multiple of
1 / MAGNITUDE_RESOLUTION of a level (0.001) and stored as that integer; `apply` always uses the
stored, rounded value, so teacher and student apply the same magnitude. (The rounding moves a
rotation by at most 0.0015 degrees and a shear by at most 0.000015.)

PaddleClas's code is ppcls/data/preprocess/ops/{timm_autoaugment,autoaugment,randaugment}.py (a
PIL port of timm's auto_augment.py); the arithmetic below follows its semantics, op by op.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from offline_ssld.data._pil import _check, _to_pil
from offline_ssld.data.transforms import (
    HWC,
    Op,
    _floats3,
    _is_int,
    _is_num,
    _pos_int,
    register,
)
from offline_ssld.errors import ConfigError

MAX_LEVEL = 10.0
"""PaddleClas/timm `_MAX_LEVEL`: magnitudes live in [0, 10]."""

MAGNITUDE_RESOLUTION = 1000
"""Stored magnitude unit: 1/1000 of a level, so a stored magnitude is an integer in [0, 10000]."""

MAX_MAGNITUDE = int(MAX_LEVEL) * MAGNITUDE_RESOLUTION

_BILINEAR = Image.Resampling.BILINEAR
_BICUBIC = Image.Resampling.BICUBIC
_RANDOM_FILTERS = (_BILINEAR, _BICUBIC)  # a stored interp param of 0 or 1 indexes this


def _mean_fill(mean: list[float]) -> tuple[int, ...]:
    """timm's img_mean: each mean channel times 255, rounded, capped at 255."""
    return tuple(min(255, round(255 * x)) for x in mean)


# --------------------------------------------------------------------------------------------
# timm-style ops (TimmAutoAugment): name -> (level function, image function, signed, geometric)
#
# A level function maps (magnitude in [0, 10], negate flag, hparams) to the op's arguments; the
# image function takes (img, args, resample, fill). `signed` ops flip the sign of their level
# with probability 1/2 (timm's _randomly_negate); `geometric` ops take a resampling filter.


def _signed(v: float, negate: bool) -> float:
    return -v if negate else v


def _affine(img: Image.Image, matrix: tuple, resample: int, fill: tuple) -> Image.Image:
    return img.transform(
        img.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill
    )


def _posterize(img: Image.Image, bits: int) -> Image.Image:
    return img if bits >= 8 else ImageOps.posterize(img, bits)


def _solarize_add(img: Image.Image, add: int, thresh: int = 128) -> Image.Image:
    """Add `add` (capped at 255) to every value below `thresh`; other modes pass unchanged."""
    table = [min(255, i + add) if i < thresh else i for i in range(256)]
    if img.mode == "L":
        return img.point(table)
    if img.mode == "RGB":
        return img.point(table * 3)
    return img


def _enhancer(kind: type) -> Callable[..., Image.Image]:
    return lambda img, args, resample, fill: kind(img).enhance(args[0])


_LevelFn = Callable[[float, bool, dict], tuple]
_ImageFn = Callable[[Image.Image, tuple, int, tuple], Image.Image]


def _none(m: float, neg: bool, hp: dict) -> tuple:
    return ()


def _enhance_level(m: float, neg: bool, hp: dict) -> tuple:
    return ((m / MAX_LEVEL) * 1.8 + 0.1,)


def _enhance_increasing_level(m: float, neg: bool, hp: dict) -> tuple:
    return (1.0 + _signed((m / MAX_LEVEL) * 0.9, neg),)


def _posterize_level(m: float, neg: bool, hp: dict) -> tuple:
    return (int((m / MAX_LEVEL) * 4),)


def _solarize_level(m: float, neg: bool, hp: dict) -> tuple:
    return (int((m / MAX_LEVEL) * 256),)


_TIMM_OPS: dict[str, tuple[_LevelFn, _ImageFn, bool, bool]] = {
    "AutoContrast": (_none, lambda img, a, r, f: ImageOps.autocontrast(img), False, False),
    "Equalize": (_none, lambda img, a, r, f: ImageOps.equalize(img), False, False),
    "Invert": (_none, lambda img, a, r, f: ImageOps.invert(img), False, False),
    "Rotate": (
        lambda m, neg, hp: (_signed((m / MAX_LEVEL) * 30.0, neg),),
        lambda img, a, r, f: img.rotate(a[0], resample=Image.Resampling(r), fillcolor=f),
        True,
        True,
    ),
    "Posterize": (_posterize_level, lambda img, a, r, f: _posterize(img, a[0]), False, False),
    "PosterizeIncreasing": (
        lambda m, neg, hp: (4 - _posterize_level(m, neg, hp)[0],),
        lambda img, a, r, f: _posterize(img, a[0]),
        False,
        False,
    ),
    "PosterizeOriginal": (
        lambda m, neg, hp: (_posterize_level(m, neg, hp)[0] + 4,),
        lambda img, a, r, f: _posterize(img, a[0]),
        False,
        False,
    ),
    "Solarize": (_solarize_level, lambda img, a, r, f: ImageOps.solarize(img, a[0]), False, False),
    "SolarizeIncreasing": (
        lambda m, neg, hp: (256 - _solarize_level(m, neg, hp)[0],),
        lambda img, a, r, f: ImageOps.solarize(img, a[0]),
        False,
        False,
    ),
    "SolarizeAdd": (
        lambda m, neg, hp: (int((m / MAX_LEVEL) * 110),),
        lambda img, a, r, f: _solarize_add(img, a[0]),
        False,
        False,
    ),
    "Color": (_enhance_level, _enhancer(ImageEnhance.Color), False, False),
    "ColorIncreasing": (_enhance_increasing_level, _enhancer(ImageEnhance.Color), True, False),
    "Contrast": (_enhance_level, _enhancer(ImageEnhance.Contrast), False, False),
    "ContrastIncreasing": (
        _enhance_increasing_level,
        _enhancer(ImageEnhance.Contrast),
        True,
        False,
    ),
    "Brightness": (_enhance_level, _enhancer(ImageEnhance.Brightness), False, False),
    "BrightnessIncreasing": (
        _enhance_increasing_level,
        _enhancer(ImageEnhance.Brightness),
        True,
        False,
    ),
    "Sharpness": (_enhance_level, _enhancer(ImageEnhance.Sharpness), False, False),
    "SharpnessIncreasing": (
        _enhance_increasing_level,
        _enhancer(ImageEnhance.Sharpness),
        True,
        False,
    ),
    "ShearX": (
        lambda m, neg, hp: (_signed((m / MAX_LEVEL) * 0.3, neg),),
        lambda img, a, r, f: _affine(img, (1, a[0], 0, 0, 1, 0), r, f),
        True,
        True,
    ),
    "ShearY": (
        lambda m, neg, hp: (_signed((m / MAX_LEVEL) * 0.3, neg),),
        lambda img, a, r, f: _affine(img, (1, 0, 0, a[0], 1, 0), r, f),
        True,
        True,
    ),
    "TranslateX": (
        lambda m, neg, hp: (_signed((m / MAX_LEVEL) * float(hp["translate_const"]), neg),),
        lambda img, a, r, f: _affine(img, (1, 0, a[0], 0, 1, 0), r, f),
        True,
        True,
    ),
    "TranslateY": (
        lambda m, neg, hp: (_signed((m / MAX_LEVEL) * float(hp["translate_const"]), neg),),
        lambda img, a, r, f: _affine(img, (1, 0, 0, 0, 1, a[0]), r, f),
        True,
        True,
    ),
    "TranslateXRel": (
        lambda m, neg, hp: (_signed((m / MAX_LEVEL) * hp["translate_pct"], neg),),
        lambda img, a, r, f: _affine(img, (1, 0, a[0] * img.size[0], 0, 1, 0), r, f),
        True,
        True,
    ),
    "TranslateYRel": (
        lambda m, neg, hp: (_signed((m / MAX_LEVEL) * hp["translate_pct"], neg),),
        lambda img, a, r, f: _affine(img, (1, 0, 0, 0, 1, a[0] * img.size[1]), r, f),
        True,
        True,
    ),
}

# RandAugment's op lists (config 'inc1' picks the second); both have the same 15 positions.
_RAND_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
_RAND_INCREASING_OPS = tuple(
    f"{name}Increasing"
    if name in ("Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness")
    else name
    for name in _RAND_OPS
)
# Choice weights of config section 'w0', by position in _RAND_OPS (timm's experimental set).
_RAND_WEIGHTS_0 = (
    *(0.025, 0.005, 0, 0.3, 0, 0.005, 0.005),
    *(0.025, 0.005, 0.005, 0.025, 0.2, 0.2, 0.1, 0.1),
)


def _policy(text: str) -> tuple[tuple[tuple[str, float, int], ...], ...]:
    """Parse 'Op prob magnitude, Op prob magnitude; ...' into sub-policies."""
    subs = []
    for sub in text.split(";"):
        ops = []
        for item in sub.split(","):
            name, prob, mag = item.split()
            ops.append((name, float(prob), int(mag)))
        subs.append(tuple(ops))
    return tuple(subs)


# timm's AutoAugment ImageNet policies: v0 (TPU EfficientNet) and 'original' (the paper).
_V0 = _policy(
    "Equalize .8 1, ShearY .8 4; Color .4 9, Equalize .6 3; Color .4 1, Rotate .6 8;"
    "Solarize .8 3, Equalize .4 7; Solarize .4 2, Solarize .6 2; Color .2 0, Equalize .8 8;"
    "Equalize .4 8, SolarizeAdd .8 3; ShearX .2 9, Rotate .6 8; Color .6 1, Equalize 1 2;"
    "Invert .4 9, Rotate .6 0; Equalize 1 9, ShearY .6 3; Color .4 7, Equalize .6 0;"
    "Posterize .4 6, AutoContrast .4 7; Solarize .6 8, Color .6 9; Solarize .2 4, Rotate .8 9;"
    "Rotate 1 7, TranslateYRel .8 9; ShearX 0 0, Solarize .8 4; ShearY .8 0, Color .6 4;"
    "Color 1 0, Rotate .6 2; Equalize .8 4, Equalize 0 8; Equalize 1 4, AutoContrast .6 2;"
    "ShearY .4 7, SolarizeAdd .6 7; Posterize .8 2, Solarize .6 10;"
    "Solarize .6 8, Equalize .6 1; Color .8 6, Rotate .4 5"
)
_ORIGINAL = _policy(
    "PosterizeOriginal .4 8, Rotate .6 9; Solarize .6 5, AutoContrast .6 5;"
    "Equalize .8 8, Equalize .6 3; PosterizeOriginal .6 7, PosterizeOriginal .6 6;"
    "Equalize .4 7, Solarize .2 4; Equalize .4 4, Rotate .8 8; Solarize .6 3, Equalize .6 7;"
    "PosterizeOriginal .8 5, Equalize 1 2; Rotate .2 3, Solarize .6 8;"
    "Equalize .6 8, PosterizeOriginal .4 6; Rotate .8 8, Color .4 0; Rotate .4 9, Equalize .6 2;"
    "Equalize 0 7, Equalize .8 8; Invert .6 4, Equalize 1 8; Color .6 4, Contrast 1 8;"
    "Rotate .8 8, Color 1 2; Color .8 8, Solarize .8 7; Sharpness .4 7, Invert .6 8;"
    "ShearX .6 5, Equalize 1 9; Color .4 0, Equalize .6 3; Equalize .4 7, Solarize .2 4;"
    "Solarize .6 5, AutoContrast .6 5; Invert .6 4, Equalize 1 8; Color .6 4, Contrast 1 8;"
    "Equalize .8 8, Equalize .6 3"
)


def _renamed(policy: tuple, old: str, new: str) -> tuple:
    return tuple(tuple((new if n == old else n, p, m) for n, p, m in sub) for sub in policy)


# The 'r' variants use the research Posterize (bits removed grow with magnitude).
AA_POLICIES = {
    "v0": _V0,
    "v0r": _renamed(_V0, "Posterize", "PosterizeIncreasing"),
    "original": _ORIGINAL,
    "originalr": _renamed(_ORIGINAL, "PosterizeOriginal", "PosterizeIncreasing"),
}

# TimmAutoAugment's `interpolation` -> fixed PIL filter; None means a random pick per op.
_TIMM_INTERPOLATIONS: dict[str, int | None] = {
    "bilinear": _BILINEAR,
    "bicubic": _BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "hamming": Image.Resampling.HAMMING,
    "random": None,
}


def _parse_sections(config_str: str, where: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """timm's config sections after the first: a key followed by a value starting with a digit.
    Sections without a digit are skipped, as timm does; for a repeated key the first wins."""
    out: dict[str, str] = {}
    for section in config_str.split("-")[1:]:
        parts = re.split(r"(\d.*)", section)
        if len(parts) < 2:
            continue
        key, value = parts[0], parts[1]
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown section {section!r} in {config_str!r}; supported:"
                f" {', '.join(allowed)}"
            )
        out.setdefault(key, value)
    return out


def _section_number(sections: dict, key: str, kind: type, where: str, default: Any) -> Any:
    if key not in sections:
        return default
    try:
        return kind(sections[key])
    except ValueError:
        raise ConfigError(f"{where}: section {key!r} needs a {kind.__name__}") from None


class TimmAutoAugment(Op):
    """PaddleClas's TimmAutoAugment: RandAugment ('rand-...') or AutoAugment policies.

    `config_str` forms: 'rand' followed by sections m<int> (magnitude, default 10), n<int> (ops
    per image, default 2), w0 (timm's choice weights, ops drawn without replacement),
    mstd<float> (magnitude noise), inc<any> (the "increasing" op variants; as in PaddleClas any
    value, even inc0, turns them on), e.g. 'rand-m9-mstd0.5-inc1'. AutoAugment: a policy name,
    'v0', 'v0r', 'original' or 'originalr', optionally with -mstd<float>, e.g. 'v0r-mstd0.5'
    (timm's spelling; PaddleClas 2.6 routes only strings starting 'auto' to AutoAugment and then
    rejects them as policy names). 'augmix' is not supported. With probability `prob` the
    augmentation runs at all (PaddleClas's wrapper; prob 0 disables it).

    Stored params (all integers) and their ranges:
      applied          [0, 1]      the `prob` gate fired
      RandAugment, for each of the n layers i:
        op{i}          [0, 14]     index into the 15 ops (_RAND_OPS or _RAND_INCREASING_OPS)
        on{i}          [0, 1]      the op's own probability (0.5) fired
        mag{i}         [0, 10000]  magnitude in 1/1000 of a level, after noise and clipping
        neg{i}         [0, 1]      sign flip of a signed op (0 for unsigned ops)
        interp{i}      [0, 1]      bilinear/bicubic, only when interpolation is 'random'
      AutoAugment:
        policy         [0, 24]     sub-policy index
        on{j}, mag{j}, neg{j}[, interp{j}] for the sub-policy's 2 ops, as above
    Params of ops that did not fire are 0.
    """

    name = "TimmAutoAugment"
    args = ("config_str", "interpolation", "img_size", "mean", "prob")
    needs = HWC
    needs_uint8 = True

    def __init__(
        self,
        key: str,
        config_str: Any = "rand-m9-mstd0.5-inc1",
        interpolation: Any = "bicubic",
        img_size: Any = 224,
        mean: Any = None,
        prob: Any = 1.0,
    ) -> None:
        self.key = key
        if not _is_num(prob) or not 0 <= prob <= 1:
            raise ConfigError(f"{key}.prob: expected a number in [0, 1], got {prob!r}")
        self.prob = float(prob)
        if isinstance(img_size, (list, tuple)):
            sizes = [_pos_int(v, f"{key}.img_size") for v in img_size]
            if not sizes:
                raise ConfigError(f"{key}.img_size: expected a positive integer or a list")
            self.img_size: int | list[int] = sizes
        else:
            self.img_size = _pos_int(img_size, f"{key}.img_size")
        self.mean = _floats3([0.485, 0.456, 0.406] if mean is None else mean, f"{key}.mean")
        self.fill = _mean_fill(self.mean)
        if interpolation in (None, ""):
            interpolation = "random"
        if not isinstance(interpolation, str) or interpolation not in _TIMM_INTERPOLATIONS:
            raise ConfigError(
                f"{key}.interpolation: expected one of {', '.join(_TIMM_INTERPOLATIONS)}, got"
                f" {interpolation!r} (PaddleClas would silently use bilinear)"
            )
        self.interpolation = interpolation
        self._filter = _TIMM_INTERPOLATIONS[interpolation]
        self.hparams = {
            "translate_const": int(min(self._sizes()) * 0.45),
            "translate_pct": 0.45,
        }
        if not isinstance(config_str, str) or not config_str:
            raise ConfigError(f"{key}.config_str: expected a string like 'rand-m9-mstd0.5-inc1'")
        self.config_str = config_str
        self._parse(config_str, f"{key}.config_str")
        slot = ("on", "mag", "neg") + (("interp",) if self._filter is None else ())
        names = ["applied"]
        if self.mode == "rand":
            for i in range(self.num_layers):
                names += [f"op{i}"] + [f"{s}{i}" for s in slot]
        else:
            names.append("policy")
            for j in range(self._slots):
                names += [f"{s}{j}" for s in slot]
        self.param_names = tuple(names)

    def _sizes(self) -> list[int]:
        return self.img_size if isinstance(self.img_size, list) else [self.img_size]

    def _parse(self, config_str: str, where: str) -> None:
        head = config_str.split("-")[0]
        if config_str.startswith("rand"):
            if head != "rand":
                raise ConfigError(
                    f"{where}: a RandAugment string starts with 'rand-', got {head!r}"
                )
            sections = _parse_sections(config_str, where, ("m", "n", "w", "mstd", "inc"))
            self.mode = "rand"
            self.magnitude = float(_section_number(sections, "m", int, where, int(MAX_LEVEL)))
            self.num_layers = _section_number(sections, "n", int, where, 2)
            if self.num_layers < 0:
                raise ConfigError(f"{where}: n must be >= 0, got {self.num_layers}")
            weight_idx = _section_number(sections, "w", int, where, None)
            if weight_idx not in (None, 0):
                raise ConfigError(f"{where}: only weight set w0 exists, got w{weight_idx}")
            self.weights: np.ndarray | None = None
            if weight_idx == 0:
                w = np.array(_RAND_WEIGHTS_0, dtype=np.float64)
                self.weights = w / w.sum()
                if self.num_layers > int(np.count_nonzero(w)):
                    raise ConfigError(
                        f"{where}: w0 draws ops without replacement; n must be <="
                        f" {int(np.count_nonzero(w))}"
                    )
            self.ops = _RAND_INCREASING_OPS if "inc" in sections else _RAND_OPS
            self.magnitude_std = _section_number(sections, "mstd", float, where, 0.0)
            self._slots = 0
        elif head in AA_POLICIES:
            sections = _parse_sections(config_str, where, ("mstd",))
            self.mode = "auto"
            self.policy = AA_POLICIES[head]
            self._slots = max(len(sub) for sub in self.policy)
            self.magnitude_std = _section_number(sections, "mstd", float, where, 0.0)
        elif config_str.startswith("augmix"):
            raise ConfigError(f"{where}: AugMix ('augmix...') is not supported offline")
        else:
            raise ConfigError(
                f"{where}: unsupported {config_str!r}; expected 'rand-...' (RandAugment) or an"
                f" AutoAugment policy: {', '.join(AA_POLICIES)} (optionally -mstd<float>)"
            )
        if not np.isfinite(self.magnitude_std):
            raise ConfigError(f"{where}: mstd must be finite")

    def param_ranges(self) -> tuple[tuple[int, int], ...]:
        """Inclusive (min, max) of each stored param, in `param_names` order."""
        ranges = {
            "applied": (0, 1),
            "policy": (0, len(self.policy) - 1) if self.mode == "auto" else (0, 0),
            "op": (0, len(_RAND_OPS) - 1),
            "on": (0, 1),
            "mag": (0, MAX_MAGNITUDE),
            "neg": (0, 1),
            "interp": (0, 1),
        }
        return tuple(ranges[n.rstrip("0123456789")] for n in self.param_names)

    # ---------------------------------------------------------------------------- draw

    def _quantise(self, magnitude: float) -> int:
        """Magnitude (level units) -> stored integer: clip to [0, 10], round to 1/1000."""
        return int(round(min(MAX_LEVEL, max(0.0, magnitude)) * MAGNITUDE_RESOLUTION))

    def _draw_op(self, name: str, prob: float, magnitude: float, rng: np.random.Generator) -> list:
        """(on, mag, neg[, interp]) for one op, as AugmentOp.__call__ draws them."""
        geometric, signed = _TIMM_OPS[name][3], _TIMM_OPS[name][2]
        slot = [0, 0, 0] + ([0] if self._filter is None else [])
        if prob < 1.0 and rng.random() > prob:
            return slot
        if self.magnitude_std > 0:
            magnitude = float(rng.normal(magnitude, self.magnitude_std))
        slot[0], slot[1] = 1, self._quantise(magnitude)
        if signed:
            slot[2] = int(rng.random() > 0.5)
        if self._filter is None and geometric:
            slot[3] = int(rng.integers(0, 2))
        return slot

    def draw(self, img: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
        out = [0] * len(self.param_names)
        if not rng.random() < self.prob:
            return tuple(out)
        out[0] = 1
        if self.mode == "rand":
            n = self.num_layers
            if self.weights is None:
                picks = rng.integers(0, len(self.ops), size=n)
            else:
                picks = rng.choice(len(self.ops), size=n, replace=False, p=self.weights)
            pos = 1
            for pick in picks:
                slot = self._draw_op(self.ops[int(pick)], 0.5, self.magnitude, rng)
                out[pos : pos + 1 + len(slot)] = [int(pick), *slot]
                pos += 1 + len(slot)
        else:
            index = int(rng.integers(0, len(self.policy)))
            out[1] = index
            pos = 2
            for name, prob, magnitude in self.policy[index]:
                slot = self._draw_op(name, prob, float(magnitude), rng)
                out[pos : pos + len(slot)] = slot
                pos += len(slot)
        return tuple(out)

    # --------------------------------------------------------------------------- apply

    def _apply_op(self, img: Image.Image, name: str, slot: tuple[int, ...]) -> Image.Image:
        on = _check(slot[0], 0, 1, "on")
        mag = _check(slot[1], 0, MAX_MAGNITUDE, "mag")
        neg = _check(slot[2], 0, 1, "neg")
        pick = _check(slot[3], 0, 1, "interp") if self._filter is None else 0
        if not on:
            return img
        level_fn, image_fn, _signed_op, _geometric = _TIMM_OPS[name]
        args = level_fn(mag / MAGNITUDE_RESOLUTION, bool(neg), self.hparams)
        resample = self._filter if self._filter is not None else _RANDOM_FILTERS[pick]
        return image_fn(img, args, resample, self.fill)

    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        if not _check(params[0], 0, 1, "applied"):
            return img
        pil = _to_pil(img)
        width = 3 + (self._filter is None)
        if self.mode == "rand":
            for i in range(self.num_layers):
                base = 1 + i * (width + 1)
                op = _check(params[base], 0, len(self.ops) - 1, f"op{i}")
                pil = self._apply_op(pil, self.ops[op], params[base + 1 : base + 1 + width])
        else:
            index = _check(params[1], 0, len(self.policy) - 1, "policy")
            for j, (name, _prob, _mag) in enumerate(self.policy[index]):
                base = 2 + j * width
                pil = self._apply_op(pil, name, params[base : base + width])
        return np.asarray(pil)

    def spec(self) -> dict:
        return {
            "name": self.name,
            "config_str": self.config_str,
            "interpolation": self.interpolation,
            "img_size": self.img_size,
            "mean": self.mean,
            "prob": self.prob,
            "magnitude_resolution": MAGNITUDE_RESOLUTION,
        }


# --------------------------------------------------------------------------------------------
# PaddleClas's own AutoAugment (ImageNetPolicy) and RandAugment (autoaugment.py, randaugment.py)


def _rotate_with_gray(img: Image.Image, degrees: float) -> Image.Image:
    """Rotate (nearest filter) and fill the uncovered corners with gray 128."""
    rotated = img.convert("RGBA").rotate(degrees)
    gray = Image.new("RGBA", rotated.size, (128,) * 4)
    return Image.composite(rotated, gray, rotated).convert(img.mode)


def _ppcls_op(name: str, img: Image.Image, magnitude: Any, sign: int, fill: tuple) -> Image.Image:
    """One op of PaddleClas's SubPolicy / RandAugment tables; `sign` is +1 or -1."""
    if name in ("shearX", "shearY"):
        matrix = (
            (1, magnitude * sign, 0, 0, 1, 0)
            if name == "shearX"
            else (1, 0, 0, magnitude * sign, 1, 0)
        )
        return img.transform(img.size, Image.Transform.AFFINE, matrix, _BICUBIC, fillcolor=fill)
    if name == "translateX":
        matrix = (1, 0, magnitude * img.size[0] * sign, 0, 1, 0)
        return img.transform(img.size, Image.Transform.AFFINE, matrix, fillcolor=fill)
    if name == "translateY":
        matrix = (1, 0, 0, 0, 1, magnitude * img.size[1] * sign)
        return img.transform(img.size, Image.Transform.AFFINE, matrix, fillcolor=fill)
    if name == "rotate":
        return _rotate_with_gray(img, magnitude)
    enhancers = {
        "color": ImageEnhance.Color,
        "contrast": ImageEnhance.Contrast,
        "sharpness": ImageEnhance.Sharpness,
        "brightness": ImageEnhance.Brightness,
    }
    if name in enhancers:
        return enhancers[name](img).enhance(1 + magnitude * sign)
    if name == "posterize":
        return ImageOps.posterize(img, int(magnitude))
    if name == "solarize":
        return ImageOps.solarize(img, magnitude)
    if name == "autocontrast":
        return ImageOps.autocontrast(img)
    if name == "equalize":
        return ImageOps.equalize(img)
    assert name == "invert", name
    return ImageOps.invert(img)


_PPCLS_SIGNED = (
    *("shearX", "shearY", "translateX", "translateY"),
    *("color", "contrast", "sharpness", "brightness"),
)


def _ppcls_levels() -> dict[str, np.ndarray | list]:
    """SubPolicy's magnitude tables: 10 values per op, indexed by the policy's magnitude."""
    return {
        "shearX": np.linspace(0, 0.3, 10),
        "shearY": np.linspace(0, 0.3, 10),
        "translateX": np.linspace(0, 150 / 331, 10),
        "translateY": np.linspace(0, 150 / 331, 10),
        "rotate": np.linspace(0, 30, 10),
        "color": np.linspace(0.0, 0.9, 10),
        "posterize": np.round(np.linspace(8, 4, 10), 0).astype(np.int_),
        "solarize": np.linspace(256, 0, 10),
        "contrast": np.linspace(0.0, 0.9, 10),
        "sharpness": np.linspace(0.0, 0.9, 10),
        "brightness": np.linspace(0.0, 0.9, 10),
        "autocontrast": [0] * 10,
        "equalize": [0] * 10,
        "invert": [0] * 10,
    }


_IMAGENET_POLICY = (
    (0.4, "posterize", 8, 0.6, "rotate", 9),
    (0.6, "solarize", 5, 0.6, "autocontrast", 5),
    (0.8, "equalize", 8, 0.6, "equalize", 3),
    (0.6, "posterize", 7, 0.6, "posterize", 6),
    (0.4, "equalize", 7, 0.2, "solarize", 4),
    (0.4, "equalize", 4, 0.8, "rotate", 8),
    (0.6, "solarize", 3, 0.6, "equalize", 7),
    (0.8, "posterize", 5, 1.0, "equalize", 2),
    (0.2, "rotate", 3, 0.6, "solarize", 8),
    (0.6, "equalize", 8, 0.4, "posterize", 6),
    (0.8, "rotate", 8, 0.4, "color", 0),
    (0.4, "rotate", 9, 0.6, "equalize", 2),
    (0.0, "equalize", 7, 0.8, "equalize", 8),
    (0.6, "invert", 4, 1.0, "equalize", 8),
    (0.6, "color", 4, 1.0, "contrast", 8),
    (0.8, "rotate", 8, 1.0, "color", 2),
    (0.8, "color", 8, 0.8, "solarize", 7),
    (0.4, "sharpness", 7, 0.6, "invert", 8),
    (0.6, "shearX", 5, 1.0, "equalize", 9),
    (0.4, "color", 0, 0.6, "equalize", 3),
    (0.4, "equalize", 7, 0.2, "solarize", 4),
    (0.6, "solarize", 5, 0.6, "autocontrast", 5),
    (0.6, "invert", 4, 1.0, "equalize", 8),
    (0.6, "color", 4, 1.0, "contrast", 8),
    (0.8, "equalize", 8, 0.6, "equalize", 3),
)


def _fillcolor(v: Any, where: str) -> tuple[int, ...]:
    if (
        not isinstance(v, (list, tuple))
        or len(v) != 3
        or not all(_is_int(x) and 0 <= x <= 255 for x in v)
    ):
        raise ConfigError(f"{where}: expected three integers in [0, 255], got {v!r}")
    return tuple(int(x) for x in v)


class AutoAugment(Op):
    """PaddleClas's AutoAugment (ImageNetPolicy): one of 25 sub-policies of two ops each.

    Stored params and ranges:
      policy  [0, 24]  sub-policy index
      on1     [0, 1]   first op fired (its probability p1)
      neg1    [0, 1]   first op's sign is -1 (signed ops: shear, translate, enhance; else 0)
      on2     [0, 1]   second op fired
      neg2    [0, 1]   second op's sign is -1
    Magnitudes are fixed by the policy, so nothing continuous is drawn.
    """

    name = "AutoAugment"
    param_names = ("policy", "on1", "neg1", "on2", "neg2")
    args = ("fillcolor",)
    needs = HWC
    needs_uint8 = True

    def __init__(self, key: str, fillcolor: Any = (128, 128, 128)) -> None:
        self.key = key
        self.fillcolor = _fillcolor(fillcolor, f"{key}.fillcolor")
        levels = _ppcls_levels()
        self._subs = [
            ((n1, levels[n1][m1], p1), (n2, levels[n2][m2], p2))
            for p1, n1, m1, p2, n2, m2 in _IMAGENET_POLICY
        ]

    def param_ranges(self) -> tuple[tuple[int, int], ...]:
        return ((0, len(self._subs) - 1), (0, 1), (0, 1), (0, 1), (0, 1))

    def draw(self, img: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
        index = int(rng.integers(0, len(self._subs)))
        out = [index]
        for name, _mag, prob in self._subs[index]:
            if rng.random() < prob:
                out += [1, int(name in _PPCLS_SIGNED and rng.random() < 0.5)]
            else:
                out += [0, 0]
        return tuple(out)

    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        index = _check(params[0], 0, len(self._subs) - 1, "policy")
        pil = _to_pil(img)
        for j, (name, mag, _prob) in enumerate(self._subs[index]):
            on = _check(params[1 + 2 * j], 0, 1, "on")
            neg = _check(params[2 + 2 * j], 0, 1, "neg")
            if on:
                pil = _ppcls_op(name, pil, mag, -1 if neg else 1, self.fillcolor)
        return np.asarray(pil)

    def spec(self) -> dict:
        return {"name": self.name, "fillcolor": list(self.fillcolor)}


_PPCLS_RAND_OPS = (
    "shearX",
    "shearY",
    "translateX",
    "translateY",
    "rotate",
    "color",
    "posterize",
    "solarize",
    "contrast",
    "sharpness",
    "brightness",
    "autocontrast",
    "equalize",
    "invert",
)


class RandAugment(Op):
    """PaddleClas's RandAugment (randaugment.py): `num_layers` ops drawn uniformly (with
    replacement) from 14, each always applied at the fixed `magnitude`.

    Stored params and ranges, for each layer i:
      op{i}   [0, 13]  index into shearX, shearY, translateX, translateY, rotate, color,
                       posterize, solarize, contrast, sharpness, brightness, autocontrast,
                       equalize, invert
      neg{i}  [0, 1]   the op's sign is -1 (signed ops only; else 0)
    """

    name = "RandAugment"
    args = ("num_layers", "magnitude", "fillcolor")
    needs = HWC
    needs_uint8 = True

    def __init__(
        self, key: str, num_layers: Any = 2, magnitude: Any = 5, fillcolor: Any = (128, 128, 128)
    ) -> None:
        self.key = key
        if not _is_int(num_layers) or num_layers < 0:
            raise ConfigError(f"{key}.num_layers: expected an integer >= 0, got {num_layers!r}")
        if not _is_num(magnitude) or magnitude < 0:
            raise ConfigError(f"{key}.magnitude: expected a number >= 0, got {magnitude!r}")
        self.num_layers = int(num_layers)
        self.magnitude = magnitude
        self.fillcolor = _fillcolor(fillcolor, f"{key}.fillcolor")
        level = magnitude / 10
        self._levels: dict[str, Any] = {
            "shearX": 0.3 * level,
            "shearY": 0.3 * level,
            "translateX": 150.0 / 331 * level,
            "translateY": 150.0 / 331 * level,
            "rotate": 30 * level,
            "color": 0.9 * level,
            "posterize": int(4.0 * level),
            "solarize": 256.0 * level,
            "contrast": 0.9 * level,
            "sharpness": 0.9 * level,
            "brightness": 0.9 * level,
            "autocontrast": 0,
            "equalize": 0,
            "invert": 0,
        }
        self.param_names = tuple(p for i in range(self.num_layers) for p in (f"op{i}", f"neg{i}"))

    def param_ranges(self) -> tuple[tuple[int, int], ...]:
        return ((0, len(_PPCLS_RAND_OPS) - 1), (0, 1)) * self.num_layers

    def draw(self, img: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
        out: list[int] = []
        for _ in range(self.num_layers):
            op = int(rng.integers(0, len(_PPCLS_RAND_OPS)))
            out += [op, int(_PPCLS_RAND_OPS[op] in _PPCLS_SIGNED and rng.random() < 0.5)]
        return tuple(out)

    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        pil = _to_pil(img)
        for i in range(self.num_layers):
            name = _PPCLS_RAND_OPS[_check(params[2 * i], 0, len(_PPCLS_RAND_OPS) - 1, "op")]
            neg = _check(params[2 * i + 1], 0, 1, "neg")
            pil = _ppcls_op(name, pil, self._levels[name], -1 if neg else 1, self.fillcolor)
        return np.asarray(pil)

    def spec(self) -> dict:
        return {
            "name": self.name,
            "num_layers": self.num_layers,
            "magnitude": self.magnitude,
            "fillcolor": list(self.fillcolor),
        }


register(TimmAutoAugment, AutoAugment, RandAugment)
