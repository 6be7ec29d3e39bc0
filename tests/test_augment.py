"""TimmAutoAugment, AutoAugment and RandAugment: bit-exact replay and PaddleClas's semantics.

Replay: params drawn with a seeded generator go through the pipeline's int32 params array and
are applied again; the pixels must be equal bit for bit.

Semantics: PaddleClas's ops cannot be imported (the paddleclas wheel ships no ppcls.data), so
for a fixed choice (op, magnitude, sign, filter) each test builds an independent reference
straight from PIL (ImageOps / ImageEnhance / Image.transform / rotate) with the arguments
PaddleClas's code computes for that choice, and the op's output must equal it exactly
(tolerance 0: same PIL calls, same arguments).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from offline_ssld.data.augment import MAGNITUDE_RESOLUTION, AutoAugment, RandAugment
from offline_ssld.data.augment import TimmAutoAugment as Timm
from offline_ssld.data.transforms import Pipeline, build_ops
from offline_ssld.errors import CacheError, ConfigError

KEY = "DataLoader.Train.dataset.transform_ops"
FILL = (124, 116, 104)  # ImageNet mean * 255, rounded: TimmAutoAugment's default fill
BICUBIC, BILINEAR = Image.Resampling.BICUBIC, Image.Resampling.BILINEAR


def _image(h: int = 36, w: int = 44, seed: int = 0) -> np.ndarray:
    """Gradients plus noise, so every op (equalize, solarize, shear, ...) changes pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _pipeline(op: dict) -> Pipeline:
    return Pipeline(build_ops([{"DecodeImage": None}, op], KEY), KEY)


CONFIGS = [
    {"TimmAutoAugment": {"config_str": "rand-m9-mstd0.5-inc1", "img_size": 224}},
    {"TimmAutoAugment": {"config_str": "rand-m7-mstd0.5-inc1", "interpolation": "bicubic"}},
    {"TimmAutoAugment": {"config_str": "rand-m9-mstd0.5-inc1", "img_size": [160, 80], "prob": 0.5}},
    {"TimmAutoAugment": {"config_str": "rand-n3-m10", "interpolation": "random"}},
    {"TimmAutoAugment": {"config_str": "rand-m9-n4-w0-mstd1.0", "interpolation": None}},
    {"TimmAutoAugment": {"config_str": "v0", "mean": [0.5, 0.5, 0.5]}},
    {"TimmAutoAugment": {"config_str": "v0r-mstd0.5"}},
    {"TimmAutoAugment": {"config_str": "original-mstd0.5", "interpolation": "random"}},
    {"TimmAutoAugment": {"config_str": "originalr"}},
    {"AutoAugment": None},
    {"AutoAugment": {"fillcolor": [0, 10, 20]}},
    {"RandAugment": None},
    {"RandAugment": {"num_layers": 3, "magnitude": 9}},
]


@pytest.mark.parametrize("op", CONFIGS, ids=lambda op: str(op))
def test_replay_is_bit_identical(op):
    data = _png(_image())
    pipe = _pipeline(op)
    (aug,) = pipe.ops[1:]
    assert len(aug.param_ranges()) == len(aug.param_names)
    changed = 0
    for seed in range(40):
        out, params = pipe.draw(data, np.random.default_rng(seed))
        assert params.dtype == np.int32 and params.shape == (len(pipe.param_names),)
        for value, (lo, hi) in zip(params.tolist(), aug.param_ranges(), strict=True):
            assert lo <= value <= hi
        stored = np.frombuffer(params.tobytes(), dtype=np.int32)  # what a cache row holds
        assert np.array_equal(pipe.replay(data, stored), out)
        changed += not np.array_equal(out, _image())
    assert changed > 10  # the op really augments


def test_timm_param_names_and_prob_gate():
    pipe = _pipeline({"TimmAutoAugment": {"config_str": "rand-m9-mstd0.5-inc1", "prob": 0.0}})
    assert pipe.param_names[:6] == (
        "TimmAutoAugment.applied",
        "TimmAutoAugment.op0",
        "TimmAutoAugment.on0",
        "TimmAutoAugment.mag0",
        "TimmAutoAugment.neg0",
        "TimmAutoAugment.op1",
    )
    data = _png(_image())
    for seed in range(10):  # prob 0 (several shipped PULC configs): never applied
        out, params = pipe.draw(data, np.random.default_rng(seed))
        assert not params.any() and np.array_equal(out, _image())
    random_interp = _pipeline({"TimmAutoAugment": {"config_str": "v0", "interpolation": "random"}})
    assert random_interp.param_names[-4:] == tuple(
        f"TimmAutoAugment.{p}1" for p in ("on", "mag", "neg", "interp")
    )


