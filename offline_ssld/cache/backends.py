"""Shard backends: one function pair per file format, columns in, columns out.

A shard is a dict of columns: `path` is an array of str, every other column a 2-D numpy
array (rows x width). Both backends store exactly that, so a row read back from HDF5 equals
the same row read back from Arrow. Parsing errors of a damaged or hostile file become
CacheError naming the file.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa

from offline_ssld.errors import CacheError

STRING_COLUMNS = ("path",)


def _write_arrow(path: Path, columns: dict[str, np.ndarray]) -> None:
    arrays, names = [], []
    for name, values in columns.items():
        if name in STRING_COLUMNS:
            arrays.append(pa.array([str(v) for v in values], type=pa.string()))
        else:
            flat = pa.array(np.ascontiguousarray(values).reshape(-1))
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, values.shape[1]))
        names.append(name)
    batch = pa.RecordBatch.from_arrays(arrays, names=names)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)


def _read_arrow(path: Path) -> dict[str, np.ndarray]:
    # Read fully into memory instead of keeping a memory map open: shards are small, and the
    # bytes were just checksummed, so a later change of the file cannot reach the parser.
    with pa.memory_map(str(path), "r") as source:
        table = pa.ipc.open_file(source).read_all()
        # Bounds-check every offset and length first: pyarrow trusts them otherwise, and a
        # damaged or hostile file could make the conversions below read out of bounds.
        table.validate(full=True)
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if name in STRING_COLUMNS:
            out[name] = np.array(column.to_pylist(), dtype=object)
        elif pa.types.is_fixed_size_list(column.type):
            width = column.type.list_size
            values = column.flatten().to_numpy(zero_copy_only=False)
            out[name] = values.reshape(len(column), width).copy()
        else:
            raise CacheError(f"{path}: column '{name}' has unexpected type {column.type}")
    return out


def _write_hdf5(path: Path, columns: dict[str, np.ndarray]) -> None:
    with h5py.File(path, "w") as fh:
        for name, values in columns.items():
            if name in STRING_COLUMNS:
                # Fixed-length, not variable-length: those live in HDF5's global heap, and a
                # damaged heap can make libhdf5 loop forever. Raw UTF-8 bytes, decoded on read.
                encoded = [str(v).encode("utf-8") for v in values]
                width = max([1, *map(len, encoded)])
                fh.create_dataset(name, data=np.array(encoded, dtype=f"S{width}"))
            else:
                fh.create_dataset(name, data=np.ascontiguousarray(values))


def _read_hdf5(path: Path) -> dict[str, np.ndarray]:
    # One read per column: whole-shard reads avoid HDF5's slow per-row access.
    out: dict[str, np.ndarray] = {}
    file_bytes = path.stat().st_size
    with h5py.File(path, "r") as fh:
        for name in fh:
            dataset = fh[name]
            if not isinstance(dataset, h5py.Dataset):
                raise CacheError(f"{path}: '{name}' is not a dataset")
            # Shards are written uncompressed: a column claiming more bytes than the file
            # holds is damaged, and reading it would allocate that much memory first.
            if dataset.size * dataset.dtype.itemsize > file_bytes:
                raise CacheError(f"{path}: column '{name}' claims more bytes than the file holds")
            if name in STRING_COLUMNS:
                strings = np.array(dataset.asstr("utf-8")[()], dtype=object)
                if strings.ndim != 1:
                    raise CacheError(f"{path}: column '{name}' is not 1-D")
                out[name] = strings
            else:
                data = dataset[()]
                if data.ndim != 2:
                    raise CacheError(f"{path}: column '{name}' is not 2-D")
                out[name] = data
    return out


_WRITERS = {"arrow": _write_arrow, "hdf5": _write_hdf5}
_READERS = {"arrow": _read_arrow, "hdf5": _read_hdf5}


def write_columns(backend: str, path: Path, columns: dict[str, np.ndarray]) -> None:
    _WRITERS[backend](path, columns)


def read_columns(backend: str, path: Path) -> dict[str, np.ndarray]:
    try:
        return _READERS[backend](path)
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
