"""Padv2 and RandomCropImage (PULC attribute configs): bit-exact replay of the stored crop
corner, and PaddleClas's own arithmetic (ppcls/data/preprocess/ops/operators.py, restated:
the paddleclas wheel ships no ppcls.data) given the same corner."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from offline_ssld.data.padcrop import Padv2, RandomCropImage
from offline_ssld.data.transforms import Pipeline, build_ops
from offline_ssld.errors import ConfigError, DataError


def _paddleclas_padv2(img, size, pad_mode, offsets, fill_value):
    im_h, im_w = img.shape[:2]
    w, h = size
    assert im_h <= h and im_w <= w
    if h == im_h and w == im_w:
        return img.astype(np.float32)
    if pad_mode == -1:
        offset_x, offset_y = offsets
    elif pad_mode == 0:
        offset_y, offset_x = 0, 0
    elif pad_mode == 1:
        offset_y, offset_x = (h - im_h) // 2, (w - im_w) // 2
    else:
        offset_y, offset_x = h - im_h, w - im_w
    canvas = np.ones((h, w, 3), dtype=np.float32)
    canvas *= np.array(fill_value, dtype=np.float32)
    canvas[offset_y : offset_y + im_h, offset_x : offset_x + im_w, :] = img.astype(np.float32)
    return canvas


def _paddleclas_random_crop(img, size, i, j):
    """RandomCropImage.__call__ with its random.randint draws (i rows, j columns) given."""
    tw, th = size
    return img[i : i + th, j : j + tw, :]


def _ops(pad: dict, crop: dict) -> Pipeline:
    spec = [{"DecodeImage": {"to_rgb": True, "channel_first": False}}, {"Padv2": pad}]
    spec.append({"RandomCropImage": crop})
    return Pipeline(build_ops(spec, "ops"))


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("pad_mode", "offsets"), [(0, None), (1, None), (2, None), (-1, [3, 1])])
def test_padv2_equals_paddleclas(pad_mode, offsets):
    fill = (127.5, 10.0, 200.0)
    for h, w in ((20, 30), (24, 40), (11, 17)):
        img = _image(h, w, h * w)
        ours = Padv2(
            "op", size=[40, 24], pad_mode=pad_mode, offsets=offsets, fill_value=list(fill)
        ).apply(img, ())
        want = _paddleclas_padv2(img, [40, 24], pad_mode, offsets, fill)
        assert ours.dtype == np.float32 and np.array_equal(ours, want)


def test_random_crop_equals_paddleclas_and_replays_bit_exactly():
    img = _image(30, 26, 1)
    data = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()
    p = _ops({"size": [32, 32], "pad_mode": 1}, {"size": [24, 20]})
    corners = set()
    for seed in range(60):
        out, params = p.draw(data, np.random.default_rng(seed))
        x, y = params.tolist()
        corners.add((x, y))
        assert 0 <= x <= 32 - 24 and 0 <= y <= 32 - 20  # randint's inclusive bounds
        assert np.array_equal(p.replay(data, params), out)
        padded = _paddleclas_padv2(img, [32, 32], 1, None, (127.5, 127.5, 127.5))
        assert np.array_equal(out, _paddleclas_random_crop(padded, [24, 20], y, x))
    assert len(corners) > 20  # the corner really is drawn


def test_bad_settings_and_inputs_are_named():
    with pytest.raises(ConfigError, match=r"op.size: required"):
        Padv2("op")
    with pytest.raises(ConfigError, match=r"op.offsets"):
        Padv2("op", size=8, pad_mode=-1)
    with pytest.raises(DataError, match="larger than Padv2 size"):
        Padv2("op", size=[8, 8]).apply(_image(9, 8, 0), ())
    with pytest.raises(DataError, match="smaller than RandomCropImage"):
        RandomCropImage("op", size=[10, 10]).draw(_image(9, 12, 0), np.random.default_rng(0))
