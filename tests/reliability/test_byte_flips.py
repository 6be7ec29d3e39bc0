"""Random single-byte flips in arrow and hdf5 shards are always detected."""

from __future__ import annotations

import random
from collections import Counter

from offline_ssld.audit import verify_cache
from offline_ssld.cache.format import load_manifest
from offline_ssld.cache.reader import CacheReader
from offline_ssld.errors import CacheError
from tests.reliability.common import BYTE_FLIPS, CORRUPTION, dump_both_backends


def test_random_byte_flips_are_always_detected(project, rlog):
    """Flip one byte at a random offset of a random shard, many times, in arrow and hdf5."""
    config, tmp = project
    caches = dump_both_backends(config, tmp)
    rng = random.Random(1234)
    outcomes: Counter = Counter()
    parser: Counter = Counter()  # what the parser alone (no checksum) would have made of it
    missed: list[str] = []
    for trial in range(BYTE_FLIPS):
        backend = ("arrow", "hdf5")[trial % 2]
        cache = caches[backend]
        manifest = load_manifest(cache)
        number = rng.randrange(len(manifest.shards))
        shard = cache / manifest.shards[number].name
        original = shard.read_bytes()
        offset = rng.randrange(len(original))
        damaged = bytearray(original)
        damaged[offset] ^= rng.randrange(1, 256)
        shard.write_bytes(bytes(damaged))
        try:
            report = verify_cache(cache)
            named = [p for p in report.problems if p.startswith(f"{shard.name}: checksum mismatch")]
            if named and len(report.problems) == 1:
                outcomes[f"{backend}: verify names the shard"] += 1
            else:
                missed.append(f"{shard.name}@{offset}: {report.problems}")
                outcomes[f"{backend}: MISSED"] += 1
            try:
                CacheReader(cache).load_shard(number, verify=False)
                parser["parsed without error"] += 1
            except CacheError:
                parser["parser refuses it"] += 1
        finally:
            shard.write_bytes(original)
    assert all(verify_cache(c).ok for c in caches.values())
    rlog.record(
        CORRUPTION,
        "One byte flipped at a random offset of a random shard (verify)",
        outcomes,
        ok=not missed,
        goal="verify reports exactly the damaged shard (checksum mismatch)",
        notes=f"{BYTE_FLIPS - len(missed)} of {BYTE_FLIPS} flips detected, half arrow, half "
        f"hdf5 (seed 1234). Without the checksum, the shard parser alone would have refused "
        f"{parser['parser refuses it']} and parsed {parser['parsed without error']} (a flip in "
        "the payload is valid data): the checksum is what catches them."
        + (f" Missed: {missed[:5]}" if missed else ""),
    )
    assert not missed, missed[:10]
