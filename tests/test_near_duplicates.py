"""The perceptual hash finds re-encoded, resized and ~5%-cropped copies within NEAR_DISTANCE
of an original's crop variants, and no unrelated image; the banded index returns exactly
the pairs a brute-force comparison does."""

from __future__ import annotations

import numpy as np
import pytest

from offline_ssld.errors import DataError
from offline_ssld.near_duplicates import (
    NEAR_DISTANCE,
    HashIndex,
    crop_variants,
    phash,
    popcount,
)
from tests.helpers import encode, near_copies, scene


def test_copies_found_and_unrelated_images_not():
    rng = np.random.default_rng(7)
    originals = [scene(rng) for _ in range(40)]
    variants = [np.array(crop_variants(encode(img)), dtype=np.uint64) for img in originals]
    worst = {}
    for i, img in enumerate(originals):
        for name, data in near_copies(img).items():
            d = int(popcount(np.uint64(phash(data)) ^ variants[i]).min())
            worst[name] = max(worst.get(name, 0), d)
    assert max(worst.values()) <= NEAR_DISTANCE, worst
    # Unrelated: every other original against every variant of an image.
    hashes = np.array([phash(encode(img)) for img in originals], dtype=np.uint64)
    for i, own in enumerate(variants):
        others = np.delete(hashes, i)
        assert popcount(others[:, None] ^ own[None, :]).min() > NEAR_DISTANCE


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
