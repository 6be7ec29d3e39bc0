"""JPEG decoding for the input path: libjpeg-turbo through Pillow, at a reduced DCT scale when
the crop that follows needs no more, with crop and resize fused into one pass.

Chosen by measurement (benchmarks/input_path.py, docs/guide/input_path.md): Pillow's bundled
libjpeg-turbo decodes a 500x375 JPEG in about half the time of OpenCV 4.6's decoder, and at
1/2, 1/4 or 1/8 scale a large crop costs a fraction of a full decode. Files that are not plain
JPEGs (PNG, BMP, WebP, JPEGs with an EXIF rotation, which OpenCV applies) keep the OpenCV
path, so their pixels are what they were.

Every function here is pure given the bytes and the stored params, and dump-teacher and
train-student both call them, so a view replays bit for bit. TRANSFORMS_VERSION changed when
this path arrived, so a cache made with the old pixels is refused.
"""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
from PIL import Image

SCALES = (8, 4, 2, 1)
"""libjpeg's DCT scalings this path uses, largest first."""
_ORIENTATION = 0x0112
_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
    "hamming": Image.Resampling.HAMMING,
}
_CV2_WARP = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}
"""Interpolations cv2.warpAffine has; a crop resized with another ('area') is never reduced."""


def open_jpeg(data: bytes) -> Image.Image | None:
    """The JPEG lazily opened (header parsed, nothing decoded), or None when the file is not a
    JPEG this path decodes: another format, or an EXIF orientation OpenCV would apply."""
    if data[:2] != b"\xff\xd8":
        return None
    try:
        im = Image.open(io.BytesIO(data), formats=("JPEG",))
        if im.mode not in ("RGB", "L") or im.getexif().get(_ORIENTATION, 1) != 1:
            return None
    except (OSError, ValueError, SyntaxError):
        return None
    return im


def reduction(box_w: int, box_h: int, out_w: int, out_h: int, resample: str, backend: str) -> int:
    """The largest DCT scale s that leaves the crop at least the output size (so the resize
    still only shrinks or keeps), 1 when `resample` cannot map a reduced crop exactly."""
    if resample not in (_PIL_FILTERS if backend == "pil" else _CV2_WARP):
        return 1
    for s in SCALES:
        if box_w >= out_w * s and box_h >= out_h * s:
            return s
    return 1


def decode_rgb(im: Image.Image, scale: int) -> np.ndarray:
    """HWC uint8 RGB pixels of an `open_jpeg` image decoded at 1/scale (libjpeg's scaled IDCT:
    each side is ceil(side / scale))."""
    w, h = im.size
    if scale > 1:
        im.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
        if im.size != (math.ceil(w / scale), math.ceil(h / scale)):
            raise ValueError(f"libjpeg gave {im.size} for a {w}x{h} JPEG at 1/{scale}")
    if im.mode != "RGB":
        im = im.convert("RGB")  # grayscale: three equal channels, as OpenCV gives
    return np.asarray(im)


def crop_resize(
    pixels: np.ndarray,
    scale: int,
    box: tuple[int, int, int, int],
    size: tuple[int, int],
    resample: str,
    backend: str,
) -> np.ndarray:
    """Resize the crop `box` (x, y, w, h in full-resolution pixels) of `pixels`, decoded at
    1/scale, to `size` (w, h). At scale 1 it is exactly the op's crop then resize; at a reduced
    scale each output pixel samples the point a full-resolution resize would, mapped into the
    reduced image (reduced pixel j covers full pixels [j*s, (j+1)*s))."""
    x, y, w, h = box
    if backend == "pil":
        im = Image.fromarray(pixels)
        if scale == 1:
            im = im.crop((x, y, x + w, y + h))
            return np.asarray(im.resize(size, _PIL_FILTERS[resample]))
        edges = (x / scale, y / scale, (x + w) / scale, (y + h) / scale)
        return np.asarray(im.resize(size, _PIL_FILTERS[resample], box=edges))
    if scale == 1:
        return cv2.resize(pixels[y : y + h, x : x + w], size, interpolation=_cv2_resize(resample))
    out_w, out_h = size
    sx, sy = w / out_w, h / out_h
    # output pixel i -> full-resolution x + (i + 0.5) * sx - 0.5 -> reduced (that + 0.5) / s - 0.5
    matrix = np.array(
        [
            [sx / scale, 0.0, (x + 0.5 * sx) / scale - 0.5],
            [0.0, sy / scale, (y + 0.5 * sy) / scale - 0.5],
        ]
    )
    return cv2.warpAffine(
        pixels,
        matrix,
        size,
        flags=_CV2_WARP[resample] | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def _cv2_resize(resample: str) -> int:
    return cv2.INTER_AREA if resample == "area" else _CV2_WARP[resample]
