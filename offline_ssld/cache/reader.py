"""Reading a cache: validate the manifest, verify shard checksums, find rows by content key.

Shards are read whole (one read per column) and kept in a small LRU, because a shard holds
whole images and training touches rows at random: per-row file access is slow in HDF5 and
buys nothing in Arrow. Every shard is checked against its manifest checksum before its bytes
are parsed, so a damaged or swapped shard is refused, never silently used.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from offline_ssld.cache.backends import read_columns
from offline_ssld.cache.codecs import Codec, codec_from_settings
from offline_ssld.cache.format import Manifest, file_checksum, load_manifest
from offline_ssld.errors import CacheError

BASE_COLUMNS = {"key": ("uint8", 16), "label": ("int32", 1), "view": ("int32", 1)}


class CacheReader:
    """Random access to a cache's rows by (content key, view)."""

    def __init__(
        self, cache_dir: str | Path, require_complete: bool = True, max_shards_in_memory: int = 8
    ):
        self.cache_dir = Path(cache_dir)
        self.manifest: Manifest = load_manifest(self.cache_dir)
        if require_complete and not self.manifest.complete:
            raise CacheError(
                f"{self.cache_dir}: cache is incomplete ({len(self.manifest.shards)} of "
                f"{self.manifest.num_shards} shards); run the same dump-teacher command to resume"
            )
        try:
            self.codec: Codec = codec_from_settings(self.manifest.codec)
        except ValueError as exc:
            raise CacheError(f"{self.cache_dir}/manifest.json: field 'codec': {exc}") from None
        self._lru: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._capacity = max(1, max_shards_in_memory)
        self._index: dict[bytes, tuple[int, int]] | None = None

    @property
    def views(self) -> int:
        return self.manifest.views

    def expected_columns(self) -> dict[str, tuple[str, int]]:
        cols = dict(BASE_COLUMNS)
        cols["params"] = ("int32", len(self.manifest.param_names))
        for col in self.codec.columns():
            cols[col.name] = (col.dtype, col.width)
        return cols

    def load_shard(self, number: int, verify: bool = True) -> dict[str, np.ndarray]:
        """All columns of shard `number` (position in the manifest), checksum-verified."""
        if number in self._lru:
            self._lru.move_to_end(number)
            return self._lru[number]
        info = self.manifest.shards[number]
        path = self.cache_dir / info.name
        if not path.exists():
            raise CacheError(f"{path}: shard file is missing")
        if verify and file_checksum(path) != info.checksum:
            raise CacheError(f"{path}: checksum mismatch: the shard is damaged or was replaced")
        columns = read_columns(self.manifest.backend, path)
        self._validate(path, columns, info.rows)
        self._lru[number] = columns
        if len(self._lru) > self._capacity:
            self._lru.popitem(last=False)
        return columns

    def _validate(self, path: Path, columns: dict[str, np.ndarray], rows: int) -> None:
        expected = self.expected_columns()
        for name, (dtype, width) in expected.items():
            if name not in columns:
                raise CacheError(f"{path}: column '{name}' is missing")
            col = columns[name]
            if col.dtype != np.dtype(dtype) or col.shape != (rows, width):
                raise CacheError(
                    f"{path}: column '{name}' is {col.dtype}{list(col.shape)}, "
                    f"expected {dtype}[{rows}, {width}]"
                )
        if "path" not in columns or len(columns["path"]) != rows:
            raise CacheError(f"{path}: column 'path' is missing or has the wrong length")
        views = columns["view"][:, 0]
        if not np.array_equal(
            views, np.tile(np.arange(self.views, dtype=np.int32), rows // self.views)
        ):
            raise CacheError(f"{path}: column 'view' is not in image-major view order")

    def index(self) -> dict[bytes, tuple[int, int]]:
        """content key -> (shard number, row of view 0); views follow in order."""
        if self._index is None:
            index: dict[bytes, tuple[int, int]] = {}
            for number in range(len(self.manifest.shards)):
                keys = self.load_shard(number)["key"]
                for row in range(0, len(keys), self.views):
                    index[keys[row].tobytes()] = (number, row)
            self._index = index
        return self._index

    def lookup(self, key: bytes, view: int) -> tuple[int, int] | None:
        hit = self.index().get(key)
        if hit is None:
            return None
        return hit[0], hit[1] + view

    def read_row(self, number: int, row: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(view params, codec payload as 1-row arrays) of one stored row."""
        shard = self.load_shard(number)
        payload = {c.name: shard[c.name][row : row + 1] for c in self.codec.columns()}
        return shard["params"][row], payload
