"""Shard backends: one registry entry per file format, columns in, columns out.

A shard is a dict of columns: string columns are 1-D arrays of str, every other column a
2-D numpy array (images x width). Both backends store numeric columns uncompressed and
contiguous, so `map_shard` can hand them out as zero-copy arrays over one read-only memory
map of the file: a reader touches the pages of the views it reads, never the whole shard.
The same mapping is what `MappedShard.checksum` hashes, so the bytes verified are the bytes
used. Parsing errors of a damaged or hostile file become CacheError naming the file.

Each backend is a `Backend` entry in BACKENDS; everything else about backends (the
Offline.format check, shard file names, the manifest check, the overlay summary and the README
table) is derived from the entries, so adding a backend is one entry here and its test.

Nothing is decoded or allocated before it is sized against the manifest: the file must be a
regular file of the manifest's size (or under a cap), an Arrow file's footer and message
headers are read by hand first (`_arrow_preflight`: one record batch of exactly the
manifest's image count, no body compression), an HDF5 file's dataset shapes and storage
before any dataset is read. Each shard carries the dump id of the dump that wrote it
(`DUMP_ID_KEY`), so a resume can tell its own shards from a file someone else put there.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3
import h5py
import numpy as np
import pyarrow as pa

from offline_ssld.cache.format import DUMP_ID_KEY, STRING_COLUMNS
from offline_ssld.errors import CacheError
from offline_ssld.io import open_regular

DICTIONARY_COLUMNS = ("path_dir",)  # Arrow stores each distinct value once per shard
_NUMERIC_KINDS = "iuf"

_IMPORT_PID = os.getpid()  # forked loader workers hash single-threaded (checksum)


def _write_arrow(path: Path, columns: dict[str, np.ndarray], dump_id: str) -> None:
    arrays, names = [], []
    for name, values in columns.items():
        if name in DICTIONARY_COLUMNS:
            uniques, inverse = np.unique(np.asarray(values, dtype=object), return_inverse=True)
            index_type = np.int16 if len(uniques) <= np.iinfo(np.int16).max else np.int32
            arrays.append(
                pa.DictionaryArray.from_arrays(
                    pa.array(inverse.astype(index_type)),
                    pa.array([str(v) for v in uniques], type=pa.string()),
                )
            )
        elif name in STRING_COLUMNS:
            arrays.append(pa.array([str(v) for v in values], type=pa.string()))
        else:
            flat = pa.array(np.ascontiguousarray(values).reshape(-1))
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, values.shape[1]))
        names.append(name)
    batch = pa.RecordBatch.from_arrays(arrays, names=names)
    batch = batch.replace_schema_metadata({DUMP_ID_KEY: dump_id})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)


def _write_hdf5(path: Path, columns: dict[str, np.ndarray], dump_id: str) -> None:
    with h5py.File(path, "w") as fh:
        fh.attrs[DUMP_ID_KEY] = np.bytes_(dump_id.encode("ascii"))
        for name, values in columns.items():
            if name in STRING_COLUMNS:
                # Fixed-length, not variable-length: those live in HDF5's global heap, and a
                # damaged heap can make libhdf5 loop forever. Raw UTF-8 bytes, decoded on read.
                encoded = [str(v).encode("utf-8") for v in values]
                width = max([1, *map(len, encoded)])
                fh.create_dataset(name, data=np.array(encoded, dtype=f"S{width}"))
            else:  # contiguous, uncompressed (h5py's default): mappable by offset
                fh.create_dataset(name, data=np.ascontiguousarray(values))


class MappedShard:
    """A shard file mapped read-only: numeric columns are views into the mapping."""

    def __init__(
        self,
        path: Path,
        memory: mmap.mmap,
        state: list[int],
        numeric: dict,
        strings: dict,
        dump_id: str | None,
    ):
        self.path = path
        self.state = state  # file_state() of the file as it was mapped
        self.dump_id = dump_id  # of the dump that wrote it; None if it carries none
        self._memory = memory
        self.numeric: dict[str, np.ndarray] = numeric
        self._strings = strings  # name -> (length, callable giving the column as str array)

    @property
    def names(self) -> set[str]:
        return set(self.numeric) | set(self._strings)

    def string_length(self, name: str) -> int:
        return self._strings[name][0]

    def strings(self, name: str) -> np.ndarray:
        """A string column, decoded now (paths are for humans and audits, not the hot path)."""
        return self._strings[name][1]()

    def checksum(self) -> str:
        """BLAKE3 of the mapped file bytes (the bytes the columns point into). Multithreaded
        only in the process that imported this module: BLAKE3's thread pool does not survive
        fork, and a loader worker hashing with it waits forever."""
        threads = blake3.blake3.AUTO if os.getpid() == _IMPORT_PID else 1
        hasher = blake3.blake3(max_threads=threads)
        hasher.update(memoryview(self._memory))
        return hasher.hexdigest()


def file_state(st: os.stat_result) -> list[int]:
    """What changes whenever a file is written, replaced or copied: size, times, inode."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


