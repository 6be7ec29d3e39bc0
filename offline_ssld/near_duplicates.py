"""Near-duplicate images in two stages: pHash candidates, then pixels compared.

Real images defeat a pHash threshold alone: on Fashion-MNIST the median distance from a
train image to its nearest distinct one is 8 bits (p10 4), while a 1-px crop resized back
moves up to 18 bits. So the hash only proposes candidates and the pixels decide:

1. canonical image: grayscale resized to WORK x WORK (area when shrinking, linear when
   enlarging) and blurred (BLUR), so a copy and its original go through the same
   resampling; every thumbnail is a box of it sampled to SIDE x SIDE (`box`).
2. pHash (as `imagehash.phash`): 2-D DCT of the SIDE x SIDE thumbnail, its 8x8 lowest
   frequencies, bit i set when coefficient i is above their median. An excluded image is
   searched as `crop_variants`: itself, its CROP crops off each side, each corner and all
   sides (VARIANT_BOXES, 10 hashes); a small one also as resized to the pool's sizes
   (`resampled_variants`).
3. search: multi-index hashing (Norouzi et al., 2012). The 64 bits are cut into 4 bands of
   16; two hashes within d bits agree to within d // 4 bits on some band (pigeonhole).
   Indexed hashes are bucketed per band by value (counting sort); a query visits, per band,
   the 137 values within 2 bits of its own and checks the full distance of the hashes
   there. Cost per query: 548 probes and about 548 * N / 2**16 distance checks, against N
   for brute force (1M pool: 0.8% of it).
4. gate: the mean absolute difference of the pair's COARSE x COARSE thumbnails (kept per
   pool image, 64 bytes) drops far candidates before anything is decoded again.
5. verification (`verify`): both images decoded again (the larger resized to the smaller's
   size first, or the excluded one to the pool one's by each RESAMPLERS entry), aligned by
   a crop search, scored by their worst block (`match_score`).

Measured on 11 copy kinds (tests/helpers.near_copies-like: JPEG q60; resized 0.6, 0.8,
1.3, 1.5; 2-5% crops off one side, a corner or all sides, some resized back; crop + resize
0.7/1.3 + JPEG 75), see the constants for the numbers.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterator
from itertools import combinations

import cv2
import numpy as np

from offline_ssld.errors import DataError

# Candidate radius. Copies to nearest variant: Fashion-MNIST 3,300 copies of 300 test images
# max 14 bits, 4 (0.12%) above 11; synthetic scenes (tests/helpers.scene) 1,650 copies max
# 8. Distinct Fashion-MNIST pairs are close (4,000 train x 1,000 test: 8.9 candidate pairs
# per pool image at 11 bits); distinct scenes almost never (1 pair in 600 x 150). 11 is the
# largest radius at 2 bits per 16-bit band; 3 bits per band costs ~9x more probes.
NEAR_DISTANCE = 11
# Coarse gate (mean absolute difference / 255 of 8x8 thumbnails): copies max 0.106
# (Fashion-MNIST, 1 px off every side of 28) and 0.047 (scenes); drops 22% of the distinct
# Fashion-MNIST candidates (and the one distinct scene candidate) before decoding.
GATE_MAD = 0.12
# Verification (match_score: worst 4x4-block mean difference / 255 once aligned). Copies:
# Fashion-MNIST max 0.118, p99 0.084 (9 of 3,300 above 0.10 with the hash misses: 99.7%
# caught; 99.7% again on 2,200 copies of 200 other images); scenes max 0.057. Distinct
# Fashion-MNIST candidates (4,000 train x 1,000 test): min 0.049, p1 0.122, p5 0.161; pool
# images refused at 0.08 / 0.09 / 0.10 / 0.11: 10 / 23 / 69 / 120 of 4,000 (0.10: 1.7%,
# near-identical plain garments of one class); with a quarter of those pool images each
# enlarged to 36 px by area, nearest and linear (so RESAMPLERS apply): 86 (2.2%). Distinct
# scenes: 0 of 600 refused, and 2,000 random scene pairs all fail at START_MAD.
# The mean difference alone separates worse (copies max 0.036, distinct p5 0.025).
MATCH_SCORE = 0.10
# match_score gives up (inf) when no start crop aligns within this mean difference (/255):
# copies' best start measured at most 0.053 (Fashion-MNIST), 0.023 (scenes); 38% of the
# distinct Fashion-MNIST candidates are above 0.08, none of them within MATCH_SCORE after
# the descent, so their descent (most of the cost) is skipped.
START_MAD = 0.08
CROP = 0.05  # the crop of the variants, of each side
BANDS = ((0, 16), (16, 16), (32, 16), (48, 16))  # (first bit, width) of each band
HASH_SIZE = 8  # 8x8 low DCT frequencies -> 64 bits
COARSE = 8  # side of the coarse thumbnail kept per image
SIDE = 32  # the thumbnail the DCT is taken of, and pixels are compared on
WORK = 64  # the canonical image every thumbnail is sampled from
BLUR = 1.0  # Gaussian sigma (WORK pixels) of the canonical image
STEP = CROP / 4  # the verification's crop search step, of each side
BLOCK = 4  # the block (SIDE pixels) match_score takes the worst mean difference of
REACH = 6  # the verification searches crops of up to REACH steps per side
QUERY_BLOCK = 4096  # queries whose probes are listed at once
PAIRS_PER_CHUNK = 1 << 21  # candidates checked at once (~100 bytes each while checked)
# How copies of another size are made (cv2's, and PIL's nearest, bilinear, bicubic, box):
# `verify` tries each on the excluded image, as a copy's own resampler reproduces it.
RESAMPLERS = (cv2.INTER_NEAREST, cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC)


def decode_gray(data: bytes) -> np.ndarray:
    """An encoded image (any format cv2 reads) as a 2-D uint8 grayscale array."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if pixels is None or pixels.size == 0:
        raise DataError("cannot decode the image")
    return pixels


