"""Batches handed from loader workers to the consumer through shared memory, not a pipe.

A batch of 64 float32 224x224 images is 38 MB; sent through multiprocessing's pipe it is
pickled, written, read and unpickled (four copies, the consumer's CPU busy for two). Here the
parent maps an anonymous shared region before forking the workers, cut into one slot per batch
in flight; a worker copies its batch's arrays into its slot and returns only their (dtype,
shape, offset), and the consumer reads them in place.
"""

from __future__ import annotations

import contextlib
import mmap
from dataclasses import dataclass

import numpy as np

_ALIGN = 64


@dataclass(frozen=True)
class Placed:
    """An array that lives in a slot of the arena."""

    dtype: str
    shape: tuple[int, ...]
    offset: int


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class Arena:
    """`slots` equal slots of `slot_bytes` in a MAP_SHARED anonymous mapping: made before
    the fork, it is the same memory in the parent and in every worker."""

    def __init__(self, slots: int, slot_bytes: int):
        self.slots, self.slot_bytes = slots, _aligned(max(slot_bytes, 1))
        self._map = mmap.mmap(-1, self.slots * self.slot_bytes)
        self._buffer = np.frombuffer(self._map, np.uint8)

    @staticmethod
    def slot_size(sample: tuple[np.ndarray, ...], batch: int) -> int:
        """Bytes a batch of `batch` samples needs, from a collated batch of one."""
        return sum(_aligned(field.nbytes * batch) for field in sample)

    def put(self, slot: int, fields: tuple[np.ndarray, ...]) -> tuple[Placed | np.ndarray, ...]:
        """Copy `fields` into `slot`; any that do not fit stay arrays (pickled as before)."""
        base, used = slot * self.slot_bytes, 0
        out: list[Placed | np.ndarray] = []
        for field in fields:
            field = np.ascontiguousarray(field)
            size = _aligned(field.nbytes)
            if used + size > self.slot_bytes or field.dtype.hasobject:
                out.append(field)
                continue
            start = base + used
            self._buffer[start : start + field.nbytes] = field.reshape(-1).view(np.uint8)
            out.append(Placed(field.dtype.str, field.shape, start))
            used += size
        return tuple(out)

    def get(self, fields: tuple[Placed | np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """The arrays `put` placed, as views of the arena (valid until the slot is reused)."""
        out = []
        for field in fields:
            if isinstance(field, Placed):
                dtype = np.dtype(field.dtype)
                count = int(np.prod(field.shape, dtype=np.int64))
                view = np.frombuffer(self._map, dtype, count, field.offset)
                out.append(view.reshape(field.shape))
            else:
                out.append(field)
        return tuple(out)

    def close(self) -> None:
        """Unmap now, or (while a consumer still holds a view) when the last view goes."""
        del self._buffer
        with contextlib.suppress(BufferError):
            self._map.close()