_DUMP_ID_MAX = 64  # bytes of a dump id a shard may carry (32 hex digits are written)


def _map_file(path: Path, size: int | None, max_bytes: int) -> tuple[mmap.mmap, list[int]]:
    """Map a regular file (never a FIFO or device) of exactly `size` bytes, or at most
    `max_bytes` when the size is not known yet (a shard being adopted)."""
    with open_regular(path, str(path), size if size is not None else max_bytes, CacheError) as fh:
        st = os.fstat(fh.fileno())
        if size is not None and st.st_size != size:
            raise CacheError(
                f"{path}: file holds {st.st_size} bytes, manifest field 'bytes' says {size}"
            )
        if not st.st_size:
            raise CacheError(f"{path}: empty file")
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), file_state(st)


class _Flat:
    """The few flatbuffer reads the Arrow preflight needs, every offset bounds-checked, so the
    IPC metadata is sized before pyarrow decodes (or decompresses) anything."""

    def __init__(self, data: memoryview, path: Path):
        self.data, self.path = data, path

    def _fail(self) -> CacheError:
        return CacheError(f"{self.path}: damaged Arrow metadata (an offset leaves the file)")

    def _unpack(self, fmt: str, at: int) -> int:
        if at < 0 or at + struct.calcsize(fmt) > len(self.data):
            raise self._fail()
        return struct.unpack_from(fmt, self.data, at)[0]

    def root(self, at: int) -> int:
        return at + self._unpack("<I", at)

    def field(self, table: int, index: int) -> int | None:
        """Position of field `index` of the table at `table`, or None if absent."""
        vtable = table - self._unpack("<i", table)
        if 4 + 2 * index >= self._unpack("<H", vtable):
            return None
        offset = self._unpack("<H", vtable + 4 + 2 * index)
        return table + offset if offset else None

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        at = self.field(table, index)
        return default if at is None else self._unpack(fmt, at)

    def ref(self, table: int, index: int) -> int | None:
        at = self.field(table, index)
        return None if at is None else at + self._unpack("<I", at)

    def structs(self, table: int, index: int, fmt: str) -> list[tuple[int, ...]]:
        at = self.ref(table, index)
        if at is None:
            return []
        count, size = self._unpack("<I", at), struct.calcsize(fmt)
        if at + 4 + count * size > len(self.data):
            raise self._fail()
        return [struct.unpack_from(fmt, self.data, at + 4 + i * size) for i in range(count)]


_SCHEMA, _DICTIONARY_BATCH, _RECORD_BATCH = 1, 2, 3  # Arrow MessageHeader union tags
_MAGIC = b"ARROW1"