def canonical(gray: np.ndarray) -> np.ndarray:
    """The image as WORK x WORK float32, blurred: every hash and comparison samples this, so
    a copy and its original go through the same resampling whatever their sizes."""
    h, w = gray.shape
    interp = cv2.INTER_AREA if min(h, w) >= WORK else cv2.INTER_LINEAR
    work = cv2.resize(gray, (WORK, WORK), interpolation=interp).astype(np.float32)
    return cv2.GaussianBlur(work, (0, 0), BLUR)


def box(canon: np.ndarray, top: float, bottom: float, left: float, right: float) -> np.ndarray:
    """SIDE x SIDE samples of `canon` with the given fractions cut off each side."""
    sy, sx = (1 - top - bottom) * WORK / SIDE, (1 - left - right) * WORK / SIDE
    inverse = np.array(
        [[sx, 0, left * WORK + 0.5 * sx - 0.5], [0, sy, top * WORK + 0.5 * sy - 0.5]],
        np.float32,
    )
    return cv2.warpAffine(
        canon,
        inverse,
        (SIDE, SIDE),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def phash(data: bytes) -> int:
    """The 64-bit DCT perceptual hash of an encoded image."""
    return fingerprint(decode_gray(data))[0]


def fingerprint(gray: np.ndarray) -> tuple[int, np.ndarray]:
    """(pHash, COARSE x COARSE uint8 thumbnail) of a decoded image: what is kept of every
    pool image, the thumbnail to drop most hash candidates before decoding them again."""
    canon = canonical(gray)
    small = cv2.resize(canon, (COARSE, COARSE), interpolation=cv2.INTER_AREA)
    return phash_pixels(box(canon, 0, 0, 0, 0)), np.clip(small + 0.5, 0, 255).astype(np.uint8)


def coarse_mad(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute difference (/255) of paired coarse thumbnails (rows of a and b)."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return diff.reshape(len(diff), -1).mean(axis=1) / 255


# (top, bottom, left, right) cut of the crop variants: none, one side, two sides, all sides.
VARIANT_BOXES = [
    (0, 0, 0, 0),
    (CROP, 0, 0, 0),
    (0, CROP, 0, 0),
    (0, 0, CROP, 0),
    (0, 0, 0, CROP),
    *[(t, b, x, y) for t, b in ((CROP, 0), (0, CROP)) for x, y in ((CROP, 0), (0, CROP))],
    (CROP, CROP, CROP, CROP),
]


def crop_variants(gray: np.ndarray) -> list[int]:
    """pHashes of a decoded image and of its CROP crops (VARIANT_BOXES): what an excluded
    image is searched as, so that cropped copies of it are found too."""
    canon = canonical(gray)
    return sorted({phash_pixels(box(canon, *cut)) for cut in VARIANT_BOXES})


# An excluded image smaller than WORK (either side) is also searched as resampled to the
# pool's sizes: canonical() enlarges it, so a blocky resampler's uneven edges survive into
# the hash. On Fashion-MNIST (300 test images; area and nearest enlargements to 8 sizes from
# 31 to 56 px) 106 of 4,800 copies were over NEAR_DISTANCE from every crop variant, 0 with
# the copy's size searched too. Against 4,000 train images, a quarter of them enlarged to
# 36 px: queries +28%, candidate pairs +15%, distinct images refused 97 (86 without).
# Larger images are shrunk to WORK, which averages the unevenness away.
RESAMPLE_SCALES = (0.5, 2.5)  # pool sizes considered, as a multiple of the image's sides
RESAMPLE_ASPECT = 0.05  # and within this relative difference of its aspect ratio
RESAMPLE_SIZES = 8  # at most this many (the most frequent in the pool)


def resample_sizes(shape: tuple[int, int], pool_sizes: Counter) -> list[tuple[int, int]]:
    """The pool sizes (h, w) a resampled copy of an image of `shape` could have: none when
    the image is not small (min side >= WORK), else the RESAMPLE_SIZES most frequent pool
    sizes within RESAMPLE_SCALES and RESAMPLE_ASPECT of it, other than its own."""
    h, w = shape
    if min(h, w) >= WORK:
        return []
    low, high = RESAMPLE_SCALES
    fits = [
        size
        for size in pool_sizes
        if size != (h, w)
        and low <= size[0] / h <= high
        and abs(size[1] / size[0] / (w / h) - 1) <= RESAMPLE_ASPECT
    ]
    return sorted(fits, key=lambda size: (-pool_sizes[size], size))[:RESAMPLE_SIZES]


def resampled_variants(gray: np.ndarray, sizes: list[tuple[int, int]]) -> list[int]:
    """pHashes of a decoded image resized to each of `sizes` by each RESAMPLERS entry: what
    a small excluded image is searched as besides its crop variants (`resample_sizes`)."""
    return sorted(
        {
            fingerprint(cv2.resize(gray, (w, h), interpolation=interp))[0]
            for h, w in sizes
            for interp in RESAMPLERS
        }
    )


def phash_pixels(thumb: np.ndarray) -> int:
    """pHash of a SIDE x SIDE float32 thumbnail."""
    low = cv2.dct(thumb)[:HASH_SIZE, :HASH_SIZE]
    bits = (low > np.median(low)).reshape(-1)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def verify(excluded: np.ndarray, pool: np.ndarray) -> float:
    """The best `match_score` of two decoded images over the ways a copy of a different size
    is made. First the larger resized (area) to the smaller's size: a downscaled copy has
    lost detail its original still has, which is not a difference. Then the excluded image
    resized to the pool image's size by each RESAMPLERS entry: nearest and area resampling
    shift edges by up to half a source pixel, unevenly, which averaging back does not undo
    (on 28 px images, about half of the 9/7 area upscales scored above MATCH_SCORE), while
    the same resampler reproduces the copy."""
    if pool.shape == excluded.shape:
        return match_score(canonical(excluded), canonical(pool))
    if pool.size < excluded.size:
        small = cv2.resize(excluded, pool.shape[::-1], interpolation=cv2.INTER_AREA)
        best = match_score(canonical(small), canonical(pool))
    else:
        small = cv2.resize(pool, excluded.shape[::-1], interpolation=cv2.INTER_AREA)
        best = match_score(canonical(excluded), canonical(small))
    pool_canon = canonical(pool)
    for interp in RESAMPLERS:
        if best <= MATCH_SCORE:
            break
        resampled = cv2.resize(excluded, pool.shape[::-1], interpolation=interp)
        best = min(best, match_score(canonical(resampled), pool_canon))
    return best


def match_score(excluded: np.ndarray, pool: np.ndarray) -> float:
    """How far two canonical images are from being the same picture: aligned by the least
    mean absolute difference over crops (each side cut by up to REACH steps from one image
    or the other, as a copy may be a crop of the original or the reverse; coordinate descent
    from the variants' crops), then the largest mean absolute difference (/255) of a BLOCK x
    BLOCK block. A copy differs by resampling and compression noise spread thinly over the
    image; two similar but distinct images differ a lot somewhere (a sleeve, a collar).
    inf when no start crop is within START_MAD: too far to be a copy."""

    @functools.cache  # most steps leave one image uncut: its thumbnail is shared
    def cropped(image: int, steps: tuple[int, ...]) -> np.ndarray:
        return box((excluded, pool)[image], *(s * STEP for s in steps))

    def pair(steps: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        return cropped(0, tuple(max(s, 0) for s in steps)), cropped(
            1, tuple(max(-s, 0) for s in steps)
        )

    def mad(steps: tuple[int, ...]) -> float:
        return float(cv2.norm(*pair(steps), cv2.NORM_L1)) / (SIDE * SIDE * 255)

    k = round(CROP / STEP)
    starts = {
        tuple(round(c / CROP) * k * sign for c in cut) for cut in VARIANT_BOXES for sign in (1, -1)
    }
    start_mads = {steps: mad(steps) for steps in starts}
    best = min(start_mads, key=start_mads.__getitem__)
    best_mad = start_mads[best]
    if best_mad > START_MAD:
        return math.inf
    improved = True
    while improved:
        improved = False
        for side in range(4):
            for move in (-1, 1):
                trial = list(best)
                trial[side] += move
                if abs(trial[side]) <= REACH and (value := mad(tuple(trial))) < best_mad:
                    best, best_mad, improved = tuple(trial), value, True
    diff = cv2.absdiff(*pair(best)).reshape(SIDE // BLOCK, BLOCK, SIDE // BLOCK, BLOCK)
    return float(diff.mean(axis=(1, 3)).max()) / 255


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
