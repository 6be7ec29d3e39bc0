"""Random damage in every file of a cache is always caught: byte flips in shards (the original
campaign) and single-bit flips anywhere in any file, manifest.json included."""

from __future__ import annotations

import random
from collections import Counter

from offline_ssld.cache.format import MANIFEST, VERIFIED, load_manifest
from offline_ssld.cache.reader import CacheReader
from offline_ssld.config import loading, specs
from offline_ssld.data.transforms import Pipeline, build_ops
from offline_ssld.errors import CacheError
from offline_ssld.tools.audit import verify_cache
from tests.helpers import open_for_training
from tests.reliability.common import (
    BIT_FLIPS,
    BYTE_FLIPS,
    CORRUPTION,
    dump_both_backends,
    train_refusal,
)

TRAIN_CLI_SAMPLE = 2  # per backend and file kind: the whole train-student command, as users run it


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


def _manifest_reason(error: str) -> str:
    """How a refused manifest was caught, from its one-line error."""
    for text, reason in (
        ("does not match its checksum", "a field's checksum"),
        ("is not in canonical form", "canonical form"),
        ("not valid JSON", "not JSON / not UTF-8"),
        ("has no checksum", "a renamed field"),
        ("is missing", "a renamed field"),
        ("format_version", "format_version"),
        ("'integrity'", "integrity itself"),
    ):
        if text in error:
            return reason
    return "other check"


def _verify_error(cache, name: str) -> str | None:
    """The one line by which verify refuses the damaged file `name`, or None if it does not."""
    try:
        report = verify_cache(cache)
    except CacheError as exc:
        line = str(exc)
        return line if name in line and "\n" not in line else None
    named = [p for p in report.problems if p.startswith(f"{name}:")]
    return named[0] if named else None


def _train_error(cfg: dict, pipeline: Pipeline, cache, name: str) -> str | None:
    """The error train-student's pre-batch path (open, match, verify every shard) refuses the
    damaged file `name` with, or None if it accepts the cache."""
    try:
        open_for_training(cfg)
    except CacheError as exc:
        line = str(exc)
        return line if name in line and "\n" not in line else f"NOT NAMED: {line}"
    return None


def test_random_bit_flips_in_every_file_are_caught(project, monkeypatch, rlog):
    """One random bit of one file (manifest.json on every other trial, else a random shard) is
    flipped; verify and train-student (up to its first batch) must both refuse the cache with
    one line naming that file. A sample of flips runs the whole train-student command too."""
    config, tmp = project
    caches = dump_both_backends(config, tmp)
    rng = random.Random(2024)
    outcomes: Counter = Counter()
    reasons: Counter = Counter()
    missed: list[str] = []
    cli_runs: Counter = Counter()
    configs = {}
    for backend, cache in caches.items():
        cfg = loading.load_config([str(config)], [f"Offline.cache_dir={cache}"])
        ops = specs.data_spec(cfg, "Train").transform_ops
        configs[backend] = (cfg, Pipeline(build_ops(ops, "ops")))
    for trial in range(BIT_FLIPS):
        backend = ("arrow", "hdf5")[trial % 2]
        cache = caches[backend]
        shards = sorted(p.name for p in cache.iterdir() if p.name.startswith("shard-"))
        name = MANIFEST if trial % 4 < 2 else rng.choice(shards)
        kind = "manifest.json" if name == MANIFEST else f"{backend} shard"
        path = cache / name
        original = path.read_bytes()
        offset, bit = rng.randrange(len(original)), rng.randrange(8)
        damaged = bytearray(original)
        damaged[offset] ^= 1 << bit
        path.write_bytes(bytes(damaged))
        try:
            verify_line = _verify_error(cache, name)
            train_line = _train_error(*configs[backend], cache, name)
            if cli_runs[kind] < TRAIN_CLI_SAMPLE:
                cli_runs[kind] += 1
                line, started = train_refusal(config, cache, monkeypatch)
                if line is None or started or name not in line:
                    train_line = f"NOT REFUSED BY THE COMMAND: {line}"
        finally:
            path.write_bytes(original)
        caught = verify_line is not None and train_line is not None and "NOT" not in train_line[:30]
        outcomes[f"{kind}: {'caught by verify and train-student' if caught else 'MISSED'}"] += 1
        if not caught:
            missed.append(f"{name}@{offset}.{bit}: verify {verify_line!r}, train {train_line!r}")
        elif name == MANIFEST:
            reasons[_manifest_reason(verify_line or "")] += 1
    assert all(verify_cache(c).ok for c in caches.values())
    rlog.record(
        CORRUPTION,
        "One random bit flipped in any file of a cache, manifest.json included "
        "(verify and train-student)",
        outcomes,
        ok=not missed,
        goal="verify and train-student (before its first batch) each refuse the cache with "
        "one line naming the damaged file",
        notes=f"{BIT_FLIPS - len(missed)} of {BIT_FLIPS} single-bit flips caught (seed 2024; "
        "half in manifest.json, half in a random shard; arrow and hdf5 caches of 24 images x "
        "3 views in 4 shards). train-student's path up to its first batch "
        "(targets.open_verified_cache) ran for every flip, the whole command for "
        f"{sum(cli_runs.values())} of them. Manifest flips were caught by: "
        + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
        + "."
        + (f" Missed: {missed[:5]}" if missed else ""),
    )
    assert not missed, missed[:10]


def test_flipped_verified_record_is_only_a_hint(project, rlog):
    """verified.json (written by train-student) only lets a start-up skip hashing an unchanged
    shard: a flip in it must never hide a damaged shard, nor refuse a whole cache."""
    config, tmp = project
    cache = dump_both_backends(config, tmp)["arrow"]
    cfg = loading.load_config([str(config)], [f"Offline.cache_dir={cache}"])
    pipeline = Pipeline(build_ops(specs.data_spec(cfg, "Train").transform_ops, "ops"))
    assert _train_error(cfg, pipeline, cache, VERIFIED) is None  # writes verified.json
    record = (cache / VERIFIED).read_bytes()
    shard = cache / sorted(p.name for p in cache.iterdir() if p.name.startswith("shard-"))[0]
    clean = shard.read_bytes()
    rng = random.Random(7)
    outcomes: Counter = Counter()
    trials = max(4, BIT_FLIPS // 20)
    for _ in range(trials):
        damaged = bytearray(record)
        damaged[rng.randrange(len(record))] ^= 1 << rng.randrange(8)
        (cache / VERIFIED).write_bytes(bytes(damaged))
        accepted = _train_error(cfg, pipeline, cache, VERIFIED) is None
        (cache / VERIFIED).write_bytes(bytes(damaged))  # the open above rewrote it
        broken = bytearray(clean)
        broken[rng.randrange(len(clean))] ^= 1 << rng.randrange(8)
        shard.write_bytes(bytes(broken))
        refused = _train_error(cfg, pipeline, cache, shard.name) is not None
        shard.write_bytes(clean)
        ok = accepted and refused and verify_cache(cache).ok
        outcomes["clean cache accepted, damaged shard refused" if ok else "FAILED"] += 1
    rlog.record(
        CORRUPTION,
        "One random bit flipped in verified.json (train-student's record of verified shards)",
        outcomes,
        ok=outcomes["FAILED"] == 0,
        goal="the clean cache still opens (the record is a hint, not trusted) and a shard "
        "damaged afterwards is still refused",
        notes="verify ignores verified.json (it hashes every shard); the record keys each "
        "shard's checksum to its file state (size, mtime, ctime, inode), which any write "
        "changes.",
    )
    assert outcomes["FAILED"] == 0
