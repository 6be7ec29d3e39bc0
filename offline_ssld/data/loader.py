"""Batches made ahead of the training or inference step, with errors that reach the caller.

Paddle's DataLoader (3.3) hangs forever when a dataset raises in single-process mode: its
prefetch thread dies without closing the queue the main thread waits on. A bad image must stop
a run with its name, so batches are built here: in a thread when num_workers is 0, else in
forked worker processes, with at most `prefetch` batches in flight (bounded memory) and any
exception re-raised in the consumer. Workers hand their batches over in shared memory
(data/shm.py), not through a pipe.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import paddle

from offline_ssld.data.shm import Arena

_DATASET: Any = None  # set in the parent before forking; workers inherit it
_ARENA: Arena | None = None  # likewise


class BatchSampler(Protocol):
    """What the loader needs of a batch sampler: index lists, and how many there are."""

    def __iter__(self) -> Iterator[list[int]]: ...

    def __len__(self) -> int: ...


def collate(samples: list[tuple]) -> tuple[np.ndarray, ...]:
    return tuple(np.stack(field) for field in zip(*samples, strict=True))


def _quiet_worker() -> None:
    # Paddle installs a handler that prints a stack dump on SIGTERM; a pool stopping its
    # workers is not a crash.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def fetch(dataset, indices: list[int]) -> tuple[np.ndarray, ...]:
    """One collated batch; a dataset with `get_batch(indices)` builds it whole (e.g. to decode
    all its targets at once), any other is read item by item."""
    get_batch = getattr(dataset, "get_batch", None)
    if get_batch is not None:
        return get_batch(indices)
    return collate([dataset[i] for i in indices])


def _cpu_tensor(field: np.ndarray) -> paddle.Tensor:
    """A CPU tensor of `field`: a copy when it is a view (of a shared slot the next batch
    reuses), wrapped without a second copy (the tensor keeps the array alive). Measured about
    a quarter of paddle.to_tensor's time on a float32 batch of 64 at 224 px."""
    owned = field if field.flags.owndata and field.flags.c_contiguous else np.array(field)
    return paddle.Tensor(owned, paddle.CPUPlace(), False, True)


def _fetch(indices: list[int], slot: int) -> tuple:
    fields = fetch(_DATASET, indices)
    return fields if _ARENA is None else _ARENA.put(slot, fields)


class BatchLoader:
    """Iterate over `batch_sampler`'s index lists, yielding tuples of paddle Tensors."""

    def __init__(
        self, dataset, batch_sampler: BatchSampler, num_workers: int = 0, prefetch: int = 4
    ):
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.num_workers = max(0, int(num_workers))
        self.prefetch = max(1, prefetch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple]:
        batches = list(iter(self.batch_sampler))
        source = self._processes(batches) if self.num_workers else self._thread(batches)
        on_cpu = paddle.get_device() == "cpu"
        for batch in source:
            yield tuple(
                _cpu_tensor(field) if on_cpu else paddle.to_tensor(field) for field in batch
            )

    def _thread(self, batches: list[list[int]]) -> Iterator[tuple[np.ndarray, ...]]:
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce() -> None:
            try:
                for indices in batches:
                    if stop.is_set():
                        return
                    out.put((fetch(self.dataset, indices), None))
            except BaseException as exc:  # handed to the consumer, raised there
                out.put((None, exc))
                return
            out.put((None, None))

        worker = threading.Thread(target=produce, name="batch-loader", daemon=True)
        worker.start()
        try:
            while True:
                batch, error = out.get()
                if error is not None:
                    raise error
                if batch is None:
                    return
                yield batch
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    out.get_nowait()
                except queue.Empty:
                    worker.join(0.05)

    def _processes(self, batches: list[list[int]]) -> Iterator[tuple[np.ndarray, ...]]:
        global _DATASET, _ARENA
        if not batches:
            return
        _DATASET = self.dataset
        # One sample built here sizes the shared slots: one per batch in flight, plus the one
        # the consumer is reading.
        probe = fetch(self.dataset, batches[0][:1])
        slot_bytes = Arena.slot_size(probe, max(len(b) for b in batches))
        arena = _ARENA = Arena(self.prefetch + 1, slot_bytes)
        pool = mp.get_context("fork").Pool(self.num_workers, initializer=_quiet_worker)
        try:
            pending: deque = deque()
            free = list(range(arena.slots))
            todo = iter(batches)
            for indices in todo:
                slot = free.pop()
                pending.append((pool.apply_async(_fetch, (indices, slot)), slot))
                if len(pending) >= self.prefetch:
                    break
            while pending:
                result, slot = pending.popleft()
                batch = arena.get(result.get())  # re-raises a worker's exception here
                nxt = next(todo, None)
                if nxt is not None:
                    spare = free.pop()
                    pending.append((pool.apply_async(_fetch, (nxt, spare)), spare))
                yield batch  # the consumer copies it out before asking for the next one
                free.append(slot)
        except BaseException:  # an error, or the consumer stopped early (precise BN does)
            # No terminate(): killing a worker that holds the task queue's lock deadlocks the
            # pool's own shutdown (seen as a hang at exit). At most `prefetch` batches are
            # queued; the workers finish them and leave on close's sentinel.
            raise
        finally:
            pool.close()
            pool.join()
            _ARENA = None
            arena.close()
