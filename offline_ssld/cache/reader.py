"""Reading a cache: validate the manifest, map shards, find views by content key.

Random access costs a view, not a shard: each shard file is memory-mapped once per process
(numeric columns are zero-copy views, see `backends.map_shard`) and a read touches only the
pages of the view it reads. Every shard is checked against its manifest checksum before its
first view is used in a process (hashing the mapped bytes themselves), so a damaged or
swapped shard is refused, never silently used, and never hashed twice.

The index is two sorted numpy arrays built from the shards' key columns (16 bytes per image
read at start-up, nothing else): the first 8 bytes of every content key and the image each
belongs to, 12 bytes per image. A lookup is a binary search, confirmed against the full
16-byte key in the shard.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import blake3
import numpy as np

from offline_ssld.cache.backends import MappedShard, map_shard
from offline_ssld.cache.codecs import Codec, codec_from_settings
from offline_ssld.cache.fingerprint import transforms_fingerprint
from offline_ssld.cache.format import (
    MANIFEST,
    STRING_COLUMNS,
    VERIFIED,
    ColumnSpec,
    Manifest,
    cache_file,
    join_path,
    load_manifest,
    numeric_columns,
    param_column,
    write_json_atomic,
)
from offline_ssld.errors import CacheError, OfflineSSLDError
from offline_ssld.io import KEY_BYTES, read_regular

MAX_VERIFIED_BYTES = 16 << 20  # verified.json: about 150 bytes per shard


def check_stored_specs(manifest: Manifest, codec: Codec, where: str) -> None:
    """Re-derive what the manifest's stored specs mean and compare it with the fingerprints
    and fields stored beside them: the transform ops must hash to `fingerprints.transforms`
    and give `param_names` / `param_ranges`; the codec settings must be canonical. So an edit
    that keeps the manifest's own checksums consistent still cannot change a cache's meaning
    (the teacher is checked in `load_manifest`)."""
    from offline_ssld.data.transforms import Pipeline, build_ops

    if codec.settings() != manifest.codec:
        raise CacheError(f"{where}: field 'codec' is not the canonical settings of its codec")
    try:
        pipeline = Pipeline(build_ops(manifest.source["transform_ops"], "source.transform_ops"))
    except OfflineSSLDError as exc:
        raise CacheError(f"{where}: field 'source.transform_ops' does not build ({exc})") from None
    if transforms_fingerprint(pipeline) != manifest.fingerprints["transforms"]:
        raise CacheError(
            f"{where}: field 'source.transform_ops' does not match 'fingerprints.transforms' "
            "(the manifest was edited, or this offline-ssld replays these ops differently)"
        )
    if list(pipeline.param_names) != manifest.param_names:
        raise CacheError(f"{where}: field 'param_names' is not what 'source.transform_ops' gives")
    if [list(r) for r in pipeline.param_ranges] != manifest.param_ranges:
        raise CacheError(f"{where}: field 'param_ranges' is not what 'source.transform_ops' gives")


def key_prefixes(keys: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each 16-byte key as a big-endian uint64 (sorts like the bytes)."""
    return np.ascontiguousarray(keys[:, :8]).view(">u8").reshape(-1).astype(np.uint64)


def path_hash(path: str) -> int:
    """A relative image path as 64 bits, for `CacheReader.path_index`."""
    return int.from_bytes(blake3.blake3(path.encode("utf-8")).digest(length=8), "big")


def check_layout(shard: MappedShard, columns: list[ColumnSpec], views: int, images: int) -> None:
    """Refuse a shard whose columns are not exactly those of its manifest (names the column)."""
    path = shard.path
    for col in columns:
        values = shard.numeric.get(col.name)
        if values is None:
            raise CacheError(f"{path}: column '{col.name}' is missing")
        shape = (images, col.stored_width(views))
        if values.dtype != col.dtype or values.shape != shape:
            raise CacheError(
                f"{path}: column '{col.name}' is {values.dtype}{list(values.shape)}, "
                f"expected {col.dtype}{list(shape)}"
            )
    for name in STRING_COLUMNS:
        if name not in shard.names or shard.string_length(name) != images:
            raise CacheError(f"{path}: column '{name}' is missing or has the wrong length")
    extra = sorted(shard.names - {c.name for c in columns} - set(STRING_COLUMNS))
    if extra:
        raise CacheError(f"{path}: unexpected column '{extra[0]}'")


