"""Near-duplicate images: a 64-bit perceptual hash and a sub-quadratic Hamming search.

The hash is the DCT pHash (as `imagehash.phash`, without the dependency): decode to
grayscale, resize to 32x32 with area averaging, take the 2-D DCT, keep its 8x8 lowest
frequencies and set bit i when coefficient i is above their median. A JPEG re-encode or a
resize moves the low frequencies little (0-4 bits), but a crop shifts and rescales them:
a 5% crop off a corner alone moves 10-20 bits, as far as unrelated images can come. So an
excluded image is hashed as `crop_variants`: itself and its 5% crops at 9 anchors (4
corners, 4 sides, centre). A pool copy cropped by up to ~7% anywhere lies within a few
bits of one of them (`NEAR_DISTANCE` states the threshold and why).

The search is multi-index hashing (Norouzi et al., 2012): the 64 bits are cut into 3 bands
(21, 21 and 22 bits). If two hashes differ in at most d bits, by the pigeonhole principle
one band differs in at most d // 3 bits. The indexed hashes are bucketed per band by their
band value (a counting sort: bucket starts by direct addressing, no search); a query visits,
in each band, the buckets of every value within d // 3 bits of its own (232-254 values at
d = 8) and checks the full 64-bit distance only for the hashes found there: against N
uniform hashes about 3 * 240 * N / 2**21.3 candidates per query instead of N.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations

import cv2
import numpy as np

from offline_ssld.errors import DataError

# Copies re-encoded (JPEG 50-95), resized (0.5-1.5x) and cropped by 0-7% at random anchors
# measured at most 8 bits (99th percentile 6) from the nearest crop variant of their
# original, over 1,500 copies of 300 synthetic scenes; unrelated images were 12 or more bits
# from every variant of another (mean 32). Two independent uniform hashes are within 8 bits
# with probability 2.9e-10, so a 1M pool against 50k excluded images (500k variants) loses
# about 150 unrelated pool images, a cost worth a missed copy of an evaluation image that
# would leak into training. The summary lists every match with its distance to check.
NEAR_DISTANCE = 8
CROP = 0.05  # the crop of the variants, of each side
BANDS = ((0, 21), (21, 21), (42, 22))  # (first bit, width) of each band
HASH_SIZE = 8  # 8x8 low DCT frequencies -> 64 bits
SIDE = 32  # the grayscale thumbnail the DCT is taken of
QUERY_BLOCK = 4096  # queries whose probes are listed at once
PAIRS_PER_CHUNK = 1 << 21  # candidates checked at once (~100 bytes each while checked)


def decode_gray(data: bytes) -> np.ndarray:
    """An encoded image (any format cv2 reads) as a 2-D uint8 grayscale array."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if pixels is None or pixels.size == 0:
        raise DataError("cannot decode the image")
    return pixels


def phash(data: bytes) -> int:
    """The 64-bit DCT perceptual hash of an encoded image."""
    return phash_pixels(decode_gray(data))


