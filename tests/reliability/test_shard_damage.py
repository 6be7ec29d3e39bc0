"""Damaged shards (flipped, truncated, deleted, empty, swapped, extra) are named by verify
and refused by train-student."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter

from offline_ssld.cache.format import MANIFEST, load_manifest
from offline_ssld.tools.audit import verify_cache
from tests.helpers import signed_manifest
from tests.reliability.common import CORRUPTION, TRUNCATIONS, dump_both_backends, train_refusal


def test_damaged_shards_are_named_and_refused_by_train(project, monkeypatch, rlog):
    """Byte flip, truncation, deletion, an empty file, two shards swapped, an unlisted extra
    shard: verify names the shard; train-student refuses before its first batch."""
    config, tmp = project
    caches = dump_both_backends(config, tmp)
    rng = random.Random(99)
    outcomes: Counter = Counter()
    failures: list[str] = []
    trials: list[tuple[str, str]] = [("flip", b) for b in caches]
    trials += [("truncate", ("arrow", "hdf5")[i % 2]) for i in range(TRUNCATIONS)]
    trials += [(kind, b) for kind in ("delete", "empty", "swap", "extra") for b in caches]
    for kind, backend in trials:
        cache = tmp / f"damaged_{backend}"
        shutil.rmtree(cache, ignore_errors=True)
        shutil.copytree(caches[backend], cache)
        names = [s.name for s in load_manifest(cache).shards]
        victim = rng.choice(names)
        path = cache / victim
        data = path.read_bytes()
        expect = [victim]
        refuses_train = True
        if kind == "flip":
            damaged = bytearray(data)
            damaged[rng.randrange(len(data))] ^= 0x55
            path.write_bytes(bytes(damaged))
        elif kind == "truncate":
            path.write_bytes(data[: rng.randrange(len(data))])
        elif kind == "delete":
            path.unlink()
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "swap":
            other = names[(names.index(victim) + 1) % len(names)]
            path.write_bytes((cache / other).read_bytes())
            (cache / other).write_bytes(data)
            expect = [victim, other]
        else:  # a shard file the manifest does not list
            manifest = json.loads((cache / MANIFEST).read_text())
            manifest["shards"] = [s for s in manifest["shards"] if s["name"] != victim]
            manifest["complete"] = False
            (cache / MANIFEST).write_bytes(signed_manifest(manifest))  # consistent, not damaged
            refuses_train = True  # an incomplete cache
        report = verify_cache(cache)
        problems = []
        for name in expect:
            if not any(p.startswith(f"{name}:") for p in report.problems):
                problems.append(f"verify does not name {name}: {report.problems}")
        line, started = train_refusal(config, cache, monkeypatch)
        if refuses_train and (line is None or started):
            problems.append(f"train-student did not refuse before its first batch: {line}")
        elif refuses_train and kind != "extra" and not any(name in line for name in expect):
            problems.append(f"train-student's error does not name {expect}: {line}")
        outcomes[f"{kind} ({backend})" + ("" if not problems else ": FAILED")] += 1
        if problems:
            failures.append(f"{kind} {backend} {victim}: {problems}")
    rlog.record(
        CORRUPTION,
        "Damaged shards: byte flip, truncation at a random length, deletion, empty file, two "
        "shards swapped, unlisted extra shard",
        outcomes,
        ok=not failures,
        goal="verify names each damaged shard; train-student exits 2 with one line naming it "
        "before its first batch",
        notes="train-student verifies every shard's checksum while building its index, before "
        "the model and loaders start." + (f" Failures: {failures}" if failures else ""),
    )
    assert not failures, failures
