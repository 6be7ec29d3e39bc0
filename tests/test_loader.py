"""BatchLoader: order, prefetch, and errors that reach the caller instead of hanging."""

from __future__ import annotations

import numpy as np
import pytest

from offline_ssld.data.loader import BatchLoader
from offline_ssld.errors import DataError


class Items:
    def __init__(self, bad: int | None = None):
        self.bad = bad

    def __getitem__(self, i: int):
        if i == self.bad:
            raise DataError(f"item {i} is bad")
        return np.full((2, 3), i, dtype=np.float32), np.int64(i)


BATCHES = [[0, 1, 2], [3, 4], [5, 6, 7], [8]]


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_in_order(workers):
    got = [label.numpy().tolist() for _, label in BatchLoader(Items(), BATCHES, workers, 2)]
    assert got == BATCHES


@pytest.mark.parametrize("workers", [0, 2])
def test_dataset_error_reaches_caller(workers):
    with pytest.raises(DataError, match="item 6 is bad"):
        for _ in BatchLoader(Items(bad=6), BATCHES, workers, 2):
            pass


@pytest.mark.parametrize("workers", [0, 2])
def test_stopping_early_does_not_hang(workers):
    for x, _ in BatchLoader(Items(), BATCHES * 20, workers, 2):
        assert x.shape == [3, 2, 3]
        break


def test_stopping_early_with_worker_processes_never_hangs():
    """Precise BN reads a few batches and stops; the pool must then shut down cleanly. With
    terminate() it deadlocked now and then (a killed worker holding the task queue's lock)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import numpy as np
        from offline_ssld.data.loader import BatchLoader

        class Data:
            def __len__(self):
                return 4096
            def __getitem__(self, i):
                return (np.full((3, 224, 224), i, np.float32), np.int64(i))

        batches = [list(range(i, i + 8)) for i in range(0, 4096, 8)]
        for _ in range(30):
            for n, batch in enumerate(BatchLoader(Data(), batches, num_workers=2)):
                if n == 2:
                    break
        print("done")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0 and "done" in done.stdout, done.stderr[-2000:]
