"""Transform ops: replay reproduces draw bit for bit, params stay in bounds, configs are checked."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offline_ssld.cache.fingerprint import transforms_fingerprint
from offline_ssld.data.transforms import (
    MAX_IMAGE_PIXELS,
    NormalizeImage,
    Pipeline,
    RandCropImage,
    build_ops,
    parse_scale,
)
from offline_ssld.errors import CacheError, ConfigError, DataError

KEY = "DataLoader.Train.dataset.transform_ops"
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def train_ops(size: int = 32, order: str = "") -> list:
    return [
        {"DecodeImage": {"to_rgb": True, "channel_first": False}},
        {"RandCropImage": {"size": size, "scale": [0.35, 1.0]}},
        {"RandFlipImage": {"flip_code": 1}},
        {"NormalizeImage": {"scale": "1.0/255.0", "mean": MEAN, "std": STD, "order": order}},
        {"ToCHWImage": None},
    ]


def encode(h: int, w: int, color: bool = True, ext: str = ".png", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if color else (h, w)
    img = rng.integers(0, 256, size=shape, dtype=np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


IMAGES = [
    encode(h, w, color, ext, seed=i)
    for i, (h, w, color, ext) in enumerate(
        [
            (28, 28, True, ".png"),
            (40, 17, True, ".jpg"),
            (17, 40, False, ".png"),
            (3, 5, False, ".jpg"),
            (3, 5, True, ".png"),
            (1, 60, True, ".png"),
        ]
    )
]


def pipeline(ops: list | None = None) -> Pipeline:
    return Pipeline(build_ops(train_ops() if ops is None else ops, KEY), KEY)


def test_param_names():
    assert pipeline().param_names == (
        "RandCropImage.x",
        "RandCropImage.y",
        "RandCropImage.w",
        "RandCropImage.h",
        "RandFlipImage.flip",
    )
    ops = train_ops()
    ops.insert(3, {"RandFlipImage": {"flip_code": 0}})
    names = pipeline(ops).param_names
    assert names[-2:] == ("RandFlipImage[2].flip", "RandFlipImage[3].flip")


@pytest.mark.parametrize("data", IMAGES)
def test_replay_equals_draw(data: bytes):
    p = pipeline()
    for seed in range(40):
        out, params = p.draw(data, np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.shape == (3, 32, 32)
        assert params.dtype == np.int32 and params.shape == (5,)
        again = p.replay(data, params)
        assert again.dtype == out.dtype and np.array_equal(again, out)


def test_different_seeds_give_different_params():
    p = pipeline()
    drawn = {tuple(p.draw(IMAGES[0], np.random.default_rng(s))[1]) for s in range(20)}
    assert len(drawn) > 10


def test_same_seed_same_params():
    p = pipeline()
    a = p.draw(IMAGES[1], np.random.default_rng(7))
    b = p.draw(IMAGES[1], np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 80),
    w=st.integers(1, 80),
    seed=st.integers(0, 2**32 - 1),
    scale_lo=st.floats(0.01, 1.0),
    ratio_hi=st.floats(1.0, 20.0),
)
def test_crop_params_within_bounds(h, w, seed, scale_lo, ratio_hi):
    op = RandCropImage("k", size=8, scale=[scale_lo, 1.0], ratio=[1.0 / ratio_hi, ratio_hi])
    img = np.zeros((h, w, 3), np.uint8)
    x, y, cw, ch = op.draw(img, np.random.default_rng(seed))
    assert cw >= 1 and ch >= 1
    assert 0 <= x <= w - cw
    assert 0 <= y <= h - ch
    assert op.apply(img, (x, y, cw, ch)).shape == (8, 8, 3)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 50), w=st.integers(1, 50), seed=st.integers(0, 2**32 - 1))
def test_pipeline_bounds_and_replay_on_random_shapes(h, w, seed):
    data = encode(h, w, seed=seed % 1000)
    p = pipeline()
    out, params = p.draw(data, np.random.default_rng(seed))
    x, y, cw, ch, flip = params.tolist()
    assert cw >= 1 and 0 <= x <= w - cw
    assert ch >= 1 and 0 <= y <= h - ch
    assert flip in (0, 1)
    assert np.array_equal(p.replay(data, params), out)


def test_flip_actually_flips():
    ops = [{"DecodeImage": None}, {"RandFlipImage": {"flip_code": 1}}]
    p = pipeline(ops)
    data = IMAGES[1]
    plain = p.replay(data, np.array([0], np.int32))
    flipped = p.replay(data, np.array([1], np.int32))
    assert not np.array_equal(plain, flipped)
    assert np.array_equal(flipped, plain[:, ::-1])
    vertical = pipeline([{"DecodeImage": None}, {"RandFlipImage": {"flip_code": 0}}])
    assert np.array_equal(vertical.replay(data, np.array([1], np.int32)), plain[::-1])
    seen = {int(p.draw(data, np.random.default_rng(s))[1][0]) for s in range(30)}
    assert seen == {0, 1}


def test_decode_to_rgb_and_grayscale():
    img = np.zeros((4, 6, 3), np.uint8)
    img[..., 0] = 200  # blue in BGR
    ok, buf = cv2.imencode(".png", img)
    assert ok
    rgb = pipeline([{"DecodeImage": None}]).apply_fixed(buf.tobytes())
    assert rgb.shape == (4, 6, 3) and rgb[0, 0].tolist() == [0, 0, 200]
    bgr = pipeline([{"DecodeImage": {"to_rgb": False}}]).apply_fixed(buf.tobytes())
    assert bgr[0, 0].tolist() == [200, 0, 0]
    gray = pipeline([{"DecodeImage": None}]).apply_fixed(IMAGES[2])
    assert gray.shape == (17, 40, 3)
    chw = pipeline([{"DecodeImage": {"channel_first": True}}]).apply_fixed(buf.tobytes())
    assert chw.shape == (3, 4, 6)


def test_normalize_matches_hand_computation():
    img = np.array([[[0, 128, 255], [10, 20, 30]]], np.uint8)  # 1x2 HWC
    op = NormalizeImage("k", scale="1.0/255.0", mean=MEAN, std=STD, order="")
    out = op.apply(img, ())
    expected = np.empty((1, 2, 3), np.float64)
    for c in range(3):
        expected[..., c] = (img[..., c] / 255.0 - MEAN[c]) / STD[c]
    assert out.dtype == np.float32 and out.shape == (1, 2, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)

    chw = NormalizeImage("k", scale=1 / 255, mean=MEAN, std=STD, order="chw")
    np.testing.assert_array_equal(chw.apply(img.transpose(2, 0, 1), ()), out.transpose(2, 0, 1))
    four = NormalizeImage("k", mean=MEAN, std=STD, order="hwc", channel_num=4)
    padded = four.apply(img, ())
    assert padded.shape == (1, 2, 4) and not padded[..., 3].any()
    half = NormalizeImage("k", order="", output_fp16=True)
    assert half.apply(img, ()).dtype == np.float16


def test_scale_parsing():
    assert parse_scale("1.0/255.0", "k") == 1.0 / 255.0
    assert parse_scale("0.00392157", "k") == 0.00392157
    assert parse_scale(" 1 / 255 ", "k") == 1.0 / 255.0
    assert parse_scale(0.5, "k") == 0.5
    for bad in ["__import__('os')", "1/0", "1/2/3", "2**8", "", "nan", True, [1]]:
        with pytest.raises(ConfigError, match=r"\.scale"):
            build_ops([{"DecodeImage": None}, {"NormalizeImage": {"scale": bad, "order": ""}}], KEY)


def test_unknown_op_names_index():
    with pytest.raises(ConfigError) as e:
        build_ops([{"DecodeImage": None}, {"Foo": {}}], KEY)
    msg = str(e.value)
    assert msg.startswith(f"{KEY}.1: unknown transform op 'Foo'; supported: DecodeImage")


def test_unknown_or_invalid_argument_names_key():
    with pytest.raises(ConfigError, match=rf"^{KEY}\.1\.RandCropImage\.sise: unknown argument"):
        build_ops([{"DecodeImage": None}, {"RandCropImage": {"sise": 3}}], KEY)
    bad_values = [
        ({"RandCropImage": {"size": 0}}, "RandCropImage.size"),
        ({"RandCropImage": {"size": 8, "scale": [0.9, 0.1]}}, "RandCropImage.scale"),
        ({"RandCropImage": {"size": 8, "interpolation": "cubic"}}, "RandCropImage.interpolation"),
        ({"RandFlipImage": {"flip_code": 2}}, "RandFlipImage.flip_code"),
        ({"ResizeImage": {"size": 8, "backend": "tf"}}, "ResizeImage.backend"),
        ({"ResizeImage": {}}, "ResizeImage.size"),
        ({"NormalizeImage": {"order": "whc"}}, "NormalizeImage.order"),
        ({"NormalizeImage": {"order": "", "std": [1, 0, 1]}}, "NormalizeImage.std"),
        ({"NormalizeImage": {"order": "", "channel_num": 5}}, "NormalizeImage.channel_num"),
    ]
    for entry, where in bad_values:
        with pytest.raises(ConfigError, match=rf"^{KEY}\.1\.{where}"):
            build_ops([{"DecodeImage": None}, entry], KEY)


def test_bad_structure():
    with pytest.raises(ConfigError, match=rf"^{KEY}\.1: expected a one-key mapping"):
        build_ops([{"DecodeImage": None}, {"ToCHWImage": None, "CropImage": {"size": 2}}], KEY)
    with pytest.raises(ConfigError, match=rf"^{KEY}\.0: DecodeImage must be the first"):
        build_ops([{"ToCHWImage": None}], KEY)
    with pytest.raises(ConfigError, match=rf"^{KEY}\.2\.RandFlipImage: needs a HWC"):
        build_ops([{"DecodeImage": None}, {"ToCHWImage": None}, {"RandFlipImage": None}], KEY)
    with pytest.raises(ConfigError, match=rf"^{KEY}: expected a list"):
        build_ops({"DecodeImage": None}, KEY)


def test_undecodable_bytes():
    p = pipeline()
    for data in [b"", b"not an image at all", IMAGES[0][:20]]:
        with pytest.raises(DataError, match=rf"cannot decode image \({len(data)} bytes\)"):
            p.draw(data, np.random.default_rng(0))


def test_decompression_bomb_refused_from_header():
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    w, h = 2**14, 2**13
    assert w * h > MAX_IMAGE_PIXELS
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
    with pytest.raises(DataError, match="pixels, above the limit"):
        pipeline([{"DecodeImage": None}]).apply_fixed(data)


def test_eval_pipeline():
    ops = [
        {"DecodeImage": {"to_rgb": True, "channel_first": False}},
        {"ResizeImage": {"resize_short": 20}},
        {"CropImage": {"size": 16}},
        {"NormalizeImage": {"scale": 0.00392157, "mean": MEAN, "std": STD, "order": ""}},
        {"ToCHWImage": None},
    ]
    p = pipeline(ops)
    assert not p.is_random and p.param_names == ()
    out = p.apply_fixed(IMAGES[1])
    assert out.shape == (3, 16, 16) and out.dtype == np.float32 and out.flags.c_contiguous
    fixed = pipeline([{"DecodeImage": None}, {"ResizeImage": {"size": [7, 5]}}])
    assert fixed.apply_fixed(IMAGES[0]).shape == (5, 7, 3)
    with pytest.raises(ConfigError, match="random ops: RandCropImage, RandFlipImage"):
        pipeline().apply_fixed(IMAGES[0])
    with pytest.raises(DataError, match="smaller than CropImage"):
        pipeline([{"DecodeImage": None}, {"CropImage": {"size": 16}}]).apply_fixed(IMAGES[3])


def test_replay_rejects_params_that_do_not_fit():
    p = pipeline()
    with pytest.raises(CacheError, match="5"):
        p.replay(IMAGES[0], np.zeros(4, np.int32))
    with pytest.raises(CacheError, match="outside"):
        p.replay(IMAGES[0], np.array([20, 0, 20, 5, 0], np.int32))
    with pytest.raises(CacheError, match="flip"):
        p.replay(IMAGES[0], np.array([0, 0, 5, 5, 2], np.int32))


def test_fingerprint():
    base = transforms_fingerprint(pipeline())
    assert base == transforms_fingerprint(pipeline())
    assert len(base) == 64 and int(base, 16) >= 0
    # Equivalent spellings of the same arguments give the same fingerprint.
    same = train_ops()
    same[3]["NormalizeImage"]["scale"] = 1.0 / 255.0
    same[3]["NormalizeImage"]["order"] = "hwc"
    same[1]["RandCropImage"]["interpolation"] = "bilinear"
    assert transforms_fingerprint(pipeline(same)) == base
    changed = train_ops()
    changed[1]["RandCropImage"]["scale"] = [0.4, 1.0]
    assert transforms_fingerprint(pipeline(changed)) != base
    assert transforms_fingerprint(pipeline(train_ops(size=24))) != base
    flip = train_ops()
    flip[2]["RandFlipImage"]["flip_code"] = 0
    assert transforms_fingerprint(pipeline(flip)) != base
