"""Writing a cache: claim or resume a cache directory, then commit shards in the background.

A cache is never half-written: shards become visible only by an atomic rename after fsync,
and the manifest lists a shard only once it is whole. A directory that holds another cache is
refused (naming the differing field) unless the caller passes `overwrite=True`.

A resume deletes only what the dump provably wrote: temporary files under the names the
writer uses, and unlisted shards carrying the manifest's dump id. A `shard-*` file someone
else put in the directory is left alone and the dump stops, naming it.
"""

from __future__ import annotations

import dataclasses
import queue
import re
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from offline_ssld.atomic import TMP_MARK, atomic_write
from offline_ssld.cache.backends import BACKEND_SUFFIX, map_shard, write_columns
from offline_ssld.cache.codecs import codec_from_settings
from offline_ssld.cache.fingerprint import (
    dataset_fingerprint,
    first_difference,
    order_fingerprint,
)
from offline_ssld.cache.format import (
    MANIFEST,
    VERIFIED,
    Manifest,
    ShardInfo,
    cache_file,
    file_checksum,
    join_path,
    load_manifest,
    max_shard_bytes,
    new_dump_id,
    numeric_columns,
    shard_name,
)
from offline_ssld.cache.reader import check_layout
from offline_ssld.errors import CacheError

_SUFFIXES = "|".join(re.escape(x) for x in BACKEND_SUFFIX.values())
_SHARD = rf"shard-\d{{5,}}(?:{_SUFFIXES})"
_OWN_TMP = re.compile(rf"\.(?:{_SHARD}|{re.escape(MANIFEST)}|{re.escape(VERIFIED)}){TMP_MARK}\d+")


def _is_ours(path: Path) -> bool:
    """A name the cache writer uses (the manifest, the verified record, a shard name, or one of
    their temporary names); whether such a file was really written by this dump is another
    question (see `unlisted_shards`)."""
    name = path.name
    return name in (MANIFEST, VERIFIED) or bool(re.fullmatch(_SHARD, name)) or _is_own_tmp(path)


def _is_own_tmp(path: Path) -> bool:
    return bool(_OWN_TMP.fullmatch(path.name))


def _shard_cap(manifest: Manifest, images: int) -> int:
    return max_shard_bytes(manifest, codec_from_settings(manifest.codec), images)


def _shard_problem(
    path: Path, manifest: Manifest, index: int, keys, paths: Callable[[int], str] | None
) -> str | None:
    """Why the whole-looking file `path`, written by this dump, cannot be shard `index` of
    `manifest`, or None."""
    first, stop = manifest.shard_span(index)
    images = stop - first
    try:
        shard = map_shard(manifest.backend, path, images, max_bytes=_shard_cap(manifest, images))
        columns = numeric_columns(manifest, codec_from_settings(manifest.codec))
        check_layout(shard, columns, manifest.views, images)
    except (CacheError, ValueError) as exc:
        return str(exc)
    if keys is not None:
        want = np.stack([np.frombuffer(k, dtype=np.uint8) for k in keys[first : first + images]])
        if not np.array_equal(shard.numeric["key"], want):
            return "its content keys are not the images of this shard"
    if paths is not None:
        stored = zip(shard.strings("path_dir"), shard.strings("path_name"), strict=True)
        if [join_path(d, n) for d, n in stored] != [paths(i) for i in range(first, stop)]:
            return "its paths are not the images of this shard"
    return None


def _written_by(path: Path, manifest: Manifest) -> bool:
    """Whether the shard file carries `manifest`'s dump id: the proof that this dump wrote it,
    read from its metadata only (no column is parsed for a file we did not write)."""
    digits = path.name.removeprefix("shard-").split(".")[0]
    if not digits.isdigit() or int(digits) >= manifest.num_shards:
        return False
    first, stop = manifest.shard_span(int(digits))
    images = stop - first
    try:
        shard = map_shard(manifest.backend, path, images, max_bytes=_shard_cap(manifest, images))
    except CacheError:
        return False
    return shard.dump_id == manifest.dump_id