def crop_variants(data: bytes) -> list[int]:
    """pHashes of an image and of its CROP crops at 9 anchors: what an excluded image is
    searched as, so that cropped copies of it are found too."""
    gray = decode_gray(data)
    h, w = gray.shape
    dh, dw = round(CROP * h), round(CROP * w)
    top, bottom, full_h = (0, h - dh), (dh, h), (0, h)
    left, right, full_w = (0, w - dw), (dw, w), (0, w)
    boxes = [(full_h, full_w), (full_h, left), (full_h, right), (top, full_w), (bottom, full_w)]
    boxes += [(r, c) for r in (top, bottom) for c in (left, right)]
    boxes.append(((dh // 2, h - (dh - dh // 2)), (dw // 2, w - (dw - dw // 2))))
    # Repeats (a tiny image has dh = 0) would only be found twice.
    return sorted({phash_pixels(gray[r[0] : r[1], c[0] : c[1]]) for r, c in boxes})


def phash_pixels(gray: np.ndarray) -> int:
    """pHash of a decoded grayscale image (2-D array)."""
    thumb = cv2.resize(gray, (SIDE, SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(thumb)[:HASH_SIZE, :HASH_SIZE]
    bits = (low > np.median(low)).reshape(-1)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


_M1, _M2, _M4, _H01 = (
    np.uint64(0x5555555555555555),
    np.uint64(0x3333333333333333),
    np.uint64(0x0F0F0F0F0F0F0F0F),
    np.uint64(0x0101010101010101),
)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (SWAR bit counting: numpy 1.24 has no bitwise_count)."""
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return ((x * _H01) >> np.uint64(56)).astype(np.int64)


def _flip_masks(width: int, radius: int) -> np.ndarray:
    """Every `width`-bit mask with at most `radius` bits set: the values within `radius` bits
    of v are v ^ mask."""
    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << b for b in bits) for bits in combinations(range(width), r)]
    return np.array(masks, dtype=np.int64)


def _band(hashes: np.ndarray, band: int) -> np.ndarray:
    first, width = BANDS[band]
    return ((hashes >> np.uint64(first)) & np.uint64((1 << width) - 1)).astype(np.int64)


class HashIndex:
    """Indexed 64-bit hashes, searched for all those within a Hamming distance of queries."""

    def __init__(self, hashes: np.ndarray) -> None:
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        self.order: list[np.ndarray] = []  # per band: positions sorted by band value
        self.starts: list[np.ndarray] = []  # per band: first sorted slot of each value
        for band, (_, width) in enumerate(BANDS):
            values = _band(self.hashes, band)
            self.order.append(np.argsort(values, kind="stable"))
            counts = np.bincount(values, minlength=1 << width)
            self.starts.append(np.concatenate([[0], np.cumsum(counts)]))

    def search(
        self, queries: np.ndarray, distance: int = NEAR_DISTANCE
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query position, indexed position, Hamming distance) of every pair within
        `distance`, each pair once, sorted by query then indexed position."""
        if not 0 <= distance < 64:
            raise ValueError(f"distance must be in [0, 64), got {distance}")
        queries = np.ascontiguousarray(queries, dtype=np.uint64)
        found = [
            part
            for band in range(len(BANDS))
            for part in self._band_matches(queries, band, distance)
        ]
        if not found:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        q, i, d = (np.concatenate(col) for col in zip(*found, strict=True))
        # A pair close in several bands is found once per band: keep one.
        pair = np.unique(q * len(self.hashes) + i, return_index=True)[1]
        return q[pair], i[pair], d[pair]

    def _band_matches(
        self, queries: np.ndarray, band: int, distance: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        starts, order = self.starts[band], self.order[band]
        masks = _flip_masks(BANDS[band][1], distance // len(BANDS))
        for q0 in range(0, len(queries), QUERY_BLOCK):
            positions = np.arange(q0, min(q0 + QUERY_BLOCK, len(queries)))
            # The band values within distance // 3 bits of each query's, and their buckets.
            probes = (_band(queries[positions], band)[:, None] ^ masks[None, :]).reshape(-1)
            begin = starts[probes]
            length = starts[probes + 1] - begin
            owner = positions.repeat(len(masks))
            # Cut the probes into runs of about PAIRS_PER_CHUNK candidates (a run holds at
            # least one probe), so memory stays bounded however skewed the buckets are.
            total = np.cumsum(length)
            cuts = np.searchsorted(total, np.arange(PAIRS_PER_CHUNK, total[-1], PAIRS_PER_CHUNK))
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(probes)], strict=True):
                if lo >= hi:
                    continue
                size = length[lo:hi]
                # Slot k of the concatenated buckets: its bucket's begin + its offset there.
                offset = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
                indexed = order[np.repeat(begin[lo:hi], size) + offset]
                who = np.repeat(owner[lo:hi], size)
                dist = popcount(queries[who] ^ self.hashes[indexed])
                keep = dist <= distance
                yield who[keep], indexed[keep], dist[keep]
