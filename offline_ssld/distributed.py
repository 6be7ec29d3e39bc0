"""Rank, world size and the few collectives the commands need; no-ops in a single process.

Under `python -m paddle.distributed.launch --nproc_per_node N $(which offline-ssld) ...` every
process sees PADDLE_TRAINER_ID (its rank) and PADDLE_TRAINERS_NUM (the world size). Only then
is the process group initialised (once, by `init`), so a plain `offline-ssld ...` never
touches paddle.distributed.
"""

from __future__ import annotations

import os

import paddle

_initialized = False


def rank() -> int:
    return int(os.environ.get("PADDLE_TRAINER_ID", "0"))


def world_size() -> int:
    return max(1, int(os.environ.get("PADDLE_TRAINERS_NUM", "1")))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes manifests, checkpoints, metrics."""
    return rank() == 0


def init() -> None:
    """Initialise the process group once (after the device is chosen); nothing in one process."""
    global _initialized
    if _initialized or not is_distributed():
        return
    paddle.distributed.init_parallel_env()
    _initialized = True


def barrier() -> None:
    if is_distributed():
        init()
        paddle.distributed.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of python numbers over all ranks (float64); the input in one process."""
    if not is_distributed():
        return [float(v) for v in values]
    init()
    tensor = paddle.to_tensor([float(v) for v in values], dtype="float64")
    paddle.distributed.all_reduce(tensor)
    return [float(v) for v in tensor.numpy()]