def _arrow_preflight(memory: mmap.mmap, path: Path, images: int) -> None:
    """Refuse an Arrow file whose record batch is not `images` rows, is compressed, or whose
    buffers leave the file, reading only its footer and message headers."""
    size = len(memory)
    if size < 18 or memory[:6] != _MAGIC or memory[-6:] != _MAGIC:
        raise CacheError(f"{path}: not an Arrow IPC file")
    view = memoryview(memory)
    footer_len = struct.unpack_from("<i", view, size - 10)[0]
    if not 0 < footer_len <= size - 18:
        raise CacheError(f"{path}: damaged Arrow footer")
    footer = _Flat(view[size - 10 - footer_len : size - 10], path)
    root = footer.root(0)
    block = "<qi4xq"  # Block: offset, metaDataLength, padding, bodyLength
    dictionaries = footer.structs(root, 2, block)
    batches = footer.structs(root, 3, block)
    if len(batches) != 1:
        raise CacheError(f"{path}: expected one record batch, found {len(batches)}")
    if len(dictionaries) > len(DICTIONARY_COLUMNS):
        raise CacheError(f"{path}: {len(dictionaries)} dictionary batches")
    for kind, (offset, meta_len, body_len) in [
        *((_DICTIONARY_BATCH, b) for b in dictionaries),
        (_RECORD_BATCH, batches[0]),
    ]:
        if offset < 8 or meta_len < 8 or body_len < 0 or offset + meta_len + body_len > size:
            raise CacheError(f"{path}: an Arrow block lies outside the file")
        start = offset + 8 if view[offset : offset + 4] == b"\xff\xff\xff\xff" else offset + 4
        message = _Flat(view[start : offset + meta_len], path)
        top = message.root(0)
        if message.scalar(top, 1, "<B") != kind:
            raise CacheError(f"{path}: an Arrow block holds another message than its footer says")
        header = message.ref(top, 2)
        if header is None:
            raise CacheError(f"{path}: an Arrow message has no header")
        if kind == _DICTIONARY_BATCH:
            header = message.ref(header, 1)
            if header is None:
                raise CacheError(f"{path}: an Arrow dictionary batch has no data")
        rows = message.scalar(header, 0, "<q")
        if kind == _RECORD_BATCH and rows != images:
            raise CacheError(f"{path}: shard holds {rows} rows, the manifest says {images} images")
        if not 0 <= rows <= images:
            raise CacheError(f"{path}: a dictionary of {rows} values for {images} images")
        if message.field(header, 3) is not None:
            raise CacheError(f"{path}: body is compressed; shards are written uncompressed")
        for buf_offset, buf_len in message.structs(header, 2, "<qq"):
            if buf_offset < 0 or buf_len < 0 or buf_offset + buf_len > body_len:
                raise CacheError(f"{path}: an Arrow buffer lies outside its message body")


def _map_arrow(path: Path, images: int, size: int | None, max_bytes: int) -> MappedShard:
    memory, state = _map_file(path, size, max_bytes)
    _arrow_preflight(memory, path, images)
    reader = pa.ipc.open_file(pa.py_buffer(memory))
    batch = reader.get_batch(0)
    # Bounds-check every offset and length first: pyarrow trusts them otherwise, and a
    # damaged or hostile file could make the views below point out of bounds.
    batch.validate(full=True)
    numeric: dict[str, np.ndarray] = {}
    strings: dict = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if column.null_count:
            raise CacheError(f"{path}: column '{name}' has nulls")
        if pa.types.is_fixed_size_list(column.type):
            values = column.flatten()
            if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
                raise CacheError(f"{path}: column '{name}' has unexpected type {column.type}")
            if values.null_count:
                raise CacheError(f"{path}: column '{name}' has nulls")
            flat = values.to_numpy(zero_copy_only=True)
            numeric[name] = flat.reshape(len(column), column.type.list_size)
        elif name in STRING_COLUMNS and (
            pa.types.is_string(column.type)
            or (pa.types.is_dictionary(column.type) and pa.types.is_string(column.type.value_type))
        ):
            strings[name] = (
                len(column),
                lambda column=column: np.array(column.to_pylist(), dtype=object),
            )
        else:
            raise CacheError(f"{path}: column '{name}' has unexpected type {column.type}")
    metadata = batch.schema.metadata or {}
    raw_id = metadata.get(DUMP_ID_KEY.encode())
    dump_id = raw_id.decode("ascii", "replace")[:_DUMP_ID_MAX] if raw_id is not None else None
    return MappedShard(path, memory, state, numeric, strings, dump_id)


