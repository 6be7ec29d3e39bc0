"""JPEG decoding for the input path: libjpeg-turbo, at a reduced DCT scale when the crop that
follows needs no more, with crop and resize fused into one pass.

Chosen by measurement (benchmarks/input_path.py, docs/guide/input_path.md): libjpeg-turbo
decodes a 500x375 JPEG in about a third of the time of OpenCV 4.6's decoder, and at 1/2, 1/4
or 1/8 scale a large crop costs a fraction of a full decode. simplejpeg calls it straight
into a numpy array; without simplejpeg, Pillow's bundled libjpeg-turbo gives the same pixels
(tests/test_input_path.py checks it), only slower. Files that are not plain JPEGs (PNG, BMP,
WebP, CMYK JPEGs, JPEGs with an EXIF rotation, which OpenCV applies) keep the OpenCV path, so
their pixels are what they were.

Every function here is pure given the bytes and the stored params, and dump-teacher and
train-student both call them, so a view replays bit for bit. TRANSFORMS_VERSION changed when
this path arrived, so a cache made with the old pixels is refused.
"""

from __future__ import annotations

import importlib
import io
import math
import struct
from types import ModuleType

import cv2
import numpy as np
from PIL import Image

simplejpeg: ModuleType | None
try:
    simplejpeg = importlib.import_module("simplejpeg")
except ImportError:  # Pillow's libjpeg-turbo then: the same pixels, slower
    simplejpeg = None

SCALES = (8, 4, 2, 1)
"""libjpeg's DCT scalings this path uses, largest first."""
_COLORSPACES = ("YCbCr", "Gray", "RGB")  # what libjpeg turns into RGB the way OpenCV does
PIL_FILTERS = {
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


def decoder_name() -> str:
    return "simplejpeg" if simplejpeg is not None else "pillow"


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG this path decodes, or None: another format, a CMYK JPEG, or an
    EXIF orientation other than 1 (OpenCV would rotate it)."""
    if data[:2] != b"\xff\xd8" or exif_orientation(data) != 1:
        return None
    try:
        if simplejpeg is not None:
            h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            return (w, h) if colorspace in _COLORSPACES else None
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
            return im.size if im.mode in ("RGB", "L") else None
    except (OSError, ValueError, SyntaxError):
        return None


def exif_orientation(data: bytes) -> int | None:
    """The EXIF orientation tag of a JPEG (1 when it has none), None when its EXIF block is
    unreadable. Walks the marker segments before the first scan."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan: no EXIF before it
            return 1
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and segment[:6] == b"Exif\0\0":
            return _tiff_orientation(segment[6:])
        pos += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int | None:
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
        for i in range(count):
            entry = ifd + 2 + 12 * i
            tag, kind = struct.unpack(order + "HH", tiff[entry : entry + 4])
            if tag == 0x0112:
                return (
                    struct.unpack(order + "H", tiff[entry + 8 : entry + 10])[0]
                    if kind == 3
                    else None
                )
    except (KeyError, struct.error):
        return None
    return 1


def reduction(box_w: int, box_h: int, out_w: int, out_h: int, resample: str, backend: str) -> int:
    """The largest DCT scale s that leaves the crop at least the output size (so the resize
    still only shrinks or keeps), 1 when `resample` cannot map a reduced crop exactly."""
    if resample not in (PIL_FILTERS if backend == "pil" else _CV2_WARP):
        return 1
    for s in SCALES:
        if box_w >= out_w * s and box_h >= out_h * s:
            return s
    return 1


def decode_rgb(data: bytes, size: tuple[int, int], scale: int) -> np.ndarray:
    """HWC uint8 RGB pixels of a JPEG of `size` (w, h; from `jpeg_size`) decoded at 1/scale
    (libjpeg's scaled IDCT: each side becomes ceil(side / scale)). OSError or ValueError
    when libjpeg cannot decode it."""
    w, h = size
    want = (math.ceil(h / scale), math.ceil(w / scale))
    if simplejpeg is not None:
        out = simplejpeg.decode_jpeg(data, "RGB", min_height=want[0], min_width=want[1])
    else:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
            if scale > 1:
                im.draft("RGB", (w // scale, h // scale))  # Pillow divides with floor
            out = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    if out.shape[:2] != want:
        raise ValueError(f"libjpeg gave {out.shape[:2]} for a {w}x{h} JPEG at 1/{scale}")
    return out


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
        if scale == 1:
            crop = Image.fromarray(np.ascontiguousarray(pixels[y : y + h, x : x + w]))
            return np.asarray(crop.resize(size, PIL_FILTERS[resample]))
        edges = (x / scale, y / scale, (x + w) / scale, (y + h) / scale)
        return np.asarray(Image.fromarray(pixels).resize(size, PIL_FILTERS[resample], box=edges))
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
