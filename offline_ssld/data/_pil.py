"""Helpers shared by the PIL-based ops (augment.py, color.py).

Kept apart from those modules so that any of them can be imported first: transforms.py imports
every op module at its end, and op modules import only transforms.py and this file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from offline_ssld.data.transforms import _BadParams
from offline_ssld.errors import DataError


def _to_pil(img: Any) -> Image.Image:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise DataError(
            "PIL-based augmentation needs an 8-bit image (place it before NormalizeImage);"
            f" got {getattr(img, 'dtype', type(img).__name__)}"
        )
    return Image.fromarray(np.ascontiguousarray(img))


def _check(value: int, lo: int, hi: int, what: str) -> int:
    if not lo <= value <= hi:
        raise _BadParams(f"{what} must be in [{lo}, {hi}], got {value}")
    return value
