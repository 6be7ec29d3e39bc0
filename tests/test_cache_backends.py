"""offline_ssld/cache/backends.py: every column of a real shard (as dump-teacher builds it)
comes back from arrow and hdf5 with the same values, dtype and shape; a file that is not a
shard becomes a CacheError naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from offline_ssld.cache.backends import BACKEND_SUFFIX, read_columns, write_columns
from offline_ssld.errors import CacheError
from tests.helpers import plan_cache, shard_of


@pytest.mark.parametrize("backend", sorted(BACKEND_SUFFIX))
def test_write_read_round_trip(project, tmp_path, backend):
    config, _ = project
    columns, _ = shard_of(plan_cache(config, "Offline.codec=topk"), 0)
    path = tmp_path / f"shard{BACKEND_SUFFIX[backend]}"
    write_columns(backend, path, columns, "0" * 32)
    back = read_columns(backend, path, len(columns["key"]))
    assert sorted(back) == sorted(columns)
    for name, values in columns.items():
        assert back[name].dtype == values.dtype or values.dtype == object, name
        assert back[name].shape == values.shape, name
        assert np.array_equal(back[name], values), name


def test_backends_agree(project, tmp_path):
    config, _ = project
    columns, _ = shard_of(plan_cache(config), 1)
    read = {}
    for backend, suffix in BACKEND_SUFFIX.items():
        write_columns(backend, tmp_path / f"shard{suffix}", columns, "0" * 32)
        read[backend] = read_columns(backend, tmp_path / f"shard{suffix}", len(columns["key"]))
    arrow, hdf5 = read["arrow"], read["hdf5"]
    assert all(np.array_equal(arrow[name], hdf5[name]) for name in columns)


@pytest.mark.parametrize("backend", sorted(BACKEND_SUFFIX))
def test_garbage_and_missing_files_are_cache_errors(tmp_path, backend):
    path = tmp_path / f"shard{BACKEND_SUFFIX[backend]}"
    with pytest.raises(CacheError, match="No such file"):
        read_columns(backend, path, 1)
    path.write_bytes(b"not a shard at all" * 10)
    with pytest.raises(CacheError, match=str(path)):
        read_columns(backend, path, 1)


def test_registry_is_the_one_list_of_backends():
    """Names, suffixes, the Offline.format check and shard names all come from BACKENDS."""
    from offline_ssld.cache.backends import BACKENDS
    from offline_ssld.cache.format import shard_name
    from offline_ssld.config.offline import BACKEND_NAMES, offline_spec
    from offline_ssld.errors import ConfigError

    assert tuple(BACKENDS) == BACKEND_NAMES  # config's plain list of names, exactly these
    assert len({b.suffix for b in BACKENDS.values()}) == len(BACKENDS)
    for name, entry in BACKENDS.items():
        assert entry.name == name and entry.description
        assert shard_name(3, name) == f"shard-00003{entry.suffix}"
        assert offline_spec({"Offline": {"format": name}}).backend == name
    with pytest.raises(
        ConfigError, match=f"Offline.format: 'zip'; supported: {', '.join(BACKENDS)}"
    ):
        offline_spec({"Offline": {"format": "zip"}})


def _checksum_in_child(path: str) -> str:
    import mmap as _mmap

    from offline_ssld.cache.backends import MappedShard

    with open(path, "rb") as fh:
        memory = _mmap.mmap(fh.fileno(), 0, access=_mmap.ACCESS_READ)
    return MappedShard(Path(path), memory, [], {}, {}, None).checksum()


def test_checksum_in_a_forked_worker_after_the_parent_hashed(tmp_path):
    """BLAKE3's thread pool does not survive fork: a loader worker forked after the parent
    hashed multithreaded once waited forever in checksum(). Workers hash single-threaded."""
    import multiprocessing

    import blake3

    data = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "big"
    path.write_bytes(data)
    expected = blake3.blake3(data).hexdigest()
    assert _checksum_in_child(str(path)) == expected  # the parent's pool is now running
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_checksum_in_child, (str(path),)).get(timeout=120) == expected
