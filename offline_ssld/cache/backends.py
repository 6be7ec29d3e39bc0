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
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3
import h5py
import numpy as np
import pyarrow as pa

from offline_ssld.cache.format import STRING_COLUMNS
from offline_ssld.errors import CacheError

DICTIONARY_COLUMNS = ("path_dir",)  # Arrow stores each distinct value once per shard
_NUMERIC_KINDS = "iuf"


def _write_arrow(path: Path, columns: dict[str, np.ndarray]) -> None:
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
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)


def _write_hdf5(path: Path, columns: dict[str, np.ndarray]) -> None:
    with h5py.File(path, "w") as fh:
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
        self, path: Path, memory: mmap.mmap | None, state: list[int], numeric: dict, strings: dict
    ):
        self.path = path
        self.state = state  # file_state() of the file as it was mapped
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
        """BLAKE3 of the mapped file bytes (the bytes the columns point into)."""
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        if self._memory is not None:
            hasher.update(memoryview(self._memory))
        return hasher.hexdigest()


def file_state(st: os.stat_result) -> list[int]:
    """What changes whenever a file is written, replaced or copied: size, times, inode."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _map_file(path: Path) -> tuple[mmap.mmap | None, list[int]]:
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        memory = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if st.st_size else None
        return memory, file_state(st)


def _map_arrow(path: Path) -> MappedShard:
    memory, state = _map_file(path)
    if memory is None:
        raise CacheError(f"{path}: empty file")
    reader = pa.ipc.open_file(pa.py_buffer(memory))
    if reader.num_record_batches != 1:
        raise CacheError(f"{path}: expected one record batch, found {reader.num_record_batches}")
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
    return MappedShard(path, memory, state, numeric, strings)


def _map_hdf5(path: Path) -> MappedShard:
    memory, state = _map_file(path)
    file_bytes = len(memory) if memory is not None else 0
    numeric: dict[str, np.ndarray] = {}
    strings: dict = {}
    with h5py.File(path, "r") as fh:
        for name in fh:
            dataset = fh[name]
            if not isinstance(dataset, h5py.Dataset):
                raise CacheError(f"{path}: '{name}' is not a dataset")
            nbytes = dataset.size * dataset.dtype.itemsize
            # Shards are written uncompressed: a column claiming more bytes than the file
            # holds is damaged, and reading it would allocate that much memory first.
            if nbytes > file_bytes:
                raise CacheError(f"{path}: column '{name}' claims more bytes than the file holds")
            if name in STRING_COLUMNS:
                data = np.array(dataset.asstr("utf-8")[()], dtype=object)
                if data.ndim != 1:
                    raise CacheError(f"{path}: column '{name}' is not 1-D")
                strings[name] = (len(data), lambda data=data: data)
                continue
            if dataset.ndim != 2 or dataset.dtype.kind not in _NUMERIC_KINDS:
                raise CacheError(f"{path}: column '{name}' is not a 2-D numeric array")
            if dataset.chunks is not None or dataset.compression is not None:
                raise CacheError(f"{path}: column '{name}' is not stored contiguously")
            offset = dataset.id.get_offset()
            if nbytes == 0:
                numeric[name] = np.zeros(dataset.shape, dataset.dtype)
                continue
            if memory is None or offset is None or offset < 0 or offset + nbytes > file_bytes:
                raise CacheError(f"{path}: column '{name}' lies outside the file")
            flat = np.frombuffer(memory, dtype=dataset.dtype, count=dataset.size, offset=offset)
            numeric[name] = flat.reshape(dataset.shape)
    return MappedShard(path, memory, state, numeric, strings)


@dataclass(frozen=True)
class Backend:
    """One shard file format: its Offline.format name, shard file suffix, a one-line
    description (overlay summary, README) and its writer and mapper. No backend takes
    settings yet; one that does declares its Offline keys here, as codecs do."""

    name: str
    suffix: str
    description: str
    write: Callable[[Path, dict[str, np.ndarray]], None]
    map: Callable[[Path], MappedShard]


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


def write_columns(backend: str, path: Path, columns: dict[str, np.ndarray]) -> None:
    BACKENDS[backend].write(path, columns)


def map_shard(backend: str, path: Path) -> MappedShard:
    """Map a shard file and parse its structure; CacheError names the file on any damage."""
    try:
        return BACKENDS[backend].map(path)
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
        pa.ArrowException,
    ) as exc:
        raise CacheError(
            f"{path}: cannot parse {backend} shard ({type(exc).__name__}: {exc})"
        ) from None


def read_columns(backend: str, path: Path) -> dict[str, np.ndarray]:
    """Every column of a shard, copied into memory (audits and tests, not the training path)."""
    shard = map_shard(backend, path)
    out = {name: np.array(values) for name, values in shard.numeric.items()}
    try:
        for name in shard.names - set(shard.numeric):
            out[name] = shard.strings(name)
    except (pa.ArrowException, ValueError, UnicodeDecodeError) as exc:
        raise CacheError(f"{path}: cannot parse {backend} shard ({exc})") from None
    return out
