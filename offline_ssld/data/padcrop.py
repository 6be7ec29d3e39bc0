"""PaddleClas's Padv2 and RandomCropImage (ppcls/data/preprocess/ops/operators.py), the pad
and plain random crop of the PULC attribute configs: pad to a fixed canvas, then cut a
window of the model's size at a random place (stored per view as its corner)."""

from __future__ import annotations

from typing import Any

import numpy as np

from offline_ssld.data.transforms import (
    MAX_IMAGE_SIDE,
    Op,
    _BadParams,
    _is_int,
    _is_num,
    _size_wh,
    register,
)
from offline_ssld.errors import ConfigError, DataError

PAD_MODES = (-1, 0, 1, 2)  # given offsets, right/bottom, centred, left/top


class Padv2(Op):
    """Place the image on a float32 canvas of `size` ([w, h]) filled with `fill_value`;
    an image already of that size is returned as float32, as PaddleClas does."""

    name = "Padv2"
    args = ("size", "pad_mode", "offsets", "fill_value")

    def __init__(
        self,
        key: str,
        size: Any = None,
        pad_mode: Any = 0,
        offsets: Any = None,
        fill_value: Any = (127.5, 127.5, 127.5),
    ) -> None:
        if size is None:  # PaddleClas raises a TypeError without it
            raise ConfigError(f"{key}.size: required")
        self.size = _size_wh(size, f"{key}.size")
        if not _is_int(pad_mode) or pad_mode not in PAD_MODES:
            raise ConfigError(f"{key}.pad_mode: expected one of -1, 0, 1, 2, got {pad_mode!r}")
        self.pad_mode = int(pad_mode)
        self.offsets: tuple[int, int] | None = None
        if self.pad_mode == -1:
            if not (
                isinstance(offsets, list | tuple)
                and len(offsets) == 2
                and all(_is_int(v) and v >= 0 for v in offsets)
            ):
                raise ConfigError(f"{key}.offsets: pad_mode -1 needs [x, y], got {offsets!r}")
            self.offsets = (int(offsets[0]), int(offsets[1]))
        fill = list(fill_value) if isinstance(fill_value, list | tuple) else [fill_value]
        if len(fill) not in (1, 3) or not all(_is_num(v) for v in fill):
            raise ConfigError(f"{key}.fill_value: expected a number or 3, got {fill_value!r}")
        self.fill = [float(v) for v in fill]

    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        im_h, im_w = img.shape[:2]
        w, h = self.size
        if im_h > h or im_w > w:
            raise DataError(f"image {im_w}x{im_h} is larger than Padv2 size {w}x{h}")
        if (im_h, im_w) == (h, w):
            return img.astype(np.float32)
        if self.offsets is not None:
            x, y = self.offsets
        else:
            x, y = {0: (0, 0), 1: ((w - im_w) // 2, (h - im_h) // 2), 2: (w - im_w, h - im_h)}[
                self.pad_mode
            ]
        if x + im_w > w or y + im_h > h:
            raise DataError(f"Padv2 offsets {x},{y} put a {im_w}x{im_h} image outside {w}x{h}")
        canvas = np.ones((h, w, 3), dtype=np.float32) * np.array(self.fill, dtype=np.float32)
        canvas[y : y + im_h, x : x + im_w, :] = img.astype(np.float32)
        return canvas

    def spec(self) -> dict:
        return {
            "name": self.name,
            "size": list(self.size),
            "pad_mode": self.pad_mode,
            "offsets": list(self.offsets) if self.offsets else None,
            "fill_value": self.fill,
        }


class RandomCropImage(Op):
    """A `size` ([w, h]) window at a uniformly random corner, no resize."""

    name = "RandomCropImage"
    param_names = ("x", "y")
    ranges = ((0, MAX_IMAGE_SIDE - 1),) * 2
    args = ("size",)

    def __init__(self, key: str, size: Any = None) -> None:
        if size is None:
            raise ConfigError(f"{key}.size: required")
        self.size = _size_wh(size, f"{key}.size")

    def draw(self, img: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
        h, w = img.shape[:2]
        tw, th = self.size
        if w < tw or h < th:  # PaddleClas's random.randint fails on an empty range
            raise DataError(f"image {w}x{h} is smaller than RandomCropImage size {tw}x{th}")
        y = int(rng.integers(0, h - th, endpoint=True))
        x = int(rng.integers(0, w - tw, endpoint=True))
        return x, y

    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        x, y = (int(p) for p in params)
        h, w = img.shape[:2]
        tw, th = self.size
        if not (0 <= x <= w - tw and 0 <= y <= h - th):
            raise _BadParams(f"crop corner x={x} y={y} outside a {w}x{h} image for {tw}x{th}")
        return img[y : y + th, x : x + tw]

    def spec(self) -> dict:
        return {"name": self.name, "size": list(self.size)}


register(Padv2, RandomCropImage)
