"""The cache format (version 3), documented in one place.

A cache is a directory:

    manifest.json        what the cache is (fingerprints, codec, views) and which shards exist
    shard-00000.arrow    whole images, one table row per image (all views of an image sit in
    shard-00001.arrow    its row), as Arrow IPC files or HDF5 (`.h5`), one backend per cache

Each shard has one row per image; view v of image i is row i, slot v. The view index is
implicit (a stored view is "image * views + view"), and per-image data is stored once:

    key        uint8  x 16          BLAKE3-128 of the image file bytes (the lookup key)
    label      narrowest int x 1    list label, -1 for unlabeled (int16 up to 32767 classes)
    path_dir   string               directory part of the path relative to image_root
    path_name  string               file name part (path = path_dir/path_name)
    params.<n> narrowest int x V    one column per replayable transform parameter <n> (see
                                    `param_names`), in the smallest integer type that holds
                                    the range the op declares (`param_ranges`), one per view;
                                    a batch op's `partner` is an image number of this cache
                                    (storage order, see data/batchops.py)
    <codec>    dtype x (V * w)      the codec's payload columns (see `cache/codecs.py`), the
                                    w values of view v at [v * w, (v + 1) * w)

Every numeric column is a fixed-width 2-D array (`images x width`), stored uncompressed and
contiguous, so a reader maps the file and slices one view without reading the shard: in
Arrow a FixedSizeList column (`path_dir` is dictionary-encoded: each directory once per
shard), in HDF5 a contiguous dataset (strings are fixed-length UTF-8 bytes).

`manifest.json` (format_version 3) holds:

    format_version, backend, views, seed, num_classes, images_per_shard,
    param_names, param_ranges ([lo, hi] per name, inclusive),
    codec: {name, num_classes, ...settings},
    fingerprints: {teacher, transforms, dataset, order, list (dump-teacher only: the
                   samples of the part it dumps; `dataset` and `order` then cover the whole
                   parts, all of them once `complete`)},
    teacher: {name, class_num, weights_sha256},
    num_images, parts (images added by each dump: [num_images], then one more per extension),
    source: {image_root, cls_label_path, transform_ops, teacher_weights},
    complete, skipped: [{path, line, reason}],
    shards: [{name, rows, images, checksum (BLAKE3 hex of the file), bytes}],
    dump_id (32 hex digits, drawn when the cache is created, kept by resumes),
    integrity: {<field>: SHA-256 of the canonical JSON of that field, for every field above}

Every byte of a cache is covered. Shards by their `checksum`; the manifest by itself:
`integrity` (last) holds `fingerprint.canonical_hash` of every other top-level field, and the
file must be exactly `json.dumps(manifest, indent=1)` and a newline (the canonical form the
writer produces), so a changed value fails its field's hash and a change that parses to the
same value (a hex digit's case in a unicode escape, `e` for `E`) fails the canonical form.
Either error names the field. The stored specs are then re-derived and compared: `teacher`
hashes to `fingerprints.teacher`; `source.transform_ops` builds a pipeline whose spec hashes
to `fingerprints.transforms` and whose parameters are `param_names` / `param_ranges`; `codec`
is its codec's canonical settings (cache/reader.py). The checksum is no signature: someone
who rewrites a manifest can recompute it; it catches damage and careless edits, and the
re-derived specs catch an edit that changes what a cache means.

Nothing a cache names is read outside it: files are opened only inside the cache directory
(shards and the manifest; no symlink out), regular files only (a FIFO or device is refused,
never opened blocking), with a size cap (the manifest: `MAX_MANIFEST_BYTES`; a shard: its
`bytes`). A shard's body is sized against the manifest before anything is decoded: an Arrow
shard's footer and message headers are read first (one record batch of exactly `images` rows,
no body compression, dictionaries no longer than the batch), an HDF5 shard's dataset shapes
and storage (contiguous, unfiltered, `images` rows). Image paths a shard stores are read
(by `verify --teacher-check`) only through the list reader's containment check
(`data/lists.py`), under the image_root of the user's config, and the teacher weights are
the config's, never the paths recorded in `source`.

A cache of another format_version is refused, naming its version. Version 2 (no manifest
integrity, no dump_id) and version 1 (one row per view, every row repeating key, path, label
and int32 params) are converted by dumping again with `--overwrite`.

Fingerprints (each hashes the exact inputs of its computation) are computed, and compared,
in `cache/fingerprint.py`.

Write protocol: a shard is written to `.<name>.tmp-<pid>`, fsynced and renamed into place;
then the manifest, listing it with its checksum, is replaced atomically the same way. So a
shard under its final name is always whole; one on disk but absent from the manifest (a run
killed between the two steps, or a shard of another rank: under paddle.distributed.launch
only rank 0 writes the manifest) is adopted on the next open of the cache, when the
manifest's identity matches and the shard carries the manifest's `dump_id` (Arrow schema
metadata / HDF5 attribute `offline_ssld.dump_id`): parsed, checked against its index (rows,
columns, content keys), checksummed and listed. A resume deletes only what the dump provably
wrote: its temporary names, and unlisted shards carrying its dump_id that fail the check. Any
other unlisted `shard-*` file is left in place and the dump refuses, naming it.
`verified.json` (optional, written by train-student when the directory is writable) records,
per shard, the file state (size, mtime, ctime, inode, device) under which its checksum was
last verified in full; a start-up skips hashing a shard whose state is unchanged. It is a
hint, never trusted for content: damage to it only makes a start-up hash again. A file
written, replaced or copied since has another state and is hashed again before use
(`offline-ssld verify` always hashes everything, for damage no write explains).
New images extend a cache in new shards (`dump-teacher` on a list that adds images): each
dump is a part, whose images fill shards of `images_per_shard` from a fresh shard number, so
the last shard of every part may be short and the shards of earlier parts are never
rewritten. The reader's index is built from the shards' key columns, so no global index file
has to be rewritten. While an extension runs, the manifest already lists its part; the earlier
parts are whole, so the cache stays usable for lists of their images (`Manifest.usable`).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import blake3
import numpy as np

from offline_ssld.atomic import atomic_write
from offline_ssld.cache.codecs import Codec, codec_from_settings
from offline_ssld.cache.fingerprint import canonical_hash, teacher_fingerprint
from offline_ssld.errors import CacheError
from offline_ssld.io import KEY_BYTES, inside, open_regular, read_regular

FORMAT_VERSION = 3
MANIFEST = "manifest.json"
VERIFIED = "verified.json"
INTEGRITY = "integrity"
DUMP_ID_KEY = "offline_ssld.dump_id"  # the shard metadata naming the dump that wrote it
MAX_MANIFEST_BYTES = 64 << 20  # 2,400 shards take 0.4 MB; the rest is room for `skipped`
CACHE_DIR = "the cache directory"


def shard_name(index: int, backend: str) -> str:
    from offline_ssld.cache.backends import BACKEND_SUFFIX  # backends imports this module

    return f"shard-{index:05d}{BACKEND_SUFFIX[backend]}"


def file_checksum(path: Path, max_bytes: int) -> str:
    """BLAKE3 of a shard file: fast enough to verify every shard before it is parsed. Only a
    regular file of at most `max_bytes` (its manifest size) is read."""
    hasher = blake3.blake3()
    with open_regular(path, str(path), max_bytes, CacheError) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def render_json(obj: Any) -> bytes:
    """The one JSON text the project writes (and the manifest must be byte for byte)."""
    return (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode("utf-8")


def write_json_atomic(path: Path, obj: Any) -> None:
    data = render_json(obj)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def cache_file(cache_dir: str | Path, name: str) -> Path:
    """A file of the cache directory, refused if it (through a symlink) lies outside it."""
    return inside(cache_dir, name, f"{cache_dir}", CacheError, CACHE_DIR)


def field_checksums(obj: dict) -> dict[str, str]:
    """`integrity`: the canonical hash of every top-level field, so damage names its field."""
    return {name: canonical_hash(value) for name, value in obj.items() if name != INTEGRITY}


def new_dump_id() -> str:
    return uuid.uuid4().hex


@dataclass
class ShardInfo:
    name: str
    rows: int
    images: int
    checksum: str
    bytes: int


@dataclass
class Manifest:
    backend: str
    views: int
    seed: int
    num_classes: int
    images_per_shard: int
    param_names: list[str]
    param_ranges: list[list[int]]
    codec: dict
    fingerprints: dict
    teacher: dict
    num_images: int
    source: dict  # where the inputs were (image_root, list, transform_ops, weights): for verify
    complete: bool = False
    skipped: list[dict] = field(default_factory=list)
    shards: list[ShardInfo] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    parts: list[int] = field(default_factory=list)  # empty: one part of num_images
    dump_id: str = field(default_factory=new_dump_id)  # which dump wrote the shards

    def __post_init__(self) -> None:
        if not self.parts:
            self.parts = [self.num_images]

    @property
    def num_shards(self) -> int:
        return sum(-(-p // self.images_per_shard) for p in self.parts)

    def shard_span(self, index: int) -> tuple[int, int]:
        """[first, stop) image numbers of shard `index`: shards fill each part in turn."""
        ips, first_shard, first_image = self.images_per_shard, 0, 0
        for images in self.parts:
            count = -(-images // ips)
            if index < first_shard + count:
                start = first_image + (index - first_shard) * ips
                return start, min(start + ips, first_image + images)
            first_shard, first_image = first_shard + count, first_image + images
        raise IndexError(f"shard {index} outside [0, {self.num_shards})")

    def shards_of_parts(self, parts: int) -> int:
        """How many shards the first `parts` parts fill."""
        return sum(-(-p // self.images_per_shard) for p in self.parts[:parts])

    @property
    def usable(self) -> bool:
        """Readable for training: whole, or an extension under way over whole earlier parts
        (load_manifest checks that they are listed)."""
        return self.complete or len(self.parts) > 1

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, cache_dir: Path) -> None:
        obj = self.to_json()
        obj[INTEGRITY] = field_checksums(obj)
        write_json_atomic(Path(cache_dir) / MANIFEST, obj)


# field -> accepted types; validated on load so a hand-edited or hostile manifest gives a
# clear error naming the field instead of a crash deep inside the reader.
_FIELDS: dict[str, tuple[type, ...]] = {
    "format_version": (int,),
    "backend": (str,),
    "views": (int,),
    "seed": (int,),
    "num_classes": (int,),
    "images_per_shard": (int,),
    "param_names": (list,),
    "param_ranges": (list,),
    "codec": (dict,),
    "fingerprints": (dict,),
    "teacher": (dict,),
    "num_images": (int,),
    "source": (dict,),
    "complete": (bool,),
    "skipped": (list,),
    "shards": (list,),
    "parts": (list,),
    "dump_id": (str,),
}
_SHARD_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "rows": (int,),
    "images": (int,),
    "checksum": (str,),
    "bytes": (int,),
}
# nested objects that readers use: field -> accepted types
_NESTED: dict[str, dict[str, tuple[type, ...]]] = {
    "fingerprints": {"teacher": (str,), "transforms": (str,), "dataset": (str,), "order": (str,)},
    "teacher": {"name": (str,), "class_num": (int,), "weights_sha256": (str, type(None))},
    "source": {
        "image_root": (str,),
        "cls_label_path": (str,),
        "transform_ops": (list,),
        "teacher_weights": (str,),
    },
}


def _check_fields(obj: Any, fields: dict, where: str, prefix: str = "") -> None:
    """`prefix` names a nested object (`teacher.`); those may hold further keys."""
    if not isinstance(obj, dict):
        what = f"field '{prefix[:-1]}' is not" if prefix else "expected"
        raise CacheError(f"{where}: {what} a JSON object")
    for name, types in fields.items():
        if name not in obj:
            raise CacheError(f"{where}: field '{prefix}{name}' is missing")
        value = obj[name]
        if not isinstance(value, types) or (bool in types) != isinstance(value, bool):
            raise CacheError(
                f"{where}: field '{prefix}{name}' has the wrong type ({type(value).__name__})"
            )
    extra = sorted(set(obj) - set(fields))
    if extra and not prefix:
        raise CacheError(f"{where}: unknown field '{extra[0]}'")


def _is_range(value: Any) -> bool:
    info = np.iinfo(np.int64)
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and info.min <= value[0] <= value[1] <= info.max
    )


def narrowest_int(lo: int, hi: int) -> np.dtype:
    """The smallest integer dtype holding every value of [lo, hi]: exact, and no wider."""
    for name in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64"):
        info = np.iinfo(name)
        if info.min <= lo and hi <= info.max:
            return np.dtype(name)
    raise ValueError(f"no integer type holds [{lo}, {hi}]")


@dataclass(frozen=True)
class ColumnSpec:
    """One numeric shard column: `width` values per image, or per view when `per_view`."""

    name: str
    dtype: np.dtype
    width: int
    per_view: bool

    def stored_width(self, views: int) -> int:
        return self.width * views if self.per_view else self.width


STRING_COLUMNS = ("path_dir", "path_name")


def param_column(name: str) -> str:
    return f"params.{name}"


def numeric_columns(manifest: Manifest, codec: Codec) -> list[ColumnSpec]:
    """The numeric columns a shard of `manifest` holds, with their exact dtypes and widths."""
    cols = [
        ColumnSpec("key", np.dtype("uint8"), KEY_BYTES, False),
        ColumnSpec("label", narrowest_int(-1, manifest.num_classes - 1), 1, False),
    ]
    for name, (lo, hi) in zip(manifest.param_names, manifest.param_ranges, strict=True):
        cols.append(ColumnSpec(param_column(name), narrowest_int(lo, hi), 1, True))
    cols += [ColumnSpec(c.name, np.dtype(c.dtype), c.width, True) for c in codec.columns()]
    return cols


def split_path(path: str) -> tuple[str, str]:
    """`a/b/c.png` -> (`a/b`, `c.png`): directories repeat across a shard, names do not."""
    head, _, tail = path.rpartition("/")
    return head, tail


def join_path(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def load_manifest(cache_dir: str | Path) -> Manifest:
    """Read and validate `manifest.json`; every problem names the file and field."""
    path = Path(cache_dir) / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise CacheError(f"{cache_dir}: no {MANIFEST}: not an offline-ssld cache")
    raw = read_regular(cache_file(cache_dir, MANIFEST), str(path), MAX_MANIFEST_BYTES, CacheError)
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # also a number too long to convert
        raise CacheError(f"{path}: not valid JSON ({exc})") from None
    # The version first: an older cache lacks newer fields and must be named as older.
    version = obj.get("format_version") if isinstance(obj, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version != FORMAT_VERSION:
        raise CacheError(
            f"{path}: field 'format_version' is {version}; this offline-ssld reads version "
            f"{FORMAT_VERSION} only: convert by running the same dump-teacher command with "
            "--overwrite (the teacher runs again)"
        )
    if not isinstance(obj, dict):
        raise CacheError(f"{path}: expected a JSON object")
    _check_integrity(obj, raw, path)
    del obj[INTEGRITY]
    _check_fields(obj, _FIELDS, str(path))
    if not re.fullmatch("[0-9a-f]{32}", obj["dump_id"]):
        raise CacheError(f"{path}: field 'dump_id' is not 32 lowercase hex digits")
    for name, fields in _NESTED.items():
        _check_fields(obj[name], fields, str(path), f"{name}.")
    if not isinstance(obj["fingerprints"].get("list", ""), str):
        raise CacheError(f"{path}: field 'fingerprints.list' has the wrong type")
    from offline_ssld.cache.backends import BACKEND_SUFFIX  # backends imports this module

    if obj["backend"] not in BACKEND_SUFFIX:
        raise CacheError(
            f"{path}: field 'backend' is {obj['backend']!r}; expected "
            + " or ".join(BACKEND_SUFFIX)
        )
    for name in ("views", "num_classes", "images_per_shard"):
        if obj[name] < 1:
            raise CacheError(f"{path}: field '{name}' must be positive")
    if obj["num_images"] < 0:
        raise CacheError(f"{path}: field 'num_images' must not be negative")
    if not all(isinstance(p, str) for p in obj["param_names"]):
        raise CacheError(f"{path}: field 'param_names' must list strings")
    ranges = obj["param_ranges"]
    if len(ranges) != len(obj["param_names"]) or not all(_is_range(r) for r in ranges):
        raise CacheError(
            f"{path}: field 'param_ranges' must hold one [lo, hi] integer pair (lo <= hi, "
            "within int64) per entry of 'param_names'"
        )
    for name in ("codec", "teacher"):
        key = "num_classes" if name == "codec" else "class_num"
        if obj[name].get(key) != obj["num_classes"]:
            raise CacheError(f"{path}: field '{name}.{key}' disagrees with 'num_classes'")
    if teacher_fingerprint(obj["teacher"]) != obj["fingerprints"]["teacher"]:
        raise CacheError(f"{path}: field 'teacher' does not match 'fingerprints.teacher'")
    parts = obj["parts"]
    if (
        not parts
        or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in parts)
        or sum(parts) != obj["num_images"]
        or (len(parts) > 1 and 0 in parts)
    ):
        raise CacheError(
            f"{path}: field 'parts' must list the non-negative image count of each dump, "
            "summing to 'num_images'"
        )
    spans = Manifest(**{**obj, "shards": []})
    shards, numbers = [], set()
    num_shards = spans.num_shards
    suffix = BACKEND_SUFFIX[obj["backend"]]
    for i, shard in enumerate(obj["shards"]):
        _check_fields(shard, _SHARD_FIELDS, f"{path}: shards[{i}]")
        # Checked by parsing, not against a set of all names: num_images may be huge.
        digits = shard["name"].removeprefix("shard-").removesuffix(suffix)
        number = int(digits) if digits.isascii() and digits.isdigit() and len(digits) < 12 else -1
        if shard["name"] != shard_name(number, obj["backend"]) or not 0 <= number < num_shards:
            raise CacheError(
                f"{path}: shards[{i}] field 'name' {shard['name']!r} is not a shard of this cache"
            )
        if shard["rows"] != shard["images"] * obj["views"] or shard["rows"] < 1:
            raise CacheError(f"{path}: shards[{i}] field 'rows' disagrees with images x views")
        first, stop = spans.shard_span(number)
        if shard["images"] != stop - first:
            raise CacheError(
                f"{path}: shards[{i}] field 'images' is {shard['images']}, but 'parts' and "
                f"'images_per_shard' give {stop - first}"
            )
        shards.append(ShardInfo(**shard))
        numbers.add(number)
    if len({s.name for s in shards}) != len(shards):
        raise CacheError(f"{path}: field 'shards' lists a shard twice")
    if obj["complete"] != (len(shards) == num_shards):
        raise CacheError(
            f"{path}: field 'complete' is {obj['complete']} but {len(shards)} of {num_shards} "
            "shards are listed"
        )
    earlier = spans.shards_of_parts(len(parts) - 1)
    if len([n for n in numbers if n < earlier]) != earlier:
        raise CacheError(
            f"{path}: field 'shards' misses a shard of an earlier part (an extension starts "
            "from a whole cache)"
        )
    obj["shards"] = sorted(shards, key=lambda s: s.name)
    manifest = Manifest(**obj)
    try:
        codec = codec_from_settings(manifest.codec)
    except ValueError as exc:
        raise CacheError(f"{path}: field 'codec': {exc}") from None
    for shard in manifest.shards:  # no read of a file claiming a terabyte
        cap = max_shard_bytes(manifest, codec, shard.images)
        if not 0 < shard.bytes <= cap:
            raise CacheError(
                f"{path}: {shard.name} field 'bytes' is {shard.bytes}; a shard of "
                f"{shard.images} images holds 1 to {cap} bytes"
            )
    return manifest


def max_shard_bytes(manifest: Manifest, codec: Codec, images: int) -> int:
    """The most bytes a shard of `images` images can take: its numeric columns, two paths of
    at most 4096 bytes per image, and 1 MiB of structure. Every read of a shard is capped so."""
    per_image = sum(
        c.dtype.itemsize * c.stored_width(manifest.views) for c in numeric_columns(manifest, codec)
    )
    return images * (per_image + 2 * 4096) + (1 << 20)


def _check_integrity(obj: dict, raw: bytes, path: Path) -> None:
    """Every field against its hash in `integrity`, then the bytes against the canonical form
    (see the module docstring); names the first field at fault."""
    stored = obj.get(INTEGRITY)
    if not isinstance(stored, dict) or not all(isinstance(v, str) for v in stored.values()):
        raise CacheError(f"{path}: field '{INTEGRITY}' is missing or not an object of hashes")
    try:
        computed = field_checksums(obj)
    except (ValueError, RecursionError) as exc:  # NaN or nesting canonical JSON refuses
        raise CacheError(f"{path}: not canonical JSON ({exc})") from None
    for name in [*computed, *stored]:
        if name not in stored:
            raise CacheError(f"{path}: field '{name}' has no checksum in '{INTEGRITY}'")
        if name not in computed:
            raise CacheError(f"{path}: field '{name}' is missing ('{INTEGRITY}' lists it)")
        if stored[name] != computed[name]:
            raise CacheError(
                f"{path}: field '{name}' does not match its checksum '{INTEGRITY}.{name}': "
                "the manifest is damaged or was edited"
            )
    canonical = render_json(obj)
    if raw != canonical:
        at = next(
            (i for i, (a, b) in enumerate(zip(raw, canonical, strict=False)) if a != b),
            min(len(raw), len(canonical)),
        )
        start = raw.rfind(b'\n "', 0, at + 1) + 3
        name = raw[start : raw.find(b'"', start)].decode("utf-8", "replace") if start > 2 else "?"
        raise CacheError(
            f"{path}: field '{name}' is not in canonical form (byte {at}): the manifest is "
            "damaged or was edited"
        )
