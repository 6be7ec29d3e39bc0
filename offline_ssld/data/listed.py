"""Which cache rows a training list's images are, found without a hashing pass.

train-student accepts any list whose images are all in the cache: a subset, in any order.
Finding each image's content key by reading and hashing every file before the first batch
would cost a pass over the whole dataset at every start. Instead the key comes from the
cache itself: each row stores the relative path it was dumped from, so an image listed under
that path gets that row's key, read from the path and key columns (never an image). Only an
image whose path the cache does not know (renamed, a duplicate of another file's bytes, or
not in the cache at all) is read and hashed here; the first one the cache lacks is reported
with its list line. A path's key is a claim the loader checks: it hashes the bytes it reads
anyway and refuses an image whose key differs (changed since the dump), naming it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from offline_ssld.cache.fingerprint import dataset_fingerprint
from offline_ssld.cache.reader import CacheReader, path_hash
from offline_ssld.data.views import ImageSource
from offline_ssld.errors import CacheError
from offline_ssld.io import KEY_BYTES, content_key


class ListedImages:
    """The content key and, per cache, the row (shard number, image) of every list image.

    A `ListedKeys` for `fingerprint.first_difference`: the work is done on the first call of
    `first_missing`, after the caller compared the exact identity fields."""

    def __init__(self, source: ImageSource, readers: Sequence[CacheReader]) -> None:
        self.source, self.readers = source, list(readers)
        count = len(source.samples)
        self.keys = np.zeros((count, KEY_BYTES), np.uint8)
        self.rows = np.zeros((len(self.readers), count, 2), np.int64)
        self.hashed = 0  # images read here: their path was not in the first cache
        self._missing: str | None = None
        self._resolved = False

    def first_missing(self) -> str | None:
        if not self._resolved:
            self._missing = self._resolve()
            self._resolved = True
        return self._missing

    def _resolve(self) -> str | None:
        first = self.readers[0]
        hashes, images = first.path_index()
        samples = self.source.samples
        wanted = np.array([path_hash(s.path) for s in samples], np.uint64)
        found = np.minimum(np.searchsorted(hashes, wanted), max(len(hashes) - 1, 0))
        known = hashes[found] == wanted if len(hashes) else np.zeros(len(samples), bool)
        for i in range(len(samples)):
            if known[i]:
                number, image = first.locate(int(images[found[i]]))
                key = first.key_at(number, image)
                self.rows[0, i] = number, image
                others = enumerate(self.readers[1:], start=1)
            else:  # a path the cache does not know: the bytes decide
                key = content_key(self.source.read(i))
                self.hashed += 1
                others = enumerate(self.readers)
            for m, reader in others:
                hit = reader.lookup(key)
                if hit is None:
                    member = f" of {reader.cache_dir}" if len(self.readers) > 1 else ""
                    return f"{self.source.where(i)}{member}"
                self.rows[m, i] = hit
            self.keys[i] = np.frombuffer(key, np.uint8)
        return None

    def check(self, index: int, data: bytes) -> None:
        """Refuse the bytes read for list image `index` unless they are the cached image."""
        key = content_key(data)
        expected = self.keys[index].tobytes()
        if key != expected:
            raise CacheError(
                f"{self.source.where(index)}: image changed since the dump (content key "
                f"{key.hex()[:16]}, the cache's row for this path has {expected.hex()[:16]})"
            )

    def provenance(self) -> dict:
        """Which list trained: its path, its size and the fingerprint of its images' keys."""
        if self.first_missing() is not None:
            raise AssertionError("provenance of a list the cache does not hold")
        return {
            "path": str(self.source.list_path),
            "images": len(self.source.samples),
            "keys": dataset_fingerprint(row.tobytes() for row in self.keys),
        }
