"""offline_ssld/cache/reader.py: a (content key, view) finds the row dump-teacher stored for
that image and view, in either backend; incomplete caches and swapped shards are refused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from offline_ssld.cache.backends import BACKEND_SUFFIX
from offline_ssld.cache.reader import CacheReader
from offline_ssld.errors import CacheError
from tests.helpers import fake_logits, fake_params, plan_cache, write_cache


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("backend", sorted(BACKEND_SUFFIX))
def test_lookup_returns_the_row_of_that_key_and_view(project, backend):
    config, tmp = project
    plan = plan_cache(config, f"Offline.format={backend}")
    write_cache(plan, tmp / "cache")
    reader = CacheReader(tmp / "cache")
    manifest = reader.manifest
    assert len(manifest.shards) > 1
    for image in (0, manifest.images_per_shard + 1, manifest.num_images - 1):
        for view in range(manifest.views):
            item = np.array([image * manifest.views + view])
            hit = reader.lookup(plan.keys[image])
            assert hit is not None
            params, payload = reader.read_view(*hit, view)
            assert np.array_equal(params, fake_params(manifest, item)[0])
            target = reader.decode([payload])
            assert np.allclose(target, softmax(fake_logits(manifest, item)), atol=2e-3)
    assert reader.lookup(b"\0" * 16) is None


def test_incomplete_cache_is_refused_unless_asked(project):
    config, tmp = project
    write_cache(plan_cache(config), tmp / "cache", shards=[0])
    with pytest.raises(CacheError, match="incomplete"):
        CacheReader(tmp / "cache")
    reader = CacheReader(tmp / "cache", require_complete=False)
    plan_keys = plan_cache(config).keys
    found = [k for k in plan_keys if reader.lookup(k) is not None]
    assert len(found) == reader.manifest.images_per_shard


def test_swapped_shard_is_refused(project):
    config, tmp = project
    write_cache(plan_cache(config), tmp / "cache")
    reader = CacheReader(tmp / "cache")
    first, second = (tmp / "cache" / s.name for s in reader.manifest.shards[:2])
    shutil.copyfile(second, first)
    with pytest.raises(CacheError, match="checksum mismatch"):
        reader.load_shard(0)


def test_teacher_check_needs_the_users_config(project):
    """verify --teacher-check runs the config's teacher on images under the config's
    image_root; without a config it refuses rather than use paths the manifest records."""
    from offline_ssld.errors import ConfigError
    from offline_ssld.tools.audit import verify_cache

    config, tmp = project
    write_cache(plan_cache(config), tmp / "cache")
    assert verify_cache(tmp / "cache").ok
    with pytest.raises(ConfigError, match=r"needs the teacher's config \(-c FILE\)"):
        verify_cache(tmp / "cache", teacher_check=1)