def _hdf5_dump_id(fh: h5py.File, path: Path) -> str | None:
    if DUMP_ID_KEY not in fh.attrs:
        return None
    attr = fh.attrs.get_id(DUMP_ID_KEY)
    if attr.get_storage_size() > _DUMP_ID_MAX:
        raise CacheError(f"{path}: attribute '{DUMP_ID_KEY}' is too large")
    value = fh.attrs[DUMP_ID_KEY]
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _map_hdf5(path: Path, images: int, size: int | None, max_bytes: int) -> MappedShard:
    memory, state = _map_file(path, size, max_bytes)
    file_bytes = len(memory)
    numeric: dict[str, np.ndarray] = {}
    strings: dict = {}
    with open(path, "rb") as raw, h5py.File(raw, "r") as fh:
        if os.fstat(raw.fileno()).st_ino != state[3]:
            raise CacheError(f"{path}: file was replaced while it was opened")
        datasets = []
        for name in fh:  # every dataset sized and located before any is read
            dataset = fh[name]
            if not isinstance(dataset, h5py.Dataset):
                raise CacheError(f"{path}: '{name}' is not a dataset")
            if dataset.ndim < 1 or dataset.shape[0] != images:
                raise CacheError(
                    f"{path}: column '{name}' has shape {list(dataset.shape)}, the manifest "
                    f"says {images} images"
                )
            # Shards are written uncompressed and contiguous: anything else is damaged, and
            # reading it would decompress or allocate what its header claims first.
            if dataset.chunks is not None or dataset.compression is not None:
                raise CacheError(f"{path}: column '{name}' is not stored contiguously")
            nbytes = dataset.size * dataset.dtype.itemsize
            offset = dataset.id.get_offset()
            if nbytes and (offset is None or offset < 0 or offset + nbytes > file_bytes):
                raise CacheError(f"{path}: column '{name}' lies outside the file")
            datasets.append((name, dataset, nbytes, offset))
        for name, dataset, nbytes, offset in datasets:
            if name in STRING_COLUMNS:
                data = np.array(dataset.asstr("utf-8")[()], dtype=object)
                if data.ndim != 1:
                    raise CacheError(f"{path}: column '{name}' is not 1-D")
                strings[name] = (len(data), lambda data=data: data)
                continue
            if dataset.ndim != 2 or dataset.dtype.kind not in _NUMERIC_KINDS:
                raise CacheError(f"{path}: column '{name}' is not a 2-D numeric array")
            if nbytes == 0:
                numeric[name] = np.zeros(dataset.shape, dataset.dtype)
                continue
            flat = np.frombuffer(memory, dtype=dataset.dtype, count=dataset.size, offset=offset)
            numeric[name] = flat.reshape(dataset.shape)
        dump_id = _hdf5_dump_id(fh, path)
    return MappedShard(path, memory, state, numeric, strings, dump_id)


@dataclass(frozen=True)
class Backend:
    """One shard file format: its Offline.format name, shard file suffix, a one-line
    description (overlay summary, README) and its writer and mapper. No backend takes
    settings yet; one that does declares its Offline keys here, as codecs do."""

    name: str
    suffix: str
    description: str
    write: Callable[[Path, dict[str, np.ndarray], str], None]  # path, columns, dump id
    map: Callable[[Path, int, int | None, int], MappedShard]  # path, images, size, max bytes


BACKENDS: dict[str, Backend] = {
    entry.name: entry
    for entry in (
        Backend(
            "arrow",
            ".arrow",
            "Arrow IPC, one record batch a shard; path_dir dictionary-encoded (smallest files)",
            _write_arrow,
            _map_arrow,
        ),
        Backend(
            "hdf5",
            ".h5",
            "HDF5, one contiguous dataset a column; strings as fixed-length UTF-8",
            _write_hdf5,
            _map_hdf5,
        ),
    )
}
BACKEND_SUFFIX = {name: entry.suffix for name, entry in BACKENDS.items()}


def write_columns(backend: str, path: Path, columns: dict[str, np.ndarray], dump_id: str) -> None:
    BACKENDS[backend].write(path, columns, dump_id)


def map_shard(
    backend: str, path: Path, images: int, size: int | None = None, max_bytes: int = 0
) -> MappedShard:
    """Map a shard file of `images` images and parse its structure: exactly `size` bytes (its
    manifest entry) or, for a shard not listed yet, at most `max_bytes`. CacheError names the
    file on any damage."""
    try:
        return BACKENDS[backend].map(path, images, size, max_bytes)
    except CacheError:
        raise
    except FileNotFoundError:
        raise CacheError(f"{path}: shard file is missing") from None
    except (
        OSError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        RuntimeError,  # h5py: corrupt B-tree, heap or link structures
        OverflowError,
        MemoryError,
        struct.error,
        pa.ArrowException,
    ) as exc:
        raise CacheError(
            f"{path}: cannot parse {backend} shard ({type(exc).__name__}: {exc})"
        ) from None


def read_columns(
    backend: str, path: Path, images: int, max_bytes: int = 1 << 30
) -> dict[str, np.ndarray]:
    """Every column of a shard of `images` images, copied into memory (audits and tests, not
    the training path)."""
    shard = map_shard(backend, path, images, max_bytes=max_bytes)
    out = {name: np.array(values) for name, values in shard.numeric.items()}
    try:
        for name in shard.names - set(shard.numeric):
            out[name] = shard.strings(name)
    except (pa.ArrowException, ValueError, UnicodeDecodeError) as exc:
        raise CacheError(f"{path}: cannot parse {backend} shard ({exc})") from None
    return out