def test_timm_draw_statistics():
    """prob gate, per-op 0.5, uniform op choice, Gaussian magnitude noise, w0 without
    replacement: the drawn integers follow PaddleClas's distributions."""
    img = _image()
    rng = np.random.default_rng(0)
    op = Timm("k", config_str="rand-m9-mstd0.5-inc1", prob=0.5)
    draws = np.array([op.draw(img, rng) for _ in range(4000)])
    applied = draws[:, 0] == 1
    assert abs(applied.mean() - 0.5) < 0.03
    layer = draws[applied][:, 1:5]  # op0, on0, mag0, neg0
    assert abs(layer[:, 1].mean() - 0.5) < 0.03
    assert np.bincount(layer[:, 0], minlength=15).min() > 60  # all 15 ops drawn
    mags = layer[layer[:, 1] == 1][:, 2] / MAGNITUDE_RESOLUTION
    assert abs(mags.mean() - 9.0) < 0.05 and abs(mags.std() - 0.5) < 0.05
    assert mags.max() <= 10.0 and len(np.unique(mags)) > 100  # noisy, clipped, fine-grained
    weighted = Timm("k", config_str="rand-n4-w0")
    for _ in range(300):
        ops = np.array(weighted.draw(img, rng))[[1, 5, 9, 13]]
        assert len(set(ops.tolist())) == 4 and not {2, 4} & set(
            ops.tolist()
        )  # p=0: Invert, Posterize


def _timm_params(op: Timm, slots: list[tuple[int, ...]], head: tuple[int, ...]) -> tuple:
    return (1, *head, *[v for s in slots for v in s])


def _enh(kind, factor):
    return lambda im: kind(im).enhance(factor)


def _affine(matrix, resample=BICUBIC, fill=FILL):
    return lambda im: im.transform(
        im.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill
    )


def _solarize_add(im, add):
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return im.point(lut * 3)


W, H = 44, 36
# (index in the 'inc1' list, neg, reference at magnitude 9) for rand-m9-inc1
RAND_INC_M9 = [
    (0, 0, ImageOps.autocontrast),
    (1, 0, ImageOps.equalize),
    (2, 0, ImageOps.invert),
    (3, 1, lambda im: im.rotate(-27.0, resample=BICUBIC, fillcolor=FILL)),
    (3, 0, lambda im: im.rotate(27.0, resample=BICUBIC, fillcolor=FILL)),
    (4, 0, lambda im: ImageOps.posterize(im, 1)),  # 4 - int(0.9 * 4)
    (5, 0, lambda im: ImageOps.solarize(im, 26)),  # 256 - int(0.9 * 256)
    (6, 0, lambda im: _solarize_add(im, 99)),  # int(0.9 * 110)
    (7, 0, _enh(ImageEnhance.Color, 1.0 + 0.9 * 0.9)),
    (7, 1, _enh(ImageEnhance.Color, 1.0 - 0.9 * 0.9)),
    (8, 1, _enh(ImageEnhance.Contrast, 1.0 - 0.9 * 0.9)),
    (9, 0, _enh(ImageEnhance.Brightness, 1.0 + 0.9 * 0.9)),
    (10, 1, _enh(ImageEnhance.Sharpness, 1.0 - 0.9 * 0.9)),
    (11, 0, _affine((1, 0.9 * 0.3, 0, 0, 1, 0))),
    (12, 1, _affine((1, 0, 0, -0.9 * 0.3, 1, 0))),
    (13, 1, _affine((1, 0, -0.9 * 0.45 * W, 0, 1, 0))),
    (14, 0, _affine((1, 0, 0, 0, 1, 0.9 * 0.45 * H))),
]


@pytest.mark.parametrize("index, neg, reference", RAND_INC_M9)
def test_timm_rand_ops_match_pil(index, neg, reference):
    op = Timm("k", config_str="rand-m9-n1-inc1", interpolation="bicubic")
    img = _image()
    params = (1, index, 1, 9 * MAGNITUDE_RESOLUTION, neg)
    expected = np.asarray(reference(Image.fromarray(img)))
    assert np.array_equal(op.apply(img, params), expected)


