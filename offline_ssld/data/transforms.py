"""PaddleClas image transform ops, split into a random `draw` and a deterministic `apply`.

The teacher sees each image through several random augmented views; the student must later
see exactly the same views. So every random op draws its parameters as a few integers (which
the cache stores) and applies them as a pure function of (image, params). Replaying the stored
params therefore reproduces the teacher's input bit for bit.

Config names, defaults and arithmetic follow PaddleClas (ppcls/data/preprocess/ops/operators.py)
so an existing PaddleClas `transform_ops` list can be used unchanged; only the random source
differs (an explicit `np.random.Generator` instead of python's global `random`).
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import re
import struct
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from PIL import Image

# OpenCV reads this lazily on its first decode; it bounds formats our header sniffing below does
# not understand (TIFF, JPEG 2000, PNM, ...). setdefault keeps a limit the user chose.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2**26))

import cv2  # noqa: E402  (must follow the environment default above)

from offline_ssld.data import decode  # noqa: E402
from offline_ssld.errors import CacheError, ConfigError, DataError  # noqa: E402

if TYPE_CHECKING:  # batchops imports this module
    from offline_ssld.data.batchops import MixOp

TRANSFORMS_VERSION = 2
"""Bumped whenever the output of an op changes for the same spec, so stale caches are refused.
2: JPEGs decode with libjpeg-turbo (data/decode.py), at a reduced DCT scale before a large crop."""

MAX_IMAGE_PIXELS = 2**26
"""Images above this many pixels are refused: a small file must not be able to exhaust memory."""
MAX_IMAGE_SIDE = 2**16 - 1
"""Images wider or taller than this are refused (JPEG's own limit): crop boxes then fit uint16."""

_INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}
_INTERPOLATION_BY_CODE = {code: name for name, code in _INTERPOLATIONS.items()}
# backend "pil" (PaddleClas's UnifiedResize): PIL's own filters; an integer is a PIL filter code.
_PIL_INTERPOLATIONS = decode.PIL_FILTERS
_PIL_INTERPOLATION_BY_CODE = {int(code): name for name, code in _PIL_INTERPOLATIONS.items()}
RANDOM_INTERPOLATION = "random"
"""PaddleClas's 'random' picks bilinear or bicubic per call; the pick is a stored param."""
_RANDOM_CHOICES = ("bilinear", "bicubic")

HWC, CHW = "hwc", "chw"


class _BadParams(ValueError):
    """Stored params do not fit the image they are replayed on (wrong or damaged cache)."""


# --------------------------------------------------------------------------------------------
# argument validation helpers: each raises ConfigError naming the full key of the argument


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{where}: expected true or false, got {v!r}")
    return v


def _pos_int(v: Any, where: str) -> int:
    if not _is_int(v) or v < 1:
        raise ConfigError(f"{where}: expected a positive integer, got {v!r}")
    return int(v)


def _size_wh(v: Any, where: str) -> tuple[int, int]:
    """PaddleClas sizes are an int (square) or [w, h] (cv2 order)."""
    if _is_int(v):
        n = _pos_int(v, where)
        return n, n
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return _pos_int(v[0], where), _pos_int(v[1], where)
    raise ConfigError(f"{where}: expected a positive integer or [width, height], got {v!r}")


def _range(v: Any, where: str) -> tuple[float, float]:
    if (
        not isinstance(v, (list, tuple))
        or len(v) != 2
        or not all(_is_num(x) for x in v)
        or not 0 < float(v[0]) <= float(v[1])
    ):
        raise ConfigError(f"{where}: expected [min, max] with 0 < min <= max, got {v!r}")
    return float(v[0]), float(v[1])


def _floats3(v: Any, where: str, nonzero: bool = False) -> list[float]:
    if (
        not isinstance(v, (list, tuple))
        or len(v) != 3
        or not all(_is_num(x) for x in v)
        or (nonzero and any(float(x) == 0 for x in v))
    ):
        what = "three non-zero numbers" if nonzero else "three numbers"
        raise ConfigError(f"{where}: expected {what}, got {v!r}")
    return [float(x) for x in v]


def _interpolation(v: Any, where: str, backend: str = "cv2") -> str:
    """Name or integer code -> canonical name. cv2: old PaddleClas configs give cv2 codes (-1
    meant the default); pil: PaddleClas passes an integer straight to PIL as a filter code."""
    names = _PIL_INTERPOLATIONS if backend == "pil" else _INTERPOLATIONS
    by_code = _PIL_INTERPOLATION_BY_CODE if backend == "pil" else _INTERPOLATION_BY_CODE
    if v is None:
        return "bilinear"
    if isinstance(v, str) and (v.lower() in names or v.lower() == RANDOM_INTERPOLATION):
        return v.lower()
    if _is_int(v) and v == -1 and backend == "cv2":
        return "bilinear"
    if _is_int(v) and v in by_code:
        return by_code[int(v)]
    raise ConfigError(
        f"{where}: unsupported interpolation {v!r} for backend {backend!r}; supported:"
        f" {', '.join([*names, RANDOM_INTERPOLATION])}"
    )