def adopt_shards(
    cache_dir: Path, manifest: Manifest, keys=None, paths: Callable[[int], str] | None = None
) -> list[str]:
    """List in `manifest` the whole shard files on disk that it does not list yet.

    A shard appears under its final name only whole (tmp, fsync, rename), so a shard that a
    killed run, or another rank of a launched dump, committed without listing it is kept: it
    must carry the manifest's dump id (proof this dump wrote it), and is parsed, checked
    against its index (rows, images, columns and, given the dump's ordered content `keys`,
    its keys; given `paths(image)`, the relative path of each image number, its paths),
    checksummed and added. A file of this dump that fails the check is removed and
    will be rewritten. Any other unlisted `shard-*` file is left alone and refused, naming
    it. Returns the names adopted; `manifest` is not saved here.
    """
    listed = {s.name for s in manifest.shards}
    names = {shard_name(j, manifest.backend): j for j in range(manifest.num_shards)}
    adopted: list[ShardInfo] = []
    for path in sorted(cache_dir.iterdir()):
        if not path.name.startswith("shard-") or path.name in listed:
            continue
        index = names.get(path.name)
        ours = index is not None and path.is_file() and _written_by(path, manifest)
        if not ours:
            raise CacheError(
                f"{path}: not listed in {MANIFEST} and not written by this dump (no matching "
                "dump id); it was left in place: move it out of the cache directory, or pass "
                "--overwrite to replace the cache"
            )
        assert index is not None  # `ours` holds
        if _shard_problem(path, manifest, index, keys, paths) is not None:
            path.unlink()  # ours, but not whole or not this shard: written again
            continue
        first, stop = manifest.shard_span(index)
        images = stop - first
        size = path.stat().st_size
        adopted.append(
            ShardInfo(path.name, images * manifest.views, images, file_checksum(path, size), size)
        )
    if adopted:
        manifest.shards = sorted([*manifest.shards, *adopted], key=lambda s: s.name)
        manifest.complete = len(manifest.shards) == manifest.num_shards
    return [s.name for s in adopted]


