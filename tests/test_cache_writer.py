"""offline_ssld/cache/writer.py: shards appear only whole (a failed write leaves neither the
shard nor a temporary file, and the manifest does not list it), a second run resumes from
what the first committed, and a directory holding another cache is refused."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from offline_ssld.cache import writer as cache_writer
from offline_ssld.cache.format import MANIFEST, load_manifest
from offline_ssld.cache.reader import CacheReader
from offline_ssld.cache.writer import write_shard
from offline_ssld.errors import CacheError
from tests.helpers import plan_cache, shard_of, write_cache


def all_rows(cache) -> list[dict[str, np.ndarray]]:
    reader = CacheReader(cache)
    return [reader.load_shard(n) for n in range(len(reader.manifest.shards))]


def same_rows(a, b) -> bool:
    rows_a, rows_b = all_rows(a), all_rows(b)
    return len(rows_a) == len(rows_b) and all(
        sorted(x) == sorted(y) and all(np.array_equal(x[c], y[c]) for c in x)
        for x, y in zip(rows_a, rows_b, strict=True)
    )


def test_failed_shard_write_leaves_nothing(project, monkeypatch):
    config, tmp = project
    cache = tmp / "cache"
    real_write = cache_writer.write_columns

    def write_half_then_fail(backend, path, columns, dump_id):
        real_write(backend, path, columns, dump_id)
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache_writer, "write_columns", write_half_then_fail)
    with pytest.raises(CacheError, match="free space"):
        write_cache(plan_cache(config), cache, shards=[0])
    assert sorted(p.name for p in cache.iterdir()) == [MANIFEST]
    assert load_manifest(cache).shards == []


def test_resume_continues_from_committed_shards(project):
    config, tmp = project
    write_cache(plan_cache(config), tmp / "whole")
    first = write_cache(plan_cache(config), tmp / "resumed", shards=[0, 2])
    assert not first.complete and len(first.shards) == 2
    checksums = {s.name: s.checksum for s in first.shards}
    resumed = cache_writer.open_cache(tmp / "resumed", plan_cache(config).manifest)
    assert {s.name: s.checksum for s in resumed.shards} == checksums  # kept, not rewritten
    missing = [n for n in range(resumed.num_shards) if n not in (0, 2)]
    assert write_cache(plan_cache(config), tmp / "resumed", shards=missing).complete
    assert same_rows(tmp / "whole", tmp / "resumed")


def test_committed_but_unlisted_shard_is_adopted(project):
    """A run killed between a shard's rename and the manifest update loses no work."""
    config, tmp = project
    cache = tmp / "cache"
    plan = plan_cache(config)
    write_cache(plan, cache, shards=[])
    write_shard(cache, plan.manifest, 1, *shard_of(plan, 1))
    assert load_manifest(cache).shards == []
    plan = plan_cache(config)
    manifest = cache_writer.open_cache(cache, plan.manifest, keys=plan.keys)
    assert [s.name for s in manifest.shards] == [f.name for f in cache.glob("shard-*")]
    assert len(load_manifest(cache).shards) == 1


def test_other_cache_is_refused_unless_overwritten(project):
    config, tmp = project
    cache = tmp / "cache"
    write_cache(plan_cache(config), cache)
    other = plan_cache(config, "Offline.seed=7")
    with pytest.raises(CacheError, match="seed.*--overwrite"):
        cache_writer.open_cache(cache, other.manifest, keys=other.keys)
    manifest = cache_writer.open_cache(cache, other.manifest, overwrite=True, keys=other.keys)
    assert manifest.shards == [] and sorted(p.name for p in cache.iterdir()) == [MANIFEST]