def test_timm_non_increasing_ops_and_quantised_noise():
    """Plain variants (no inc): Posterize int(m/10*4), Solarize int(m/10*256), enhance
    m/10*1.8+0.1; a noisy magnitude is applied as its stored 1/1000-level value."""
    op = Timm("k", config_str="rand-m9-n1-mstd0.5", interpolation="bilinear")
    img = Image.fromarray(_image())
    cases = [
        (4, 7300, 0, lambda im: ImageOps.posterize(im, 2)),  # int(0.73 * 4)
        (5, 7300, 0, lambda im: ImageOps.solarize(im, 186)),  # int(0.73 * 256)
        (8, 7300, 0, _enh(ImageEnhance.Contrast, (7.3 / 10) * 1.8 + 0.1)),
        (3, 9123, 1, lambda im: im.rotate(-(9.123 / 10) * 30.0, resample=BILINEAR, fillcolor=FILL)),
        (3, 10000, 0, lambda im: im.rotate(30.0, resample=BILINEAR, fillcolor=FILL)),
    ]
    for index, mag, neg, reference in cases:
        out = op.apply(np.asarray(img), (1, index, 1, mag, neg))
        assert np.array_equal(out, np.asarray(reference(img))), (index, mag)
    assert np.array_equal(op.apply(np.asarray(img), (1, 3, 0, 9000, 0)), np.asarray(img))  # off


def test_timm_random_interpolation_and_fill():
    op = Timm("k", config_str="rand-m5-n1", interpolation="random", mean=[0.0, 0.5, 1.0])
    img = Image.fromarray(_image())
    for pick, flt in ((0, BILINEAR), (1, BICUBIC)):
        out = op.apply(np.asarray(img), (1, 11, 1, 5000, 0, pick))  # ShearX 0.15
        ref = _affine((1, 0.5 * 0.3, 0, 0, 1, 0), flt, (0, 128, 255))(img)
        assert np.array_equal(out, np.asarray(ref))


def test_timm_auto_policies_match_pil():
    """original sub-policy 0 is (PosterizeOriginal .4 8, Rotate .6 9); originalr swaps in
    PosterizeIncreasing; v0 sub-policy 15 is (Rotate 1 7, TranslateYRel .8 9)."""
    img = Image.fromarray(_image())
    original = Timm("k", config_str="original", interpolation="bicubic")
    out = original.apply(np.asarray(img), (1, 0, 1, 8000, 0, 1, 9000, 1))
    ref = ImageOps.posterize(img, 7).rotate(-27.0, resample=BICUBIC, fillcolor=FILL)
    assert np.array_equal(out, np.asarray(ref))
    originalr = Timm("k", config_str="originalr", interpolation="bicubic")
    out = originalr.apply(np.asarray(img), (1, 0, 1, 8000, 0, 0, 0, 0))
    assert np.array_equal(out, np.asarray(ImageOps.posterize(img, 1)))  # 4 - int(0.8 * 4)
    v0 = Timm("k", config_str="v0-mstd0.5", interpolation="bicubic")
    out = v0.apply(np.asarray(img), (1, 15, 1, 7000, 0, 1, 8500, 1))
    ref = img.rotate(21.0, resample=BICUBIC, fillcolor=FILL)
    ref = _affine((1, 0, 0, 0, 1, -(8.5 / 10) * 0.45 * H))(ref)
    assert np.array_equal(out, np.asarray(ref))
    # the policy's own magnitude is what a draw without noise stores
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = v0.draw(np.asarray(img), rng)
        if p[0] and p[1] == 15 and p[2]:
            assert p[3] != 7000  # mstd 0.5: noisy
    exact = Timm("k", config_str="v0")
    for _ in range(100):
        p = exact.draw(np.asarray(img), rng)
        if p[0] and p[1] == 15 and p[2]:
            assert p[3] == 7000


def _rotate_gray(im, deg):
    rgba = im.convert("RGBA").rotate(deg)
    return Image.composite(rgba, Image.new("RGBA", rgba.size, (128,) * 4), rgba).convert("RGB")


def test_paddleclas_autoaugment_matches_pil():
    """ImageNetPolicy: sub-policy 0 = posterize idx 8 (round(linspace(8, 4, 10))[8] = 4 bits),
    rotate idx 9 (30 degrees, nearest, gray corners); 18 = shearX idx 5 (0.3 * 5 / 9), equalize."""
    op = AutoAugment("k")
    img = Image.fromarray(_image())
    out = op.apply(np.asarray(img), (0, 1, 0, 1, 0))
    assert np.array_equal(out, np.asarray(_rotate_gray(ImageOps.posterize(img, 4), 30.0)))
    out = op.apply(np.asarray(img), (18, 1, 1, 1, 0))
    shear = 0.3 * 5 / 9
    ref = img.transform(
        img.size, Image.Transform.AFFINE, (1, -shear, 0, 0, 1, 0), BICUBIC, fillcolor=(128,) * 3
    )
    assert np.allclose(out, np.asarray(ImageOps.equalize(ref)), atol=0)
    out = op.apply(np.asarray(img), (14, 0, 0, 1, 1))  # only contrast idx 8, negative
    assert np.array_equal(out, np.asarray(ImageEnhance.Contrast(img).enhance(1 - 0.8)))