def open_cache(
    cache_dir: Path,
    manifest: Manifest,
    overwrite: bool = False,
    keys=None,
    extends: Manifest | None = None,
    paths: Callable[[int], str] | None = None,
) -> Manifest:
    """Return the manifest to continue from: a fresh one, or the matching existing one.

    Leftover temporary files are removed. Whole shards the manifest does not list (a run
    killed between rename and manifest update, or the shards of other ranks) are adopted
    when the existing manifest's identity matches (see `adopt_shards`). `extends` is the
    whole cache on disk that `manifest` extends by a part (dump.plan_against_cache): its
    shards are kept as they are and the extended manifest replaces it atomically.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    entries = list(cache_dir.iterdir())
    foreign = [p for p in entries if not _is_ours(p)]
    if (cache_dir / MANIFEST).exists() and not overwrite:
        old = load_manifest(cache_dir)
        dump_id = old.dump_id  # the cache's for its life: resumes and extensions keep it
        if extends is not None:
            if old.to_json() != extends.to_json():
                raise CacheError(f"{cache_dir}: the cache changed while this dump planned")
            old = dataclasses.replace(manifest, shards=old.shards, skipped=manifest.skipped)
        diff = first_difference(old, manifest)
        if diff:
            raise CacheError(f"{cache_dir} holds a cache of {diff}; pass --overwrite to replace it")
        for path in entries:
            if _is_own_tmp(path) and path.is_file():  # temporary: never committed
                path.unlink()
        for shard in old.shards:
            path = cache_dir / shard.name
            if (
                not path.exists()
                or file_checksum(cache_file(cache_dir, shard.name), shard.bytes) != shard.checksum
            ):
                raise CacheError(
                    f"{path}: shard is missing or damaged; run `offline-ssld verify {cache_dir}` "
                    "or dump again with --overwrite"
                )
        manifest.fingerprints = old.fingerprints  # a dump's `dataset` and `order` as written
        manifest.shards = old.shards
        manifest.skipped = old.skipped if old.skipped else manifest.skipped
        manifest.complete = len(old.shards) == manifest.num_shards
        manifest.dump_id = dump_id
        if adopt_shards(cache_dir, manifest, keys, paths) or extends is not None:
            if manifest.complete:
                fingerprint_keys(cache_dir, manifest)
            _save(manifest, cache_dir)
        return manifest
    if foreign and not (cache_dir / MANIFEST).exists():
        raise CacheError(
            f"{cache_dir} holds files that are not an offline-ssld cache ({foreign[0].name}); "
            "choose an empty or new cache_dir"
        )
    strays = [p for p in entries if p.name.startswith("shard-")]
    if strays and not overwrite:  # no manifest names them: nothing proves this dump wrote them
        raise CacheError(
            f"{strays[0]}: a shard file but no {MANIFEST}; it was left in place: move it out "
            "of the cache directory, or pass --overwrite to replace it"
        )
    for path in entries:  # only our own files: anything else in the directory is left alone
        if _is_ours(path) and path.is_file() and (overwrite or _is_own_tmp(path)):
            path.unlink()  # with --overwrite all of them; otherwise a killed first write's tmp
    manifest.shards = []
    manifest.complete = manifest.num_shards == 0
    manifest.dump_id = new_dump_id()  # a new cache: shards of any earlier one are not its own
    _save(manifest, cache_dir)
    return manifest


def _save(manifest: Manifest, cache_dir: Path) -> None:
    try:
        manifest.save(cache_dir)
    except OSError as exc:
        raise CacheError(
            f"{cache_dir}: cannot write {MANIFEST} ({exc.strerror or exc}); free space or fix "
            "permissions and run the same command again"
        ) from None


def fingerprint_keys(cache_dir: Path, manifest: Manifest) -> None:
    """Set `dataset` and `order` of a manifest that just became whole from the key columns
    of its shards (16 bytes an image, through the mapped files), so they describe what the
    shards hold: dump-teacher computes each key as its loader reads the image, and writes
    the fingerprints of the whole parts only until then (cache/fingerprint.py)."""
    keys = [
        row.tobytes()
        for info in manifest.shards
        for row in map_shard(
            manifest.backend, cache_dir / info.name, info.images, size=info.bytes
        ).numeric["key"]
    ]
    manifest.fingerprints = {
        **manifest.fingerprints,
        "dataset": dataset_fingerprint(keys),
        "order": order_fingerprint(keys),
    }


def write_shard(
    cache_dir: Path, manifest: Manifest, index: int, columns: dict[str, np.ndarray], images: int
) -> ShardInfo:
    """Write one shard (one row per image, carrying the dump id) under a temporary name,
    fsync, rename; return its manifest entry."""
    backend, views = manifest.backend, manifest.views
    final = cache_dir / shard_name(index, backend)
    atomic_write(final, lambda tmp: write_columns(backend, tmp, columns, manifest.dump_id))
    size = final.stat().st_size
    return ShardInfo(final.name, images * views, images, file_checksum(final, size), size)


class BackgroundWriter:
    """Commits shards and the manifest on a thread, so inference never waits on disk.

    The queue is bounded (two shards) to cap memory; an error on the thread is re-raised in
    the caller at the next `submit` or at `close`. With `update_manifest=False` (the non-zero
    ranks of a launched dump) shards are only committed; rank 0 adopts them at the end.
    The manifest the last shard makes whole is fingerprinted (`fingerprint_keys`) before it
    is saved.
    """

    def __init__(self, cache_dir: Path, manifest: Manifest, update_manifest: bool = True):
        self.cache_dir = cache_dir
        self.manifest = manifest
        self.update_manifest = update_manifest
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue
            index, columns, images = item
            try:
                info = write_shard(self.cache_dir, self.manifest, index, columns, images)
                if not self.update_manifest:
                    continue
                self.manifest.shards = sorted([*self.manifest.shards, info], key=lambda s: s.name)
                self.manifest.complete = len(self.manifest.shards) == self.manifest.num_shards
                if self.manifest.complete:
                    fingerprint_keys(self.cache_dir, self.manifest)
                self.manifest.save(self.cache_dir)
            except BaseException as exc:  # surfaced in the caller's thread
                self._error = exc

    def _raise(self) -> None:
        error = self._error  # sticky: after a failure nothing more is written
        if error is not None:
            if isinstance(error, OSError):
                raise CacheError(
                    f"{self.cache_dir}: writing a shard failed ({error.strerror or error}); "
                    "the cache is intact: free space and run the same command to resume"
                ) from error
            raise error

    def submit(self, index: int, columns: dict[str, np.ndarray], images: int) -> None:
        self._raise()
        self._queue.put((index, columns, images))

    def close(self) -> Manifest:
        self._queue.put(None)
        self._thread.join()
        self._raise()
        return self.manifest
