"""RandomErasing and ColorJitter: bit-exact replay and PaddleClas's semantics.

PaddleClas's ops cannot be imported (no ppcls.data in the wheel), so the semantics tests feed
the op a scripted generator (the same uniform draws PaddleClas's `random` would return) and
compare with the box PaddleClas's arithmetic gives for them, and compare ColorJitter's output
for a fixed order and fixed factors with paddle.vision's own PIL functional ops (which
PaddleClas's ColorJitter calls) and with PIL's ImageEnhance. Tolerances are stated per test.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from paddle.vision.transforms import functional as F
from PIL import Image, ImageEnhance

from offline_ssld.data.color import FACTOR_RESOLUTION, ORDERS, ColorJitter
from offline_ssld.data.erasing import RandomErasing
from offline_ssld.data.transforms import Pipeline, build_ops
from offline_ssld.errors import CacheError, ConfigError

KEY = "DataLoader.Train.dataset.transform_ops"
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
# The shipped PULC / PPHGNetV2 settings (tests/data/paddleclas_distillation_configs.json)
PULC_ERASING = {
    "EPSILON": 0.5,
    "sl": 0.02,
    "sh": "1.0/3.0",
    "r1": 0.3,
    "attempt": 10,
    "use_log_aspect": True,
    "mode": "pixel",
}


def _image(h: int = 30, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _normalized_pipeline(op: dict) -> Pipeline:
    """PaddleClas's order: RandomErasing after NormalizeImage (HWC floats), then CHW."""
    return Pipeline(
        build_ops(
            [
                {"DecodeImage": None},
                {"RandCropImage": {"size": 24, "backend": "pil", "interpolation": "bicubic"}},
                {"NormalizeImage": {"scale": "1.0/255.0", "mean": MEAN, "std": STD, "order": ""}},
                op,
                {"ToCHWImage": None},
            ],
            KEY,
        ),
        KEY,
    )


@pytest.mark.parametrize(
    "args",
    [
        PULC_ERASING,
        {**PULC_ERASING, "mode": "rand", "EPSILON": 1.0},
        {**PULC_ERASING, "mode": "const", "mean": [1.0, -1.0, 0.5], "use_log_aspect": False},
        {"EPSILON": 0.9},
    ],
)
def test_erasing_replay_is_bit_identical(args):
    data = _png(_image())
    pipe = _normalized_pipeline({"RandomErasing": args})
    erasing = pipe.ops[3]
    erased = 0
    for seed in range(30):
        out, params = pipe.draw(data, np.random.default_rng(seed))
        values = params[-6:]
        for v, (lo, hi) in zip(values.tolist(), erasing.param_ranges(), strict=True):
            assert lo <= v <= hi
        stored = np.frombuffer(params.tobytes(), dtype=np.int32)
        assert np.array_equal(pipe.replay(data, stored), out)
        erased += int(values[0])
    assert erased > 5


class Scripted:
    """A generator stand-in returning scripted U[0, 1) draws and integers, in order."""

    def __init__(self, uniforms: list[float], integers: list[int]) -> None:
        self.uniforms, self.ints = list(uniforms), list(integers)

    def random(self) -> float:
        return self.uniforms.pop(0)

    def integers(self, low: int, high: int, endpoint: bool = False) -> int:
        value = self.ints.pop(0)
        assert low <= value <= (high if endpoint else high - 1)
        return value


def test_erasing_box_follows_paddleclas_arithmetic():
    """Gate draw 0.3 <= EPSILON 0.5 erases; attempt 1 (area 0.9 of [sl, sh], log-aspect 0.99)
    gives a box too tall for the 30x40 image and is retried; attempt 2 fits. PaddleClas:
    h = int(round(sqrt(target * aspect))), w = int(round(sqrt(target / aspect)))."""
    op = RandomErasing("k", **PULC_ERASING)
    img = _image().astype(np.float32)
    rng = Scripted([0.3, 0.9, 0.99, 0.5, 0.25], [12345, 3, 7])
    params = op.draw(img, rng)  # type: ignore[arg-type]
    sl, sh, lo, hi = 0.02, 1.0 / 3.0, math.log(0.3), math.log(1 / 0.3)
    target = (sl + (sh - sl) * 0.5) * 1200
    aspect = math.exp(lo + (hi - lo) * 0.25)
    h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    tall = math.exp(lo + (hi - lo) * 0.99)
    assert int(round(math.sqrt((sl + (sh - sl) * 0.9) * 1200 * tall))) >= 30  # retried
    assert params == (1, 3, 7, h, w, 12345)
    # the erased box holds standard normal noise from the seed; the rest is untouched
    out = op.apply(img, params)
    noise = np.random.Generator(np.random.PCG64(12345)).standard_normal((h, w, 3))
    assert np.array_equal(out[3 : 3 + h, 7 : 7 + w], noise.astype(np.float32))
    mask = np.ones(img.shape[:2], bool)
    mask[3 : 3 + h, 7 : 7 + w] = False
    assert np.array_equal(out[mask], img[mask])
    assert op.draw(img, Scripted([0.6], [])) == (0,) * 6  # gate: 0.6 > EPSILON