def test_paddleclas_randaugment_matches_pil():
    """magnitude 5: translateX 150/331*0.5 of the width (nearest), posterize int(2.0) bits,
    solarize threshold 128.0, brightness 1 +- 0.45."""
    op = RandAugment("k", num_layers=2, magnitude=5)
    img = Image.fromarray(_image())
    tx = 150.0 / 331 * 0.5 * W
    ref = img.transform(
        img.size, Image.Transform.AFFINE, (1, 0, -tx, 0, 1, 0), fillcolor=(128,) * 3
    )
    ref = ImageOps.posterize(ref, 2)
    assert np.array_equal(op.apply(np.asarray(img), (2, 1, 6, 0)), np.asarray(ref))
    ref = ImageEnhance.Brightness(ImageOps.solarize(img, 128.0)).enhance(1 + 0.45)
    assert np.array_equal(op.apply(np.asarray(img), (7, 0, 10, 0)), np.asarray(ref))


@pytest.mark.parametrize(
    "op, where",
    [
        ({"TimmAutoAugment": {"config_str": "augmix-m5"}}, "config_str"),
        ({"TimmAutoAugment": {"config_str": "auto-v0"}}, "config_str"),
        ({"TimmAutoAugment": {"config_str": "rand-m9-q3"}}, "config_str"),
        ({"TimmAutoAugment": {"config_str": "rand-w1"}}, "config_str"),
        ({"TimmAutoAugment": {"config_str": "rand-n14-w0"}}, "config_str"),
        ({"TimmAutoAugment": {"config_str": "v0-m3"}}, "config_str"),
        ({"TimmAutoAugment": {"interpolation": "nearest"}}, "interpolation"),
        ({"TimmAutoAugment": {"prob": 2}}, "prob"),
        ({"TimmAutoAugment": {"img_size": 0}}, "img_size"),
        ({"TimmAutoAugment": {"hparams": {}}}, "hparams"),
        ({"RandAugment": {"num_layers": -1}}, "num_layers"),
        ({"AutoAugment": {"fillcolor": [1, 2]}}, "fillcolor"),
    ],
)
def test_bad_arguments_name_the_key(op, where):
    ((name, _),) = op.items()
    with pytest.raises(ConfigError, match=rf"^{KEY}\.1\.{name}\.{where}"):
        build_ops([{"DecodeImage": None}, op], KEY)


def test_damaged_params_are_refused():
    data = _png(_image())
    pipe = _pipeline({"TimmAutoAugment": {"config_str": "rand-m9-n1"}})
    for bad in ([1, 15, 1, 9000, 0], [1, 0, 1, 10001, 0], [2, 0, 0, 0, 0], [1, 0, 1, 0, 2]):
        with pytest.raises(CacheError, match="TimmAutoAugment"):
            pipe.replay(data, np.array(bad, np.int32))


def test_pil_ops_must_come_before_normalize():
    for op in ({"TimmAutoAugment": None}, {"AutoAugment": None}, {"ColorJitter": {"hue": 0.1}}):
        ((name, _),) = op.items()
        with pytest.raises(ConfigError, match=rf"^{KEY}\.2\.{name}: .*before NormalizeImage"):
            build_ops([{"DecodeImage": None}, {"NormalizeImage": {"order": ""}}, op], KEY)


@pytest.mark.parametrize("op", [*CONFIGS, {"ColorJitter": {"brightness": 0.4, "hue": 0.2}}])
def test_any_stored_integers_replay_or_are_refused(op):
    """A damaged cache row never crashes replay with anything but CacheError."""
    data = _png(_image(12, 14))
    pipe = _pipeline(op)
    rng = np.random.default_rng(1)
    n = len(pipe.param_names)
    for scale in (2, 30, 2**31 - 1):
        for _ in range(30):
            params = rng.integers(-scale if scale > 2 else 0, scale, size=n, endpoint=True)
            try:
                out = pipe.replay(data, params.astype(np.int32))
            except CacheError:
                continue
            assert out.dtype == np.uint8 and out.shape == (12, 14, 3)


def test_shipped_paddleclas_distillation_transform_lists_build():
    """Every transform list of PaddleClas's distillation configs (tests/data, from its repo)
    builds, except the two that pad with Padv2 (not an augmentation this item covers)."""
    import json
    from pathlib import Path

    data = json.loads(
        (Path(__file__).parent / "data" / "paddleclas_distillation_configs.json").read_text()
    )
    built, refused = 0, []
    for name, cfg in data["configs"].items():
        for split, section in cfg.get("DataLoader", {}).items():
            ops = section.get("dataset", {}).get("transform_ops")
            if ops is None:
                continue
            try:
                build_ops(ops, f"{name}:{split}")
                built += 1
            except ConfigError as e:
                refused.append(str(e))
    assert built >= 54
    assert all("unknown transform op 'Padv2'" in e for e in refused), refused
