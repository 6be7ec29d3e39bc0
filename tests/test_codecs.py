"""Property tests for offline_ssld.cache.codecs (pure numpy, fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offline_ssld.cache.codecs import (
    CODEC_NAMES,
    Codec,
    Column,
    FP16Codec,
    SampledCodec,
    TopKCodec,
    build_codec,
    codec_from_settings,
)
from offline_ssld.errors import ConfigError

FP16_REL = 2.0**-11  # |fp16(x) - x| <= |x| * 2**-11 (normal range)

SETTINGS = settings(max_examples=40, deadline=None)


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@st.composite
def logit_matrices(draw, min_c: int = 2, max_c: int = 1000, max_b: int = 8) -> np.ndarray:
    """Float32 (B, C) logits in [-30, 30]: uniform, peaked, tied, or integer-valued."""
    b = draw(st.integers(1, max_b))
    c = draw(
        st.one_of(
            st.integers(min_c, min(max_c, 20)),
            st.sampled_from([c for c in (10, 100, 1000) if min_c <= c <= max_c] or [min_c]),
            st.integers(min_c, max_c),
        )
    )
    seed = draw(st.integers(0, 2**32 - 1))
    style = draw(st.sampled_from(["uniform", "peaked", "tied", "integer", "narrow"]))
    rng = np.random.default_rng(seed)
    if style == "uniform":
        x = rng.uniform(-30, 30, (b, c))
    elif style == "peaked":  # a confident teacher: one class far ahead
        x = rng.normal(0, 2, (b, c))
        x[np.arange(b), rng.integers(0, c, b)] = 25.0
    elif style == "tied":
        x = np.full((b, c), rng.uniform(-30, 30))
    elif style == "integer":  # many exact ties
        x = rng.integers(-3, 4, (b, c)).astype(np.float64)
    else:
        x = rng.normal(0, 0.5, (b, c))
    return np.clip(x, -30, 30).astype(np.float32)


def fp16_rel_bound(x: np.ndarray) -> float:
    """Bound on the relative error of exp(fp16(x_i) - exact logsumexp)."""
    return float(np.expm1(np.abs(x).max() * FP16_REL + 2.0**-25))


# ----------------------------------------------------------------------------- fp16


@SETTINGS
@given(logit_matrices())
def test_fp16_decode_close_to_softmax(x):
    codec = FP16Codec(x.shape[1])
    payload = codec.encode(x)
    assert set(payload) == {"logits"}
    assert payload["logits"].dtype == np.float16 and payload["logits"].shape == x.shape
    dec = codec.decode(payload)
    assert dec.dtype == np.float32 and dec.shape == x.shape
    np.testing.assert_allclose(dec.sum(axis=1), 1.0, atol=1e-5)
    # First order: |dp_i| <= p_i (1 - p_i) * 2h <= h / 2, h = max fp16 rounding of a logit.
    # That is <= 2e-3 for |logits| <= 16; for logits near 30 it can reach ~3.7e-3.
    h = np.abs(x).max() * FP16_REL
    atol = max(2e-3, 0.55 * h) + 1e-6
    assert np.abs(dec - softmax(x)).max() <= atol


def test_fp16_worst_case_near_30_is_bounded():
    # Two near-tied logits just either side of a fp16 rounding midpoint near 30 round in
    # opposite directions (fp16 spacing is 1/64 there): the error exceeds 2e-3 but stays
    # within the first-order bound h / 2 (+10%).
    mid = 29.984375 + 1 / 128
    x = np.array([[mid - 1e-4, mid + 1e-4, -5.0]], dtype=np.float32)
    codec = FP16Codec(3)
    err = np.abs(codec.decode(codec.encode(x)) - softmax(x)).max()
    assert 2e-3 < err <= 0.55 * 30 * FP16_REL


def test_fp16_saturates_instead_of_inf():
    x = np.array([[1e6, 0.0, -1e6]], dtype=np.float32)
    codec = FP16Codec(3)
    payload = codec.encode(x)
    assert np.isfinite(payload["logits"]).all()
    np.testing.assert_allclose(codec.decode(payload), [[1.0, 0.0, 0.0]])


# ----------------------------------------------------------------------------- top-k


@SETTINGS
@given(logit_matrices(), st.integers(1, 12))
def test_topk_decode(x, k):
    B, C = x.shape
    codec = TopKCodec(C, k=k)
    k = codec.k
    assert k == min(k, C)
    payload = codec.encode(x)
    ids = payload["topk_ids"]
    assert ids.dtype == np.int16 and ids.shape == (B, k)
    assert payload["topk_logits"].dtype == np.float16
    assert payload["logsumexp"].dtype == np.float32 and payload["logsumexp"].shape == (B, 1)
    np.testing.assert_allclose(
        payload["logsumexp"][:, 0], np.log(np.exp(x.astype(np.float64)).sum(axis=1)), rtol=1e-6
    )

    dec = codec.decode(payload).astype(np.float64)
    sm = softmax(x)
    np.testing.assert_allclose(dec.sum(axis=1), 1.0, atol=1e-5)
    rel = fp16_rel_bound(x)
    rows = np.arange(B)[:, None]
    in_top = np.zeros((B, C), dtype=bool)
    in_top[rows, ids] = True
    assert (in_top.sum(axis=1) == k).all()  # unique ids
    if k < C:  # the stored ids are a true top-k (ties allowed)
        assert (np.where(in_top, x, np.inf).min(1) >= np.where(in_top, -np.inf, x).max(1)).all()
    # top-k probabilities: exp(fp16 logit - lse), maybe renormalized down by <= (1 + rel)
    np.testing.assert_allclose(dec[in_top], sm[in_top], rtol=2 * rel + 1e-5, atol=1e-7)
    if k < C:
        tail = np.where(in_top, np.nan, dec)
        # spread evenly: every non-top-k class gets the same probability ...
        assert (np.nanmax(tail, axis=1) == np.nanmin(tail, axis=1)).all()
        # ... and together they get 1 - top-k mass
        tail_mass = np.nansum(tail, axis=1)
        np.testing.assert_allclose(tail_mass, 1 - (dec * in_top).sum(axis=1), atol=1e-5)
        true_tail = 1 - (sm * in_top).sum(axis=1)
        np.testing.assert_allclose(tail_mass, true_tail, atol=rel + 1e-5)
    else:  # k >= C: all classes stored, no tail, reproduces softmax
        np.testing.assert_allclose(dec, sm, rtol=2 * rel + 1e-5, atol=1e-7)


@SETTINGS
@given(logit_matrices(max_c=30))
def test_topk_k_at_least_c_reproduces_softmax(x):
    C = x.shape[1]
    codec = build_codec("topk", C, k=C + 3)
    assert codec.k == C and codec.settings()["k"] == C
    dec = codec.decode(codec.encode(x))
    # same fp16 bound as the fp16 codec: 2e-3 for |logits| <= 16, up to ~3.7e-3 near 30
    atol = max(2e-3, 0.55 * np.abs(x).max() * FP16_REL) + 1e-6
    assert np.abs(dec - softmax(x)).max() <= atol
    np.testing.assert_allclose(dec.sum(axis=1), 1.0, atol=1e-5)


def test_topk_ids_int32_for_many_classes():
    codec = TopKCodec(40000, k=3)
    assert codec.columns()[0] == Column("topk_ids", "int32", 3)
    x = np.zeros((2, 40000), dtype=np.float32)
    x[0, 39999] = 10.0
    x[1, 33000] = 10.0
    payload = codec.encode(x)
    assert payload["topk_ids"].dtype == np.int32
    assert payload["topk_ids"][0, 0] == 39999 and payload["topk_ids"][1, 0] == 33000
    np.testing.assert_allclose(codec.decode(payload).sum(axis=1), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- sampled


@SETTINGS
@given(logit_matrices(), st.integers(1, 255), st.integers(0, 2**32 - 1))
def test_sampled_encode_structure(x, n, seed):
    B, C = x.shape
    codec = SampledCodec(C, samples=n)
    payload = codec.encode(x, rng=np.random.default_rng(seed))
    ids, counts = payload["sample_ids"], payload["sample_counts"]
    assert ids.dtype == np.int16 and counts.dtype == np.uint8
    assert ids.shape == counts.shape == (B, n)
    assert (counts.astype(int).sum(axis=1) == n).all()
    used = counts > 0
    assert ((ids >= 0) == used).all()  # padding: id -1 with count 0
    assert (ids[used] < C).all()
    for r in range(B):  # unique ids, left-aligned
        row = ids[r][used[r]]
        assert len(np.unique(row)) == len(row)
        assert used[r, : used[r].sum()].all()
    assert (softmax(x)[np.nonzero(used)[0], ids[used]] > 0).all()  # never a p == 0 class
    dec = codec.decode(payload)
    assert dec.dtype == np.float32
    np.testing.assert_allclose(dec.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(dec * n, np.round(dec * n), atol=1e-4)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(logit_matrices(min_c=5, max_c=5, max_b=1), st.integers(0, 2**32 - 1))
def test_sampled_decode_is_unbiased(x, seed):
    # 4000 independent draws of the same logits (one encode of 4000 identical rows).
    codec = SampledCodec(5)
    draws = np.repeat(x, 4000, axis=0)
    mean = codec.decode(codec.encode(draws, rng=np.random.default_rng(seed))).mean(axis=0)
    assert np.abs(mean - softmax(x)[0]).max() < 0.03


def test_sampled_unbiased_fixed_example():
    x = np.array([[2.0, 1.0, 0.0, -1.0, 0.5]], dtype=np.float32)
    codec = SampledCodec(5, samples=12)
    dec = codec.decode(codec.encode(np.repeat(x, 4000, 0), rng=np.random.default_rng(0)))
    assert np.abs(dec.mean(axis=0) - softmax(x)[0]).max() < 0.03


def test_sampled_never_draws_zero_probability_classes():
    x = np.full((64, 7), -1e4, dtype=np.float32)
    x[:, 3] = 0.0  # softmax is exactly one-hot in float64
    codec = SampledCodec(7, samples=255)
    payload = codec.encode(x, rng=np.random.default_rng(1))
    assert (payload["sample_ids"][:, 0] == 3).all()
    assert (payload["sample_counts"][:, 0] == 255).all()
    assert (payload["sample_ids"][:, 1:] == -1).all()


def test_sampled_requires_rng():
    with pytest.raises(ValueError, match="rng"):
        SampledCodec(10).encode(np.zeros((1, 10), dtype=np.float32))


# ----------------------------------------------------------------------------- sizes, settings


@pytest.mark.parametrize("c", [10, 1000])
def test_bytes_per_row(c):
    assert build_codec("fp16", c).bytes_per_row() == 2 * c
    assert build_codec("topk", c).bytes_per_row() == 5 * 2 + 5 * 2 + 4  # int16 ids, fp16, f32
    assert build_codec("sampled", c).bytes_per_row() == 12 * 2 + 12 * 1  # int16 ids, uint8
    assert build_codec("topk", 40000, k=5).bytes_per_row() == 5 * 4 + 5 * 2 + 4
    assert build_codec("sampled", 40000, samples=12).bytes_per_row() == 12 * 4 + 12
    for name in ("fp16", "topk", "sampled"):
        codec = build_codec(name, c)
        x = np.random.default_rng(0).normal(size=(3, c)).astype(np.float32)
        payload = codec.encode(x, rng=np.random.default_rng(0))
        assert set(payload) == {col.name for col in codec.columns()}
        assert sum(a.nbytes for a in payload.values()) == 3 * codec.bytes_per_row()
        for col in codec.columns():
            assert payload[col.name].dtype == np.dtype(col.dtype)
            assert payload[col.name].shape == (3, col.width)


@given(
    st.sampled_from(["fp16", "topk", "sampled"]),
    st.integers(1, 70000),
    st.integers(1, 255),
)
@settings(max_examples=40, deadline=None)
def test_settings_round_trip(name, c, n):
    extra = {"topk": {"k": n}, "sampled": {"samples": n}, "fp16": {}}[name]
    codec = build_codec(name, c, **extra)
    s = codec.settings()
    assert s["name"] == name and s["num_classes"] == c
    assert json.loads(json.dumps(s)) == s  # plain data
    again = codec_from_settings(s)
    assert type(again) is type(codec) and again == codec and again.settings() == s
    assert again.columns() == codec.columns()
    assert isinstance(codec, Codec)


@pytest.mark.parametrize(
    "call, word",
    [
        (lambda: build_codec("fp32", 10), "fp16, topk, sampled"),
        (lambda: build_codec("topk", 10, k=0), "'k'"),
        (lambda: build_codec("topk", 10, k=2.5), "'k'"),
        (lambda: build_codec("topk", 10, k=True), "'k'"),
        (lambda: build_codec("sampled", 10, samples=0), "'samples'"),
        (lambda: build_codec("sampled", 10, samples=256), "'samples'"),
        (lambda: build_codec("fp16", 10, k=5), "'k'"),
        (lambda: build_codec("topk", 10, samples=5), "'samples'"),
        (lambda: build_codec("topk", 0), "'num_classes'"),
        (lambda: codec_from_settings({"name": "topk", "num_classes": 10, "kk": 3}), "'kk'"),
        (lambda: codec_from_settings({"num_classes": 10}), "'name'"),
        (lambda: codec_from_settings({"name": "fp16"}), "'num_classes'"),
        (lambda: codec_from_settings({"name": "nope", "num_classes": 3}), "fp16, topk, sampled"),
    ],
)
def test_bad_settings_raise_value_error(call, word):
    with pytest.raises(ValueError, match=word.replace("(", r"\(")) as info:
        call()
    assert isinstance(info.value, ConfigError)  # the CLI prints it in one line


def test_encode_rejects_bad_logits():
    codec = FP16Codec(4)
    with pytest.raises(ValueError, match="shape"):
        codec.encode(np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(np.array([[0.0, np.nan, 1.0, 2.0]], dtype=np.float32))
    with pytest.raises(ValueError, match="logits"):
        codec.decode({"other": np.zeros((1, 4), np.float16)})


# ----------------------------------------------------------------------------- compare


def _codecs_for(c: int) -> list[Codec]:
    return [FP16Codec(c), TopKCodec(c), TopKCodec(c, k=c), SampledCodec(c)]


@SETTINGS
@given(logit_matrices(), st.integers(0, 2**32 - 1))
def test_compare_accepts_float_noise(x, seed):
    rng = np.random.default_rng(seed)
    noisy = (x + rng.uniform(-1e-3, 1e-3, x.shape)).astype(np.float32)
    for codec in _codecs_for(x.shape[1]):
        payload = codec.encode(x, rng=np.random.default_rng(seed))
        assert codec.compare(payload, x) <= codec.tolerance()
        assert codec.compare(payload, noisy) <= codec.tolerance()
        if not isinstance(codec, SampledCodec):
            assert codec.compare(payload, noisy) < 2e-3  # noise + fp32 rounding only
    assert SampledCodec(2).tolerance() == 0.0
    assert FP16Codec(2).tolerance() == TopKCodec(2).tolerance() == 0.05


def test_compare_ignores_fp16_rounding_of_large_logits():
    x = np.array([[1000.0, -300.0, 200.5, 7.0]], dtype=np.float32)  # fp16 ulp at 1000 is 0.5
    for codec in (FP16Codec(4), TopKCodec(4, k=2)):
        assert codec.compare(codec.encode(x), x + 1e-3) <= codec.tolerance()


@SETTINGS
@given(logit_matrices(), st.integers(0, 2**32 - 1))
def test_compare_rejects_different_logits(x, seed):
    B, C = x.shape
    rng = np.random.default_rng(seed)
    # The teacher now prefers one class that the stored payload ranked lowest by far.
    other = x.copy()
    low = np.argmin(x, axis=1)
    other[np.arange(B), low] = x.max(axis=1) + 5.0
    for codec in (FP16Codec(C), TopKCodec(C), TopKCodec(C, k=C)):
        payload = codec.encode(x)
        assert codec.compare(payload, other) > codec.tolerance()
    # sampled: stored draws from one-hot-ish logits on class 0, checked against class 1
    codec = SampledCodec(C)
    peaked = np.full((B, C), -15.0, dtype=np.float32)
    peaked[:, 0] = 15.0
    payload = codec.encode(peaked, rng=rng)
    assert codec.compare(payload, peaked) == 0.0
    moved = np.roll(peaked, 1, axis=1)
    assert codec.compare(payload, moved) > codec.tolerance()


def test_compare_topk_detects_swapped_ids():
    x = np.array([[5.0, 4.0, 3.99, 0.0, -1.0]], dtype=np.float32)
    codec = TopKCodec(5, k=2)
    payload = codec.encode(x)
    assert payload["topk_ids"].tolist() == [[0, 1]]
    # same logsumexp, but classes 1 and 3 swapped: stored ids {0, 1} are not a top-2
    assert codec.compare(payload, np.array([[5.0, 0.0, 3.99, 4.0, -1.0]])) == np.inf
    # a near-tie within tolerance at the boundary swapping order is accepted
    assert codec.compare(payload, np.array([[5.0, 3.99, 4.0, 0.0, -1.0]])) <= 0.05


def test_compare_sampled_rejects_malformed_payload():
    codec = SampledCodec(4, samples=3)
    x = np.zeros((1, 4), dtype=np.float32)
    good = codec.encode(x, rng=np.random.default_rng(0))
    assert codec.compare(good, x) == 0.0
    bad = {k: v.copy() for k, v in good.items()}
    bad["sample_counts"][0, 0] += 1  # counts no longer sum to N
    assert codec.compare(bad, x) == np.inf
    bad = {k: v.copy() for k, v in good.items()}
    bad["sample_ids"][0, 0] = 4  # out of range
    assert codec.compare(bad, x) == np.inf


def test_codec_registry_is_exactly_the_configs_list():
    """config/offline.py names the codecs and their Offline keys as plain data (config is
    the bottom layer); the registry here is built over exactly those."""
    from offline_ssld.config.offline import CODEC_OFFLINE_KEYS, OFFLINE_DEFAULTS

    assert tuple(CODEC_OFFLINE_KEYS) == CODEC_NAMES
    for name in CODEC_NAMES:
        codec = build_codec(name, 10)  # every setting at its default
        assert codec.name == name and codec.offline_keys == CODEC_OFFLINE_KEYS[name]
        for setting, key in codec.offline_keys.items():
            assert codec.settings()[setting] == OFFLINE_DEFAULTS[key]
