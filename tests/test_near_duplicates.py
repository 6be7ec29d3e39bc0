"""Near copies (re-encoded, resized, cropped) are hash candidates of their original and pass
the pixel verification; distinct images do not, on generated scenes and, when Debian's
Fashion-MNIST is installed, on real images; the banded index returns exactly the pairs a
brute-force comparison does."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from offline_ssld.errors import DataError
from offline_ssld.near_duplicates import (
    GATE_MAD,
    MATCH_SCORE,
    NEAR_DISTANCE,
    HashIndex,
    coarse_mad,
    crop_variants,
    decode_gray,
    fingerprint,
    phash,
    popcount,
    resample_sizes,
    resampled_variants,
    verify,
)
from pipelines import fashion_mnist
from tests.helpers import encode, near_copies, scene

FASHION = fashion_mnist.IDX_DIR / "t10k-images-idx3-ubyte.gz"
# Distinct Fashion-MNIST images refused (train against test) measured 1.7% of 4,000 against
# 1,000 (near_duplicates.MATCH_SCORE); the sample here may not exceed 3%.
FALSE_REFUSALS = 0.03


class Excluded:
    """An excluded image as select keeps it: decoded, its crop variants, its coarse
    thumbnail."""

    def __init__(self, img: np.ndarray) -> None:
        self.gray = decode_gray(encode(img))
        self.variants = np.array(crop_variants(self.gray), dtype=np.uint64)
        self.coarse = fingerprint(self.gray)[1]

    def refuses(self, data: bytes) -> bool:
        """What select decides for a pool image `data` in a pool that has its size: hash
        candidate (a small excluded image also searched as resized to that size), gate,
        verified."""
        copy = decode_gray(data)
        hashed, coarse = fingerprint(copy)
        sizes = resample_sizes(self.gray.shape, Counter({copy.shape: 1}))
        extra = np.array(resampled_variants(self.gray, sizes), dtype=np.uint64)
        variants = np.union1d(self.variants, extra)
        return (
            int(popcount(np.uint64(hashed) ^ variants).min()) <= NEAR_DISTANCE
            and coarse_mad(coarse[None], self.coarse[None])[0] <= GATE_MAD
            and verify(self.gray, copy) <= MATCH_SCORE
        )


def refused_share(originals: list[np.ndarray], pool: list[np.ndarray]) -> float:
    """Share of `pool` taken for a copy of some original."""
    excluded = [Excluded(o) for o in originals]
    return float(np.mean([any(e.refuses(encode(p)) for e in excluded) for p in pool]))


def check_copies(originals: list[np.ndarray]) -> None:
    missed = [
        (i, name)
        for i, img in enumerate(originals)
        for name, data in near_copies(img).items()
        if not Excluded(img).refuses(data)
    ]
    assert not missed


def test_copies_found_and_unrelated_images_not():
    rng = np.random.default_rng(7)
    originals = [scene(rng) for _ in range(20)]
    check_copies(originals)
    assert refused_share(originals[:10], originals[10:]) == 0


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is absent")
def test_fashion_mnist_copies_found_and_distinct_rarely_refused():
    test = fashion_mnist.read_idx(FASHION)
    train = fashion_mnist.read_idx(fashion_mnist.IDX_DIR / "train-images-idx3-ubyte.gz")
    check_copies(list(test[:25]))
    assert refused_share(list(test[:60]), list(train[:200])) <= FALSE_REFUSALS


def test_undecodable_image_is_an_error():
    with pytest.raises(DataError, match="cannot decode"):
        phash(b"not an image")


@pytest.mark.parametrize("distance", [0, 2, 5, 8, 12])
def test_index_matches_brute_force(distance):
    rng = np.random.default_rng(distance)
    indexed = rng.integers(0, 2**64 - 1, 3000, dtype=np.uint64, endpoint=True)
    queries = rng.integers(0, 2**64 - 1, 400, dtype=np.uint64, endpoint=True)
    for j in range(200):  # near copies at 0..distance + 2 bits
        flips = rng.choice(64, int(rng.integers(0, distance + 3)), replace=False)
        queries[j] = indexed[j * 7] ^ np.uint64(sum(1 << int(b) for b in flips))
    queries[300] = queries[301] = indexed[5]  # repeated queries, each answered
    q, i, d = HashIndex(indexed).search(queries, distance)
    table = popcount(queries[:, None] ^ indexed[None, :])
    bq, bi = np.nonzero(table <= distance)
    assert len(bq) > 40  # the planted copies at least
    np.testing.assert_array_equal(q, bq)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_array_equal(d, table[bq, bi])


def test_resample_sizes_only_for_small_images_and_fitting_sizes():
    pool = Counter({(36, 36): 5, (56, 56): 9, (28, 28): 100, (36, 48): 50, (200, 200): 7})
    # its own size, another aspect ratio and a 7x enlargement are not copy sizes of it
    assert resample_sizes((28, 28), pool) == [(56, 56), (36, 36)]
    assert resample_sizes((64, 64), pool) == []  # canonical() shrinks it: no need
    many = Counter({(30 + i, 30 + i): i for i in range(20)})
    assert len(resample_sizes((28, 28), many)) == 8
