"""The near-duplicate search of `offline-ssld select` at scale: --pool pool hashes indexed,
--excluded excluded images searched, each as --variants hashes (select searches an excluded
image as its crop variants, near_duplicates.crop_variants), at Hamming distance --distance.

The hashes are synthetic, uniform random 64-bit values, plus --planted pool entries made
from a random variant of a random excluded image with up to --distance random bits flipped
(near copies). No image is decoded there: this measures the index (multi-index hashing),
not the pHash of images, whose cost is one read and decode per image. A candidate pair is
then verified on pixels (near_duplicates.verify) after a coarse-thumbnail gate; that cost is
measured separately on --verify-pairs generated 96x72 PNG pairs (decode both + verify) and
extrapolated to the candidate pairs found, labelled as an extrapolation. Uniform hashes
are the index's best case; real pHashes are skewed, so buckets are fuller. It records the
build and search seconds, the peak RSS of the process (before library versions are imported for the
machine record), that every planted copy is found, and a brute-force check of --check
random queries against the whole pool.

    python benchmarks/near_duplicates.py      # -> benchmarks/results/near_duplicates.json
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import click
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, reproduce_command  # noqa: E402
from offline_ssld.near_duplicates import (  # noqa: E402
    NEAR_DISTANCE,
    VARIANT_BOXES,
    HashIndex,
    decode_gray,
    popcount,
    verify,
)

DEFAULT_OUT = ROOT / "benchmarks/results/near_duplicates.json"


def random_hashes(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 2**64 - 1, count, dtype=np.uint64, endpoint=True)


def flip_bits(rng: np.random.Generator, hashes: np.ndarray, most: int) -> np.ndarray:
    """Each hash with 0..most distinct random bits flipped."""
    out = hashes.copy()
    for i in range(len(out)):
        bits = rng.choice(64, int(rng.integers(0, most + 1)), replace=False)
        out[i] ^= np.uint64(sum(1 << int(b) for b in bits))
    return out


def verify_seconds(rng: np.random.Generator, pairs: int) -> float:
    """Mean seconds to decode a generated image and a cropped, resized JPEG copy of it and
    verify the pair: the per-candidate cost on top of the index search."""
    encoded = []
    for _ in range(pairs):
        field = cv2.resize(rng.uniform(0, 255, (4, 5)).astype(np.float32), (96, 72))
        img = np.clip(field + rng.normal(0, 8, field.shape), 0, 255).astype(np.uint8)
        copy = cv2.resize(img[3:, :-4], (80, 60), interpolation=cv2.INTER_AREA)
        encoded.append(
            (
                cv2.imencode(".png", img)[1].tobytes(),
                cv2.imencode(".jpg", copy, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes(),
            )
        )
    start = time.perf_counter()
    for original, copy in encoded:
        verify(decode_gray(original), decode_gray(copy))
    return (time.perf_counter() - start) / pairs


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--pool", type=click.IntRange(min=1), default=1_000_000, show_default=True)
@click.option("--excluded", type=click.IntRange(min=1), default=50_000, show_default=True)
@click.option(
    "--variants", type=click.IntRange(min=1), default=len(VARIANT_BOXES), show_default=True
)
@click.option("--planted", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--distance", type=click.IntRange(0, 63), default=NEAR_DISTANCE, show_default=True)
@click.option("--check", type=click.IntRange(min=0), default=200, show_default=True)
@click.option("--verify-pairs", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True
)
def main(pool, excluded, variants, planted, distance, check, verify_pairs, seed, out) -> None:
    """Time the near-duplicate index: --pool hashes against --excluded x --variants queries.

    \b
    Example:
      python benchmarks/near_duplicates.py --pool 1000000 --excluded 50000
    """
    command = reproduce_command()
    load_before = os.getloadavg()
    rng = np.random.default_rng(seed)
    pool_hashes = random_hashes(rng, pool)
    queries = random_hashes(rng, excluded * variants)  # variant j of image i at i * variants + j
    planted = min(planted, pool)
    slots = rng.choice(pool, planted, replace=False)
    sources = rng.integers(0, excluded * variants, planted)
    pool_hashes[slots] = flip_bits(rng, queries[sources], distance)

    start = time.perf_counter()
    index = HashIndex(pool_hashes)
    built = time.perf_counter() - start
    start = time.perf_counter()
    q, i, d = index.search(queries, distance)
    searched = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    found = set(zip(q.tolist(), i.tolist(), strict=True))
    missed = sum((int(s), int(p)) not in found for s, p in zip(sources, slots, strict=True))
    flagged = np.unique(i)
    chosen = rng.choice(len(queries), min(check, len(queries)), replace=False)
    brute = 0
    for query in chosen:
        hits = np.flatnonzero(popcount(pool_hashes ^ queries[query]) <= distance)
        mine = np.sort(i[q == query])
        brute += int(not np.array_equal(hits, mine))
    per_pair = verify_seconds(rng, verify_pairs)
    tail = sum(math.comb(64, k) for k in range(distance + 1)) / 2.0**64
    result = {
        "pool": pool,
        "excluded": excluded,
        "variants": variants,
        "queries": len(queries),
        "distance": distance,
        "planted": planted,
        "planted_missed": missed,
        "build_seconds": built,
        "search_seconds": searched,
        "queries_per_second": len(queries) / searched,
        "pairs_within_distance": len(q),
        "pool_images_flagged": len(flagged),
        "pool_images_flagged_expected_unplanted": pool * (1 - (1 - tail) ** len(queries)),
        "verify_pairs_timed": verify_pairs,
        "verify_seconds_per_candidate": per_pair,
        "verify_seconds_extrapolated": per_pair * len(q),
        "brute_force_checked_queries": len(chosen),
        "brute_force_mismatches": brute,
        "peak_rss_bytes": peak_rss,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "note": "synthetic uniform random 64-bit hashes with planted near copies; "
        "the machine was shared (see load averages); verify_seconds_extrapolated is "
        "verify_seconds_per_candidate (timed on generated image pairs, one thread) times "
        "pairs_within_distance, an estimate, not a run",
        "command": command,
        "machine": machine_info(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    click.echo(
        f"{pool} pool x {len(queries)} queries at distance {distance}: build {built:.2f} s, "
        f"search {searched:.2f} s, peak RSS {peak_rss / 2**20:.0f} MiB; planted missed "
        f"{missed}/{planted}; brute-force mismatches {brute}/{len(chosen)}; verify "
        f"{per_pair * 1e3:.2f} ms per candidate -> {out}"
    )


if __name__ == "__main__":
    main()
