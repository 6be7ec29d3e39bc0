"""The cache format, documented in one place.

A cache is a directory:

    manifest.json        what the cache is (fingerprints, codec, views) and which shards exist
    shard-00000.arrow    rows of whole images (all views of an image sit in one shard, in view
    shard-00001.arrow    order), as Arrow IPC files or HDF5 (`.h5`), one backend per cache

Each shard holds these columns, every one of fixed width (shape `rows x width`):

    key      uint8 x 16   BLAKE3-128 of the image file bytes (the lookup key)
    path     string       path relative to image_root at dump time (for humans and errors)
    label    int32        list label, -1 for unlabeled
    view     int32        view index v in [0, views)
    params   int32 x P    replayable transform parameters, named by `param_names`
    <codec>  ...          the codec's payload columns (see `cache/codecs.py`)

`manifest.json` (format_version 1) holds:

    format_version, backend, views, seed, num_classes, images_per_shard, param_names,
    codec: {name, num_classes, ...settings},
    fingerprints: {teacher, transforms, dataset, order},
    teacher: {name, class_num, weights_sha256},
    num_images, source: {image_root, cls_label_path, transform_ops, teacher_weights},
    complete, skipped: [{path, line, reason}],
    shards: [{name, rows, images, checksum (BLAKE3 hex of the file), bytes}]

Fingerprints (each hashes the exact inputs of its computation) are computed, and compared,
in `cache/fingerprint.py`.

Write protocol: a shard is written to `.<name>.tmp-<pid>`, fsynced and renamed into place;
then the manifest, listing it with its checksum, is replaced atomically the same way. So a
shard under its final name is always whole; one on disk but absent from the manifest (a run
killed between the two steps, or a shard of another rank: under paddle.distributed.launch
only rank 0 writes the manifest) is adopted on the next open of the cache, when the
manifest's identity matches: parsed, checked against its index (rows, columns, content
keys), checksummed and listed. A file that fails the check is removed and rewritten.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import blake3

from offline_ssld.atomic import TMP_MARK, commit_file, fsync_dir, tmp_path  # noqa: F401
from offline_ssld.errors import CacheError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BACKEND_SUFFIX = {"arrow": ".arrow", "hdf5": ".h5"}


def shard_name(index: int, backend: str) -> str:
    return f"shard-{index:05d}{BACKEND_SUFFIX[backend]}"


def _file_digest(path: Path, hasher) -> str:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def file_checksum(path: Path) -> str:
    """BLAKE3 of a shard file: fast enough to verify every shard before it is parsed."""
    return _file_digest(path, blake3.blake3())


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = tmp_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1, sort_keys=False)
            fh.write("\n")
        commit_file(tmp, path)
    except BaseException:  # a full disk, say: leave the old file, and no temporary one
        tmp.unlink(missing_ok=True)
        raise


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
    codec: dict
    fingerprints: dict
    teacher: dict
    num_images: int
    source: dict  # where the inputs were (image_root, list, transform_ops, weights): for verify
    complete: bool = False
    skipped: list[dict] = field(default_factory=list)
    shards: list[ShardInfo] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    @property
    def num_shards(self) -> int:
        return -(-self.num_images // self.images_per_shard)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, cache_dir: Path) -> None:
        write_json_atomic(Path(cache_dir) / MANIFEST, self.to_json())


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
    "codec": (dict,),
    "fingerprints": (dict,),
    "teacher": (dict,),
    "num_images": (int,),
    "source": (dict,),
    "complete": (bool,),
    "skipped": (list,),
    "shards": (list,),
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


def load_manifest(cache_dir: str | Path) -> Manifest:
    """Read and validate `manifest.json`; every problem names the file and field."""
    path = Path(cache_dir) / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CacheError(f"{cache_dir}: no {MANIFEST}: not an offline-ssld cache") from None
    except OSError as exc:
        raise CacheError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # also a number too long to convert
        raise CacheError(f"{path}: not valid JSON ({exc})") from None
    _check_fields(obj, _FIELDS, str(path))
    for name, fields in _NESTED.items():
        _check_fields(obj[name], fields, str(path), f"{name}.")
    if obj["format_version"] != FORMAT_VERSION:
        raise CacheError(
            f"{path}: field 'format_version' is {obj['format_version']}; "
            f"this offline-ssld reads version {FORMAT_VERSION}"
        )
    if obj["backend"] not in BACKEND_SUFFIX:
        raise CacheError(f"{path}: field 'backend' is {obj['backend']!r}; expected arrow or hdf5")
    for name in ("views", "num_classes", "images_per_shard"):
        if obj[name] < 1:
            raise CacheError(f"{path}: field '{name}' must be positive")
    if obj["num_images"] < 0:
        raise CacheError(f"{path}: field 'num_images' must not be negative")
    if not all(isinstance(p, str) for p in obj["param_names"]):
        raise CacheError(f"{path}: field 'param_names' must list strings")
    for name in ("codec", "teacher"):
        key = "num_classes" if name == "codec" else "class_num"
        if obj[name].get(key) != obj["num_classes"]:
            raise CacheError(f"{path}: field '{name}.{key}' disagrees with 'num_classes'")
    shards = []
    num_shards = -(-obj["num_images"] // obj["images_per_shard"])
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
        images = min(obj["images_per_shard"], obj["num_images"] - number * obj["images_per_shard"])
        if shard["images"] != images:
            raise CacheError(
                f"{path}: shards[{i}] field 'images' is {shard['images']}, but 'num_images' and "
                f"'images_per_shard' give {images}"
            )
        shards.append(ShardInfo(**shard))
    if len({s.name for s in shards}) != len(shards):
        raise CacheError(f"{path}: field 'shards' lists a shard twice")
    if obj["complete"] != (len(shards) == num_shards):
        raise CacheError(
            f"{path}: field 'complete' is {obj['complete']} but {len(shards)} of {num_shards} "
            "shards are listed"
        )
    obj["shards"] = sorted(shards, key=lambda s: s.name)
    return Manifest(**obj)