def _backend(v: Any, where: str) -> str:
    if not isinstance(v, str) or v.lower() not in ("cv2", "pil"):
        raise ConfigError(f"{where}: expected backend 'cv2' or 'pil', got {v!r}")
    return v.lower()


def _resize(img: np.ndarray, size: tuple[int, int], backend: str, interpolation: str) -> np.ndarray:
    """Resize to (w, h) as PaddleClas's UnifiedResize does for the given backend."""
    if backend == "pil":
        out = Image.fromarray(np.ascontiguousarray(img)).resize(
            size, _PIL_INTERPOLATIONS[interpolation]
        )
        return np.asarray(out)
    return cv2.resize(img, size, interpolation=_INTERPOLATIONS[interpolation])


def _chosen_interpolation(interpolation: str, params: tuple[int, ...]) -> str:
    """The interpolation to apply: fixed, or the stored pick of 'random' (0 bilinear, 1 bicubic)."""
    if interpolation != RANDOM_INTERPOLATION:
        return interpolation
    (pick,) = params
    if pick not in (0, 1):
        raise _BadParams(f"interpolation pick must be 0 or 1, got {pick}")
    return _RANDOM_CHOICES[pick]


_FLOAT_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def parse_scale(v: Any, where: str) -> float:
    """Parse NormalizeImage.scale: a number, "0.00392157" or "1.0/255.0".

    PaddleClas eval()s this string; a config must never run code, so only a float literal or a
    quotient of two float literals is accepted.
    """
    if _is_num(v):
        value = float(v)
    elif isinstance(v, str):
        parts = [p.strip() for p in v.split("/")]
        if len(parts) > 2 or not all(_FLOAT_RE.fullmatch(p) for p in parts):
            raise ConfigError(f"{where}: expected a number or 'a/b' like '1.0/255.0', got {v!r}")
        value = float(parts[0])
        if len(parts) == 2:
            denominator = float(parts[1])
            if denominator == 0:
                raise ConfigError(f"{where}: division by zero in {v!r}")
            value /= denominator
    else:
        raise ConfigError(f"{where}: expected a number or 'a/b' like '1.0/255.0', got {v!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where}: expected a positive finite scale, got {v!r}")
    return value


# --------------------------------------------------------------------------------------------
# image size sniffing, so a decompression bomb is refused before any pixel is allocated


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG/JPEG/BMP/WebP header, or None when not recognised."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:2] == b"BM":
            (header_len,) = struct.unpack("<I", data[14:18])
            if header_len == 12:
                return struct.unpack("<HH", data[18:22])
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            chunk = data[12:16]
            if chunk == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                h = int.from_bytes(data[27:30], "little") + 1
                return w, h
            if chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
    except struct.error:
        return None
    return None