def test_erasing_const_and_rand_values():
    img = np.zeros((20, 20, 3), np.float32)
    const = RandomErasing("k", mode="const", mean=[1.0, 2.0, 3.0])
    out = const.apply(img, (1, 2, 3, 4, 5, 0))
    assert (out[2:6, 3:8] == [1.0, 2.0, 3.0]).all() and out.sum() == 20 * 6
    rand = RandomErasing("k", mode="rand")
    out = rand.apply(img, (1, 0, 0, 2, 2, 7))
    colour = np.random.Generator(np.random.PCG64(7)).standard_normal(3).astype(np.float32)
    assert (out[:2, :2] == colour).all() and not out[2:].any()


def test_erasing_bad_config_and_params():
    for args, where in [
        ({"mode": "noise"}, "mode"),
        ({"sh": "1/0"}, "sh"),
        ({"sl": 0.5, "sh": 0.1}, "sh"),
        ({"EPSILON": "__import__('os')"}, "EPSILON"),
        ({"attempt": 0}, "attempt"),
        ({"r1": 0}, "r1"),
    ]:
        with pytest.raises(ConfigError, match=rf"^{KEY}\.3\.RandomErasing\.{where}"):
            _normalized_pipeline({"RandomErasing": args})
    data = _png(_image())
    pipe = _normalized_pipeline({"RandomErasing": PULC_ERASING})
    _, params = pipe.draw(data, np.random.default_rng(0))
    params[-6:] = [1, 20, 20, 10, 10, 0]  # box past the 24x24 crop
    with pytest.raises(CacheError, match="RandomErasing"):
        pipe.replay(data, params)


# ------------------------------------------------------------------------------ ColorJitter


def test_color_jitter_replay_and_ranges():
    data = _png(_image())
    args = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}
    pipe = Pipeline(build_ops([{"DecodeImage": None}, {"ColorJitter": args}], KEY), KEY)
    op = pipe.ops[1]
    assert op.param_ranges() == (
        (0, 1),
        (0, 23),
        (6000, 14000),
        (6000, 14000),
        (6000, 14000),
        (-25, 25),
    )
    orders = set()
    for seed in range(40):
        out, params = pipe.draw(data, np.random.default_rng(seed))
        for v, (lo, hi) in zip(params.tolist(), op.param_ranges(), strict=True):
            assert lo <= v <= hi
        assert np.array_equal(pipe.replay(data, params.copy()), out)
        orders.add(int(params[1]))
    assert len(orders) > 10


def test_color_jitter_matches_paddle_vision_functional():
    """For a fixed order and fixed factors, the output equals paddle.vision's PIL functional
    ops applied in that order (exactly: same PIL calls and factors)."""
    op = ColorJitter("k", brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)
    img = _image()
    order = (3, 0, 2, 1)  # hue, brightness, saturation, contrast
    params = (1, ORDERS.index(order), 12345, 8000, 9100, -37)
    ref = Image.fromarray(img)
    ref = F.adjust_hue(ref, -37 / 255 - 1e-9)  # int(f * 255) == -37
    ref = F.adjust_brightness(ref, 12345 / FACTOR_RESOLUTION)
    ref = F.adjust_saturation(ref, 9100 / FACTOR_RESOLUTION)
    ref = F.adjust_contrast(ref, 8000 / FACTOR_RESOLUTION)
    assert np.array_equal(op.apply(img, params), np.asarray(ref))
    # saturation is PIL's ImageEnhance.Color
    sat_only = ColorJitter("k", saturation=[0.5, 0.5])
    out = sat_only.apply(img, (1, 0, 0, 0, 5000, 0))
    assert np.array_equal(out, np.asarray(ImageEnhance.Color(Image.fromarray(img)).enhance(0.5)))


def test_color_jitter_skips_identity_and_gate():
    op = ColorJitter("k", brightness=0.3, prob=0.0)
    assert op.draw(_image(), np.random.default_rng(0)) == (0,) * 6
    op = ColorJitter("k", brightness=0.3)  # prob 2 (PaddleClas's default): always
    for seed in range(20):
        params = op.draw(_image(), np.random.default_rng(seed))
        assert params[0] == 1 and params[3:] == (0, 0, 0)
    with pytest.raises(ConfigError, match=r"k\.hue"):
        ColorJitter("k", hue=0.6)