class CacheReader:
    """Random access to a cache's views by (content key, view)."""

    def __init__(self, cache_dir: str | Path, require_complete: bool = True):
        self.cache_dir = Path(cache_dir)
        self.manifest: Manifest = load_manifest(self.cache_dir)
        if require_complete and not self.manifest.usable:
            raise CacheError(
                f"{self.cache_dir}: cache is incomplete ({len(self.manifest.shards)} of "
                f"{self.manifest.num_shards} shards); run the same dump-teacher command to resume"
            )
        where = f"{self.cache_dir / MANIFEST}"
        try:
            self.codec: Codec = codec_from_settings(self.manifest.codec)
        except ValueError as exc:
            raise CacheError(f"{where}: field 'codec': {exc}") from None
        check_stored_specs(self.manifest, self.codec, where)
        self.columns: list[ColumnSpec] = numeric_columns(self.manifest, self.codec)
        self._params = [param_column(n) for n in self.manifest.param_names]
        self._payload = [(c.name, c.width) for c in self.codec.columns()]
        self._mapped: dict[int, MappedShard] = {}
        self._verified: set[int] = set()  # inherited by forked workers: the same mapping
        self._starts = np.cumsum([0] + [s.images for s in self.manifest.shards], dtype=np.int64)
        self._prefix: np.ndarray | None = None
        self._image: np.ndarray | None = None
        self._paths: dict[int, list[str]] = {}  # decoded on first use (batch-op partners)

    @property
    def views(self) -> int:
        return self.manifest.views

    def shard(self, number: int, verify: bool = True) -> MappedShard:
        """Shard `number` (position in the manifest), mapped once; checksummed once per
        process before its first verified use."""
        mapped = self._mapped.get(number)
        if mapped is not None and (not verify or number in self._verified):
            return mapped  # the per-view path: no file system call
        info = self.manifest.shards[number]
        path = self.cache_dir / info.name
        if mapped is None:
            if not path.exists():
                raise CacheError(f"{path}: shard file is missing")
            cache_file(self.cache_dir, info.name)  # no symlink out of the cache
            mapped = map_shard(self.manifest.backend, path, info.images, size=info.bytes)
            check_layout(mapped, self.columns, self.views, info.images)
            self._mapped[number] = mapped
        if verify and number not in self._verified:
            if mapped.checksum() != info.checksum:
                raise CacheError(f"{path}: checksum mismatch: the shard is damaged or was replaced")
            self._verified.add(number)
        return mapped

    def verify_all(self) -> None:
        """Make sure every shard matches its checksum before training starts: hash each one
        not verified in this process, unless `verified.json` shows that it was verified in
        full under its current file state (see format.py). Records what it hashed there when
        the directory is writable (a read-only cache is simply hashed at every start)."""
        record_path = self.cache_dir / VERIFIED
        try:  # a hint only: anything unreadable, odd or outside the cache means hash again
            raw = read_regular(
                cache_file(self.cache_dir, VERIFIED), VERIFIED, MAX_VERIFIED_BYTES, CacheError
            )
            record = json.loads(raw.decode("utf-8"))
            record = record if isinstance(record, dict) else {}
        except (CacheError, ValueError, RecursionError):
            record = {}
        fresh = 0
        for number, info in enumerate(self.manifest.shards):
            mapped = self.shard(number, verify=False)
            state = [info.checksum, *mapped.state]
            if number in self._verified:
                continue
            if record.get(info.name) == state:
                self._verified.add(number)
                continue
            self.shard(number)  # hashes the mapped bytes, refusing a mismatch
            record[info.name] = state
            fresh += 1
        if fresh:
            listed = {s.name for s in self.manifest.shards}
            record = {name: v for name, v in record.items() if name in listed}
            # A read-only cache is verified again next time; nothing else changes.
            with contextlib.suppress(OSError):
                write_json_atomic(record_path, record)

    def load_into_memory(self) -> None:
        """Copy every shard's numeric columns into memory (verified first): the reference
        `train-student --data-only --in-memory-reference` compares the mapped cache with."""
        self.verify_all()
        for number in range(len(self.manifest.shards)):
            mapped = self.shard(number)
            mapped.numeric = {name: np.array(v) for name, v in mapped.numeric.items()}

    def index(self) -> None:
        """Build the sorted key index from the key columns (no shard is read whole)."""
        if self._prefix is not None:
            return
        parts = [
            key_prefixes(self.shard(n, verify=False).numeric["key"])
            for n in range(len(self.manifest.shards))
        ]
        prefixes = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
        order = np.argsort(prefixes, kind="stable")
        self._prefix = prefixes[order]
        dtype = np.uint32 if len(order) < 2**32 else np.int64
        self._image = order.astype(dtype)

    def stored_keys(self, shards: int) -> list[bytes]:
        """The content keys of the first `shards` listed shards, in storage order."""
        return [
            row.tobytes()
            for n in range(shards)
            for row in self.shard(n, verify=False).numeric["key"]
        ]

    def path_index(self, shards: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(sorted path hashes, image numbers): the relative path each row of the first
        `shards` shards (default: all listed) was dumped from, as the first 8 bytes of its
        BLAKE3 (reads the path columns, never an image). A hash is only a hint: the key of
        the image read later, or the stored path, decides."""
        parts = []
        for n in range(len(self.manifest.shards) if shards is None else shards):
            shard = self.shard(n, verify=False)
            paths = zip(shard.strings("path_dir"), shard.strings("path_name"), strict=True)
            parts.append(np.array([path_hash(join_path(d, f)) for d, f in paths], np.uint64))
        hashes = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
        order = np.argsort(hashes, kind="stable")
        return hashes[order], order

    def locate(self, image: int) -> tuple[int, int]:
        """(shard number, image within the shard) of image number `image` (storage order)."""
        number = int(self._starts.searchsorted(image, side="right")) - 1
        return number, image - int(self._starts[number])

    @property
    def stored_images(self) -> int:
        """How many images the listed shards hold (image numbers are below it)."""
        return int(self._starts[-1])

    def path_at(self, number: int, image: int) -> str:
        """The relative path image `image` of shard `number` was dumped from."""
        paths = self._paths.get(number)
        if paths is None:
            shard = self.shard(number, verify=False)
            dirs, names = shard.strings("path_dir"), shard.strings("path_name")
            paths = [join_path(d, n) for d, n in zip(dirs, names, strict=True)]
            self._paths[number] = paths
        return paths[image]

    def key_at(self, number: int, image: int) -> bytes:
        return self.shard(number, verify=False).numeric["key"][image].tobytes()

    def lookup(self, key: bytes) -> tuple[int, int] | None:
        """(shard number, image within the shard) holding `key`, or None."""
        if self._prefix is None:
            self.index()
        prefixes, images = self._prefix, self._image
        assert prefixes is not None and images is not None  # index() built them
        if len(key) != KEY_BYTES:
            return None
        prefix = np.uint64(int.from_bytes(key[:8], "big"))
        position = int(prefixes.searchsorted(prefix))
        while position < len(prefixes) and prefixes[position] == prefix:
            number, local = self.locate(int(images[position]))
            if self.key_at(number, local) == key:
                return number, local
            position += 1
        return None

    def read_view(self, number: int, image: int, view: int) -> tuple[np.ndarray, list]:
        """(view params as int64, codec payload as one (1, width) array per codec column, in
        `codec.columns()` order) of one stored view."""
        if not 0 <= view < self.views:
            raise CacheError(f"{self.cache_dir}: view {view} outside [0, {self.views})")
        cols = self.shard(number).numeric
        params = np.array([int(cols[name][image, view]) for name in self._params], np.int64)
        payload = [
            cols[name][image : image + 1, view * width : (view + 1) * width]
            for name, width in self._payload
        ]
        return params, payload

    def decode(self, payloads: list[list[np.ndarray]], target: bool = False) -> np.ndarray:
        """Dense float32 distributions of the views whose `read_view` payloads are given, or
        with `target` the student's targets (Codec.decode_target): decoding a whole batch at
        once costs a fraction of decoding view by view."""
        columns = [np.concatenate(column) for column in zip(*payloads, strict=True)]
        payload = dict(zip([name for name, _ in self._payload], columns, strict=True))
        out = self.codec.decode_target(payload) if target else self.codec.decode(payload)
        return out.astype(np.float32)

    def load_shard(self, number: int, verify: bool = True) -> dict[str, np.ndarray]:
        """Shard `number` copied out and expanded to one row per view (audits and tests):
        key, path, label, view, params (int64, one column per name) and the codec columns."""
        shard = self.shard(number, verify)
        cols, views = shard.numeric, self.views
        images = len(cols["key"])
        try:
            dirs, names = shard.strings("path_dir"), shard.strings("path_name")
        except (ValueError, UnicodeDecodeError) as exc:
            raise CacheError(f"{shard.path}: cannot decode paths ({exc})") from None
        paths = np.array([join_path(d, n) for d, n in zip(dirs, names, strict=True)], object)
        out = {
            "key": np.repeat(cols["key"], views, axis=0),
            "path": np.repeat(paths, views),
            "label": np.repeat(cols["label"].astype(np.int32), views, axis=0),
            "view": np.tile(np.arange(views, dtype=np.int32), images)[:, None],
            "params": np.stack(
                [cols[name].reshape(-1).astype(np.int64) for name in self._params], axis=1
            )
            if self._params
            else np.zeros((images * views, 0), np.int64),
        }
        for name, width in self._payload:
            out[name] = np.array(cols[name]).reshape(images * views, width)
        return out