def _looks_whole(head: bytes, tail: bytes, size: int) -> bool:
    """Whether a file of `size` bytes whose header `_header_size` read in `head` is whole:
    PNG ends (`tail`) with its IEND chunk, JPEG with its end-of-image marker, BMP and WebP
    have the size their header declares."""
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return tail.endswith(b"IEND\xae\x42\x60\x82")
    if head[:2] == b"\xff\xd8":
        return tail.endswith(b"\xff\xd9")
    if head[:2] == b"BM":
        return int.from_bytes(head[2:6], "little") == size
    return int.from_bytes(head[4:8], "little") + 8 == size  # RIFF (WebP)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk JPEG segments up to the first start-of-frame marker, which holds the size."""
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        (seg_len,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return w, h
        if marker in (0xD9, 0xDA) or seg_len < 2:  # end of image / start of scan
            return None
        pos += 2 + seg_len
    return None


def _check_pixels(w: int, h: int) -> None:
    if max(w, h) > MAX_IMAGE_SIDE:
        raise DataError(f"image is {w}x{h} pixels, a side above the limit of {MAX_IMAGE_SIDE}")
    if w * h > MAX_IMAGE_PIXELS:
        raise DataError(
            f"image is {w}x{h} = {w * h} pixels, above the limit of {MAX_IMAGE_PIXELS}"
            " (decompression bomb?)"
        )


# --------------------------------------------------------------------------------------------
# ops


class Op(ABC):
    """One transform op. `draw` picks the random params, `apply` is pure given them."""

    name: str = ""
    param_names: tuple[str, ...] = ()
    # Inclusive [lo, hi] of each drawn param: the cache stores each in the narrowest integer
    # type holding its range, so a range must be exact, never a guess. Ops whose params
    # depend on their arguments set it in __init__ or override param_ranges().
    ranges: tuple[tuple[int, int], ...] = ()
    args: tuple[str, ...] = ()  # accepted config argument names
    needs: str | None = HWC  # layout the input must have (None: any)
    needs_uint8: bool = False  # PIL-based ops take 8-bit pixels, i.e. run before NormalizeImage
    mixes: bool = False  # a batch op (data/batchops.py): last, its input is (view, partner's)

    def __init__(self, key: str, **kwargs: Any) -> None:
        """Validate config arguments; `key` is the op's config key path for error messages."""
        self.key = key

    def out_layout(self, layout: str) -> str:
        """Layout of the output given the input layout; lets build_ops reject bad orders."""
        return layout

    def param_ranges(self) -> tuple[tuple[int, int], ...]:
        """Inclusive [lo, hi] of each param, in `param_names` order."""
        return self.ranges

    def draw(self, img: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
        """Random params for this image; deterministic ops draw nothing."""
        return ()

    @abstractmethod
    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        """Transform `img` using `params`; must not consult any random state."""

    def spec(self) -> dict:
        """Resolved arguments as plain data, so equal specs mean equal outputs."""
        return {"name": self.name}


class DecodeImage(Op):
    """Encoded bytes -> HWC uint8 (3 channels), RGB by default, like PaddleClas."""

    name = "DecodeImage"
    args = ("to_rgb", "channel_first", "to_np")
    needs = None

    def __init__(
        self, key: str, to_rgb: Any = True, channel_first: Any = False, to_np: Any = False
    ) -> None:
        self.to_rgb = _bool(to_rgb, f"{key}.to_rgb")
        self.channel_first = _bool(channel_first, f"{key}.channel_first")
        _bool(to_np, f"{key}.to_np")  # accepted for old PaddleClas configs; has no effect there

    def out_layout(self, layout: str) -> str:
        return CHW if self.channel_first else HWC

    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        if not isinstance(img, (bytes, bytearray, memoryview)):
            raise TypeError(f"DecodeImage expects encoded bytes, got {type(img).__name__}")
        data = bytes(img)
        self.check_header(data)
        size = decode.jpeg_size(data)
        out = None
        if size is not None:  # libjpeg-turbo: RGB
            try:
                out = decode.decode_rgb(data, size, 1)
            except (OSError, ValueError):
                out = None  # damaged: OpenCV decodes what it can, as before
            if out is not None and not self.to_rgb:
                out = np.ascontiguousarray(out[..., ::-1])
        if out is None:
            out = self._cv2_decode(data)
        if self.channel_first:
            out = out.transpose((2, 0, 1))
        return out

    def check_header(self, data: bytes) -> None:
        """Refuse an image whose header declares too many pixels, before decoding it."""
        if not data:
            raise DataError("cannot decode image (0 bytes)")
        size = _header_size(data)
        if size is not None:
            _check_pixels(*size)

    def _cv2_decode(self, data: bytes) -> np.ndarray:
        """OpenCV's decode (any format it reads; EXIF rotation applied), RGB if asked."""
        try:
            out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            out = None
        if out is None or out.ndim != 3 or out.shape[2] != 3 or out.size == 0:
            raise DataError(f"cannot decode image ({len(data)} bytes)")
        _check_pixels(out.shape[1], out.shape[0])
        return cv2.cvtColor(out, cv2.COLOR_BGR2RGB) if self.to_rgb else out

    def precheck(self, data: bytes) -> None:
        """dump-teacher's check before the teacher runs. A PNG/JPEG/BMP/WebP file with a
        header within the size limits that is whole (ends as its format ends, or has the
        size its header declares) passes without decoding, so the dump decodes each image
        once, in its loader; any other file (unknown format, truncated) is decoded on trial,
        so --skip-bad can still skip it."""
        if not self.vouch(data, data, len(data)):
            self.apply(data, ())

    def vouch(self, head: bytes, tail: bytes, size: int) -> bool:
        """Whether a file of `size` bytes that starts with `head` and ends with `tail` is a
        whole PNG/JPEG/BMP/WebP within the pixel limits (above them: DataError), so the
        dump's probe need not read the rest of it."""
        shape = _header_size(head) if head else None
        if shape is None or not _looks_whole(head, tail, size):
            return False
        _check_pixels(*shape)
        return True

    def spec(self) -> dict:
        return {"name": self.name, "to_rgb": self.to_rgb, "channel_first": self.channel_first}


class ResizeImage(Op):
    """Resize to a fixed [w, h], or so the short side equals `resize_short` (which wins)."""

    name = "ResizeImage"
    args = ("size", "resize_short", "interpolation", "backend")

    def __init__(
        self,
        key: str,
        size: Any = None,
        resize_short: Any = None,
        interpolation: Any = None,
        backend: Any = "cv2",
    ) -> None:
        # PaddleClas: a positive resize_short takes precedence over size.
        self.resize_short: int | None = None
        self.size: tuple[int, int] | None = None
        if resize_short is not None and not (_is_num(resize_short) and resize_short <= 0):
            self.resize_short = _pos_int(resize_short, f"{key}.resize_short")
        elif size is not None:
            self.size = _size_wh(size, f"{key}.size")
        else:
            raise ConfigError(f"{key}.size: one of 'size' or 'resize_short' is required")
        self.backend = _backend(backend, f"{key}.backend")
        self.interpolation = _interpolation(interpolation, f"{key}.interpolation", self.backend)
        # 'random' interpolation: the bilinear/bicubic pick is a param, range [0, 1]
        self.param_names = ("interp",) if self.interpolation == RANDOM_INTERPOLATION else ()
        self.ranges = ((0, 1),) if self.param_names else ()

    def draw(self, img: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
        return (int(rng.integers(0, 2)),) if self.param_names else ()

    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        img_h, img_w = img.shape[:2]
        if self.resize_short is not None:
            percent = float(self.resize_short) / min(img_w, img_h)
            size = (max(1, int(round(img_w * percent))), max(1, int(round(img_h * percent))))
        else:
            assert self.size is not None
            size = self.size
        return _resize(img, size, self.backend, _chosen_interpolation(self.interpolation, params))

    def spec(self) -> dict:
        return {
            "name": self.name,
            "size": list(self.size) if self.size else None,
            "resize_short": self.resize_short,
            "interpolation": self.interpolation,
            "backend": self.backend,
        }


class RandCropImage(Op):
    """PaddleClas random-resized-crop: random box (x, y, w, h), then resize to `size`."""

    name = "RandCropImage"
    param_names: tuple[str, ...] = ("x", "y", "w", "h")
    ranges: tuple[tuple[int, int], ...] = ((0, MAX_IMAGE_SIDE - 1),) * 2 + (
        (1, MAX_IMAGE_SIDE),
    ) * 2
    args = ("size", "scale", "ratio", "interpolation", "backend")

    def __init__(
        self,
        key: str,
        size: Any = None,
        scale: Any = None,
        ratio: Any = None,
        interpolation: Any = None,
        backend: Any = "cv2",
    ) -> None:
        if size is None:
            raise ConfigError(f"{key}.size: required")
        self.size = _size_wh(size, f"{key}.size")
        self.scale = _range([0.08, 1.0] if scale is None else scale, f"{key}.scale")
        self.ratio = _range([3.0 / 4.0, 4.0 / 3.0] if ratio is None else ratio, f"{key}.ratio")
        self.backend = _backend(backend, f"{key}.backend")
        self.interpolation = _interpolation(interpolation, f"{key}.interpolation", self.backend)
        if self.interpolation == RANDOM_INTERPOLATION:  # the pick is a 5th param, range [0, 1]
            self.param_names = (*RandCropImage.param_names, "interp")
            self.ranges = (*RandCropImage.ranges, (0, 1))

    def draw(self, img: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
        img_h, img_w = img.shape[:2]
        return self.draw_box(img_w, img_h, rng)

    def draw_box(self, img_w: int, img_h: int, rng: np.random.Generator) -> tuple[int, ...]:
        """`draw` from the image size alone, so a JPEG's view is drawn before decoding it."""
        if max(img_w, img_h) > MAX_IMAGE_SIDE:  # e.g. enlarged by a ResizeImage before
            raise DataError(f"{self.name} input is {img_w}x{img_h}, above {MAX_IMAGE_SIDE}")
        # Same arithmetic as PaddleClas: aspect from `ratio`, area from `scale` capped so the
        # box fits the image, truncation to int, then a uniform position.
        aspect = math.sqrt(float(rng.uniform(*self.ratio)))
        fw, fh = aspect, 1.0 / aspect
        bound = min((img_w / img_h) / (fw * fw), (img_h / img_w) / (fh * fh))
        scale_min, scale_max = min(self.scale[0], bound), min(self.scale[1], bound)
        target = math.sqrt(img_w * img_h * float(rng.uniform(scale_min, scale_max)))
        # Clamp: truncation can give 0 on tiny images, float error can overshoot by one.
        w = min(max(int(target * fw), 1), img_w)
        h = min(max(int(target * fh), 1), img_h)
        x = int(rng.integers(0, img_w - w, endpoint=True))
        y = int(rng.integers(0, img_h - h, endpoint=True))
        if self.interpolation == RANDOM_INTERPOLATION:
            return x, y, w, h, int(rng.integers(0, 2))
        return x, y, w, h

    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        x, y, w, h = self._box(params, img.shape[1], img.shape[0])
        crop = img[y : y + h, x : x + w]
        interpolation = _chosen_interpolation(self.interpolation, tuple(params[4:]))
        return _resize(crop, self.size, self.backend, interpolation)

    def _box(self, params: tuple[int, ...], img_w: int, img_h: int) -> tuple[int, int, int, int]:
        x, y, w, h = (int(p) for p in params[:4])
        if not (w >= 1 and h >= 1 and 0 <= x <= img_w - w and 0 <= y <= img_h - h):
            raise _BadParams(f"crop box x={x} y={y} w={w} h={h} outside a {img_w}x{img_h} image")
        return x, y, w, h

    def apply_jpeg(
        self, data: bytes, size: tuple[int, int], params: tuple[int, ...], memo: dict
    ) -> np.ndarray:
        """`apply` on the JPEG `data` of `size` (decode.jpeg_size), fused: decoded at the DCT
        scale the box allows (`memo` keeps each scale's pixels for further views of the same
        image), crop and resize in one pass. RGB."""
        box = self._box(params, *size)
        interpolation = _chosen_interpolation(self.interpolation, tuple(params[4:]))
        scale = decode.reduction(box[2], box[3], *self.size, interpolation, self.backend)
        if scale not in memo:
            memo[scale] = decode.decode_rgb(data, size, scale)
        return decode.crop_resize(memo[scale], scale, box, self.size, interpolation, self.backend)

    def spec(self) -> dict:
        return {
            "name": self.name,
            "size": list(self.size),
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "interpolation": self.interpolation,
            "backend": self.backend,
        }


class RandFlipImage(Op):
    """Flip with probability `prob` (PaddleClas: fixed 0.5); flip_code as in cv2.flip."""

    name = "RandFlipImage"
    param_names = ("flip",)
    ranges = ((0, 1),)
    args = ("flip_code", "prob")

    def __init__(self, key: str, flip_code: Any = 1, prob: Any = 0.5) -> None:
        if not _is_int(flip_code) or flip_code not in (-1, 0, 1):
            raise ConfigError(f"{key}.flip_code: expected -1, 0 or 1, got {flip_code!r}")
        if not _is_num(prob) or not 0 <= prob <= 1:
            raise ConfigError(f"{key}.prob: expected a number in [0, 1], got {prob!r}")
        self.flip_code = int(flip_code)
        self.prob = float(prob)

    def draw(self, img: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
        return (int(rng.random() < self.prob),)

    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        (flip,) = params
        if flip not in (0, 1):
            raise _BadParams(f"flip must be 0 or 1, got {flip}")
        return cv2.flip(img, self.flip_code) if flip else img

    def spec(self) -> dict:
        return {"name": self.name, "flip_code": self.flip_code, "prob": self.prob}


class CropImage(Op):
    """Center crop to `size` ([w, h]); the image must be at least that large."""

    name = "CropImage"
    args = ("size",)

    def __init__(self, key: str, size: Any = None) -> None:
        if size is None:
            raise ConfigError(f"{key}.size: required")
        self.size = _size_wh(size, f"{key}.size")

    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        w, h = self.size
        img_h, img_w = img.shape[:2]
        if img_w < w or img_h < h:
            # PaddleClas would slice with negative starts and return a wrongly sized crop.
            raise DataError(f"image {img_w}x{img_h} is smaller than CropImage size {w}x{h}")
        x, y = (img_w - w) // 2, (img_h - h) // 2
        return img[y : y + h, x : x + w]

    def spec(self) -> dict:
        return {"name": self.name, "size": list(self.size)}


class NormalizeImage(Op):
    """(img * scale - mean) / std in float32, optionally padded to 4 channels or fp16."""

    name = "NormalizeImage"
    args = ("scale", "mean", "std", "order", "output_fp16", "channel_num")

    def __init__(
        self,
        key: str,
        scale: Any = None,
        mean: Any = None,
        std: Any = None,
        order: Any = "chw",
        output_fp16: Any = False,
        channel_num: Any = 3,
    ) -> None:
        self.scale = 1.0 / 255.0 if scale is None else parse_scale(scale, f"{key}.scale")
        self.mean = _floats3([0.485, 0.456, 0.406] if mean is None else mean, f"{key}.mean")
        self.std = _floats3(
            [0.229, 0.224, 0.225] if std is None else std, f"{key}.std", nonzero=True
        )
        if order not in ("chw", "hwc", ""):
            raise ConfigError(f"{key}.order: expected 'chw', 'hwc' or '', got {order!r}")
        self.order = CHW if order == "chw" else HWC  # PaddleClas: anything but 'chw' is HWC
        self.output_fp16 = _bool(output_fp16, f"{key}.output_fp16")
        if not _is_int(channel_num) or channel_num not in (3, 4):
            raise ConfigError(f"{key}.channel_num: expected 3 or 4, got {channel_num!r}")
        self.channel_num = int(channel_num)
        shape = (3, 1, 1) if self.order == CHW else (1, 1, 3)
        self._scale = np.float32(self.scale)
        self._mean = np.array(self.mean, dtype=np.float32).reshape(shape)
        self._std = np.array(self.std, dtype=np.float32).reshape(shape)
        # Every 8-bit value of each channel through the same float32 arithmetic as `apply`:
        # looking pixels up (cv2.LUT) gives the same bits several times faster.
        levels = np.arange(256, dtype=np.float32).reshape(256, 1, 1)
        self._table = (
            (levels * self._scale - self._mean.reshape(1, 1, 3)) / self._std.reshape(1, 1, 3)
        ).reshape(1, 256, 3)
        self._planes = [np.ascontiguousarray(self._table[..., c]) for c in range(3)]

    @property
    def needs(self) -> str:  # type: ignore[override]
        return self.order

    def _looks_up(self, img: Any) -> bool:
        return (
            self.order == HWC
            and self.channel_num == 3
            and isinstance(img, np.ndarray)
            and img.dtype == np.uint8
            and img.ndim == 3
            and img.shape[2] == 3
        )

    def apply_chw(self, img: Any) -> np.ndarray:
        """`apply` then ToCHWImage (contiguous), the two in one pass over 8-bit pixels."""
        if not self._looks_up(img):
            return np.ascontiguousarray(self.apply(img, ()).transpose((2, 0, 1)))
        out = np.empty((3, *img.shape[:2]), np.float32)
        for c, plane in enumerate(cv2.split(np.ascontiguousarray(img))):
            cv2.LUT(plane, self._planes[c], dst=out[c])
        return out.astype(np.float16) if self.output_fp16 else out

    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        if self._looks_up(img):
            out = cv2.LUT(np.ascontiguousarray(img), self._table)
            return out.astype(np.float16) if self.output_fp16 else out
        out = (img.astype(np.float32) * self._scale - self._mean) / self._std
        if self.channel_num == 4:
            axis = 0 if self.order == CHW else 2
            pad_shape = list(out.shape)
            pad_shape[axis] = 1
            out = np.concatenate((out, np.zeros(pad_shape, np.float32)), axis=axis)
        return out.astype(np.float16 if self.output_fp16 else np.float32)

    def spec(self) -> dict:
        return {
            "name": self.name,
            "scale": self.scale,
            "mean": self.mean,
            "std": self.std,
            "order": self.order,
            "output_fp16": self.output_fp16,
            "channel_num": self.channel_num,
        }


class ToCHWImage(Op):
    """HWC -> CHW, the layout paddle models take."""

    name = "ToCHWImage"

    def out_layout(self, layout: str) -> str:
        return CHW

    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        return img.transpose((2, 0, 1))


class _NormalizeToCHW(Op):
    """An HWC NormalizeImage and the ToCHWImage after it, run as one step by Pipeline."""

    def __init__(self, normalize: NormalizeImage) -> None:
        super().__init__(normalize.name)
        self.normalize = normalize
        self.name = normalize.name
        self.needs = HWC

    def apply(self, img: Any, params: tuple[int, ...]) -> np.ndarray:
        return self.normalize.apply_chw(img)


def _fuse_steps(ops: list[Op]) -> list[Op]:
    """`ops` with each HWC NormalizeImage + ToCHWImage pair as one step (same output)."""
    steps: list[Op] = []
    for op in ops:
        prev = steps[-1] if steps else None
        if isinstance(op, ToCHWImage) and isinstance(prev, NormalizeImage) and prev.order == HWC:
            steps[-1] = _NormalizeToCHW(prev)
        else:
            steps.append(op)
    return steps


OPS: dict[str, type[Op]] = {
    cls.name: cls
    for cls in (
        DecodeImage,
        ResizeImage,
        RandCropImage,
        RandFlipImage,
        CropImage,
        NormalizeImage,
        ToCHWImage,
    )
}


_OP_MODULES = (
    "offline_ssld.data.augment",
    "offline_ssld.data.batchops",
    "offline_ssld.data.color",
    "offline_ssld.data.erasing",
    "offline_ssld.data.padcrop",
)
"""Modules of further ops; each calls `register` when imported."""


def register(*classes: type[Op]) -> None:
    """Add ops by their config name (called by the modules in _OP_MODULES)."""
    for cls in classes:
        if cls.name in OPS and OPS[cls.name] is not cls:
            raise ValueError(f"transform op {cls.name!r} registered twice")
        OPS[cls.name] = cls


def registered_ops() -> dict[str, type[Op]]:
    """Every op by config name. The op modules import this one, so they are imported here, on
    first use, rather than at the top (which would make the imports circular)."""
    for module in _OP_MODULES:
        importlib.import_module(module)
    return OPS


# --------------------------------------------------------------------------------------------
# building and running pipelines


def _check_structure(ops: list[Op], key: str) -> None:
    """Reject orders that would fail on every image: no decode first, HWC op after CHW, ..."""
    if not ops:
        raise ConfigError(f"{key}: empty transform list; it must start with DecodeImage")
    layout = HWC
    for i, op in enumerate(ops):
        if (i == 0) != isinstance(op, DecodeImage):
            raise ConfigError(
                f"{key}.{i}: DecodeImage must be the first transform op and appear only once"
                f" (found {op.name})"
            )
        if op.needs is not None and op.needs != layout:
            raise ConfigError(
                f"{key}.{i}.{op.name}: needs a {op.needs.upper()} image but gets"
                f" {layout.upper()} here (check DecodeImage.channel_first, ToCHWImage and"
                " NormalizeImage.order)"
            )
        if op.needs_uint8 and any(isinstance(prev, NormalizeImage) for prev in ops[:i]):
            raise ConfigError(
                f"{key}.{i}.{op.name}: works on 8-bit pixels, so it must come before NormalizeImage"
            )
        if op.mixes and i != len(ops) - 1:
            raise ConfigError(f"{key}.{i}.{op.name}: a batch op must be the last op")
        layout = op.out_layout(layout)


def build_ops(transform_ops: list, key: str) -> list[Op]:
    """Build ops from a PaddleClas `transform_ops` list, naming the bad key on any error."""
    if not isinstance(transform_ops, list):
        raise ConfigError(f"{key}: expected a list of transform ops, got {transform_ops!r}")
    ops: list[Op] = []
    for i, entry in enumerate(transform_ops):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ConfigError(
                f"{key}.{i}: expected a one-key mapping like {{DecodeImage: {{...}}}},"
                f" got {entry!r}"
            )
        ((name, kwargs),) = entry.items()
        ops_by_name = registered_ops()
        cls = ops_by_name.get(name) if isinstance(name, str) else None
        if cls is None:
            raise ConfigError(
                f"{key}.{i}: unknown transform op {name!r}; supported: {', '.join(ops_by_name)}"
            )
        op_key = f"{key}.{i}.{name}"
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{op_key}: expected a mapping of arguments or null, got {kwargs!r}")
        for arg in kwargs:
            if arg not in cls.args:
                supported = ", ".join(cls.args) if cls.args else "none"
                raise ConfigError(f"{op_key}.{arg}: unknown argument; supported: {supported}")
        ops.append(cls(op_key, **kwargs))
    _check_structure(ops, key)
    return ops


class Pipeline:
    """A decode-first op list run either drawing fresh params or replaying stored ones."""

    def __init__(self, ops: list[Op], key: str = "transform_ops") -> None:
        """`key` only labels error messages (the config path the ops came from)."""
        _check_structure(ops, key)
        self.ops = list(ops)
        self.key = key
        self.mix = cast("MixOp", ops[-1]) if ops[-1].mixes else None
        self._image_ops = _fuse_steps(self.ops[:-1] if self.mix else self.ops)
        names = [op.name for op in self.ops]
        self._param_names: list[str] = []
        self._param_ranges: list[tuple[int, int]] = []
        for i, op in enumerate(self.ops):
            prefix = op.name if names.count(op.name) == 1 else f"{op.name}[{i}]"
            self._param_names += [f"{prefix}.{p}" for p in op.param_names]
            self._param_ranges += list(op.param_ranges())
        self._image_params = len(self._param_names) - (len(self.mix.param_names) if self.mix else 0)
        # DecodeImage then RandCropImage: decoded and cropped in one step (decode.py)
        self._fused = (
            len(self._image_ops) > 1
            and isinstance(self.ops[0], DecodeImage)
            and not self.ops[0].channel_first
            and isinstance(self._image_ops[1], RandCropImage)
        )
        if len(self._param_ranges) != len(self._param_names):
            raise TypeError("every transform op must declare the range of each param it draws")

    @property
    def param_names(self) -> tuple[str, ...]:
        """Column names of the params array, e.g. 'RandCropImage.x' ('Op[i].x' if repeated)."""
        return tuple(self._param_names)

    @property
    def param_ranges(self) -> tuple[tuple[int, int], ...]:
        """Inclusive [lo, hi] of each param, in `param_names` order (declared by the ops)."""
        return tuple(self._param_ranges)

    @property
    def is_random(self) -> bool:
        """True when some op draws params, i.e. views differ and must be stored to replay."""
        return bool(self._param_names)

    def draw(
        self, data: bytes, rng: np.random.Generator, memo: dict | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run all ops drawing fresh params; return (output, params as int32). `memo` (an
        empty dict per image) lets further views of the same bytes reuse their decoding."""
        memo = {} if memo is None else memo
        if not self._fused:
            if "pixels" not in memo:
                memo["pixels"] = self.decode(data)
            return self.draw_decoded(memo["pixels"], rng)
        decoder, crop = cast(DecodeImage, self.ops[0]), cast(RandCropImage, self.ops[1])
        decoder.check_header(data)
        size = decode.jpeg_size(data)
        if size is None:
            if "pixels" not in memo:
                memo["pixels"] = self.decode(data)
            size = memo["pixels"].shape[1], memo["pixels"].shape[0]
        params = crop.draw_box(*size, rng)
        img = self._decode_crop(data, params, memo)
        return self._draw_from(img, rng, 2, list(params))

    def _decode_crop(self, data: bytes, params: tuple[int, ...], memo: dict) -> np.ndarray:
        """DecodeImage then RandCropImage with `params`, fused for a JPEG libjpeg-turbo
        decodes; any other file (or a JPEG it fails on) takes the ops one by one."""
        decoder, crop = cast(DecodeImage, self.ops[0]), cast(RandCropImage, self.ops[1])
        size = decode.jpeg_size(data)
        if size is not None:  # every view tries this first, whatever other views did
            try:
                out = crop.apply_jpeg(data, size, params, memo)
            except (OSError, ValueError) as exc:
                if isinstance(exc, _BadParams):
                    raise
            else:
                return out if decoder.to_rgb else np.ascontiguousarray(out[..., ::-1])
        if "pixels" not in memo:
            memo["pixels"] = decoder.apply(data, ())
        return crop.apply(memo["pixels"], params)

    def decode(self, data: bytes) -> np.ndarray:
        """The first op, DecodeImage (it draws nothing): views of one image can share it."""
        return self.ops[0].apply(data, ())

    def draw_decoded(
        self, img: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """`draw` after `decode`; `img` is only read (every op returns a new array). With a
        batch op, this is the unmixed view and its params (the dataset draws the mix)."""
        return self._draw_from(img, rng, 1, [])

    def _draw_from(
        self, img: np.ndarray, rng: np.random.Generator, start: int, params: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw and apply the image ops from `start` on, after `params` drawn before."""
        for op in self._image_ops[start:]:
            p = op.draw(img, rng)
            img = op.apply(img, p)
            params += p
        return np.ascontiguousarray(img), np.array(params, dtype=np.int32)

    def split(self, params: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        """A stored view's params -> (the unmixed view's, the batch op's)."""
        flat = np.asarray(params).reshape(-1)
        return flat[: self._image_params], tuple(int(v) for v in flat[self._image_params :])

    def replay(self, data: bytes, params: np.ndarray) -> np.ndarray:
        """Run all ops with stored params; equal to the output `draw` gave, bit for bit. A
        mixed view needs its partner's too: only ReplayDataset rebuilds those."""
        if self.mix is not None:
            raise ConfigError(
                f"{self.mix.key}: a mixed view needs its partner image; only train-student "
                "and dump-teacher replay batch ops"
            )
        return self.replay_view(data, params)

    def replay_view(self, data: bytes, params: np.ndarray) -> np.ndarray:
        """The unmixed view from its params (`split`'s first part; all params without a batch
        op), bit for bit what `draw` gave."""
        flat = np.asarray(params).reshape(-1)
        if flat.size != self._image_params:
            names = ", ".join(self._param_names[: self._image_params]) or "none"
            raise CacheError(
                f"{self.key}: stored view has {flat.size} transform params, the pipeline needs"
                f" {self._image_params} ({names})"
            )
        values = [int(v) for v in flat]
        img: Any = data
        pos, ops = 0, self._image_ops
        if self._fused:
            pos, ops = len(ops[1].param_names), ops[2:]
            try:
                img = self._decode_crop(data, tuple(values[:pos]), {})
            except _BadParams as e:
                raise CacheError(
                    f"{self.key}: stored {self.ops[1].name} params do not fit: {e}"
                ) from None
        for op in ops:
            n = len(op.param_names)
            try:
                img = op.apply(img, tuple(values[pos : pos + n]))
            except _BadParams as e:
                raise CacheError(f"{self.key}: stored {op.name} params do not fit: {e}") from None
            pos += n
        return np.ascontiguousarray(img)

    def apply_fixed(self, data: bytes) -> np.ndarray:
        """Run a pipeline without random ops (evaluation)."""
        if self.is_random:
            random_ops = ", ".join(op.name for op in self.ops if op.param_names)
            raise ConfigError(
                f"{self.key}: this pipeline must be deterministic but has random ops: {random_ops}"
            )
        return self.replay(data, np.zeros(0, np.int32))

    def spec(self) -> dict:
        """Canonical op specs as plain data: what cache/fingerprint.py hashes, so caches made
        with another pipeline are refused."""
        return {"version": TRANSFORMS_VERSION, "ops": [op.spec() for op in self.ops]}
