"""RandCropImage / ResizeImage with PaddleClas's `backend: pil` and every interpolation it takes.

PaddleClas's UnifiedResize cannot be imported here (the wheel ships no ppcls.data), so the
reference is written from its semantics directly: `Image.fromarray(img).resize((w, h), filter)`
and back to numpy, with 'random' picking bilinear or bicubic.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from offline_ssld.data.transforms import Pipeline, build_ops
from offline_ssld.errors import ConfigError

KEY = "DataLoader.Train.dataset.transform_ops"
PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
    "hamming": Image.Resampling.HAMMING,
}


def _png(h: int, w: int, seed: int = 0) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _decoded(data: bytes) -> np.ndarray:
    return cv2.cvtColor(
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )


def _pipeline(op: dict) -> Pipeline:
    return Pipeline(build_ops([{"DecodeImage": None}, op], KEY), KEY)


@pytest.mark.parametrize("interpolation", [*PIL_FILTERS, "random", 3, None])
def test_randcrop_pil_replays_and_matches_pil_resize(interpolation):
    data = _png(37, 29)
    pipe = _pipeline(
        {"RandCropImage": {"size": 16, "backend": "pil", "interpolation": interpolation}}
    )
    for seed in range(5):
        out, params = pipe.draw(data, np.random.default_rng(seed))
        assert params.dtype == np.int32
        assert np.array_equal(pipe.replay(data, params.copy()), out)
        x, y, w, h = (int(v) for v in params[:4])
        if interpolation == "random":
            name = ("bilinear", "bicubic")[int(params[4])]
        elif interpolation is None:
            name = "bilinear"
        elif interpolation == 3:  # an integer is a PIL filter code under backend pil
            name = "bicubic"
        else:
            name = interpolation
        crop = _decoded(data)[y : y + h, x : x + w]
        ref = np.asarray(Image.fromarray(crop).resize((16, 16), PIL_FILTERS[name]))
        assert np.array_equal(out, ref)


@pytest.mark.parametrize("interpolation", [*PIL_FILTERS, "random"])
def test_resize_pil_matches_pil_resize(interpolation):
    data = _png(30, 45, seed=1)
    pipe = _pipeline(
        {"ResizeImage": {"resize_short": 20, "backend": "pil", "interpolation": interpolation}}
    )
    out, params = pipe.draw(data, np.random.default_rng(0))
    assert np.array_equal(pipe.replay(data, params), out)
    name = ("bilinear", "bicubic")[int(params[0])] if interpolation == "random" else interpolation
    ref = np.asarray(Image.fromarray(_decoded(data)).resize((30, 20), PIL_FILTERS[name]))
    assert out.shape == (20, 30, 3)
    assert np.array_equal(out, ref)


def test_cv2_random_interpolation_is_a_stored_pick():
    data = _png(30, 45, seed=2)
    pipe = _pipeline({"ResizeImage": {"size": [10, 12], "interpolation": "random"}})
    assert pipe.param_names == ("ResizeImage.interp",)
    picks = set()
    for seed in range(12):
        out, params = pipe.draw(data, np.random.default_rng(seed))
        picks.add(int(params[0]))
        flag = (cv2.INTER_LINEAR, cv2.INTER_CUBIC)[int(params[0])]
        assert np.array_equal(out, cv2.resize(_decoded(data), (10, 12), interpolation=flag))
    assert picks == {0, 1}


@pytest.mark.parametrize(
    "op, where",
    [
        ({"ResizeImage": {"size": 8, "backend": "tf"}}, "ResizeImage.backend"),
        (
            {"ResizeImage": {"size": 8, "backend": "pil", "interpolation": "area"}},
            "ResizeImage.interpolation",
        ),
        (
            {"RandCropImage": {"size": 8, "backend": "pil", "interpolation": 9}},
            "RandCropImage.interpolation",
        ),
        ({"RandCropImage": {"size": 8, "interpolation": "hamming"}}, "RandCropImage.interpolation"),
    ],
)
def test_bad_backend_or_interpolation_names_key(op, where):
    with pytest.raises(ConfigError, match=rf"^{KEY}\.1\.{where}"):
        build_ops([{"DecodeImage": None}, op], KEY)
