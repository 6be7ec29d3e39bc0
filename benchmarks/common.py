"""What every benchmark records about the machine it ran on, so results can be compared."""

from __future__ import annotations

import os
import platform


def machine_info() -> dict:
    import h5py
    import numpy
    import paddle
    import pyarrow

    cpu = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")),
                None,
            )
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "paddle": paddle.__version__,
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "device": "cpu",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def reproduce_command() -> str:
    """The command line of this run as a reader types it: `python`, not this machine's
    interpreter path."""
    import shlex
    import sys

    return shlex.join(["python", *sys.argv])


def recipe(cfg: dict) -> dict:
    """The training batch and base lr a loaded config runs with. Results record them because a
    shipped config's recipe can change between runs, and a reproduce command alone would not
    say which one a file measured."""
    from offline_ssld.config.specs import data_spec

    return {
        "batch_size": data_spec(cfg, "Train").batch_size,
        "lr": cfg["Optimizer"]["lr"]["learning_rate"],
    }


def t_quantile95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with `df` degrees of freedom, exact for any
    df (SciPy, installed with paddleclas); every interval the benchmarks report uses it."""
    from scipy.stats import t

    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return float(t.ppf(0.975, df))


def mean_ci(values: list[float]) -> dict:
    """Mean, sample std and the half-width of the 95% t interval of per-seed values."""
    import math
    import statistics

    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": round(mean, 5), "std": None, "ci95": None, "values": values}
    std = statistics.stdev(values)
    half = t_quantile95(len(values) - 1) * std / math.sqrt(len(values))
    return {"mean": round(mean, 5), "std": round(std, 5), "ci95": round(half, 5), "values": values}


def rotated(modes: list[str], round_index: int, rounds: int) -> list[str]:
    """The round's order: the mode list rotated so each mode's position moves across rounds
    (with as many rounds as modes, every mode runs first once)."""
    shift = (round_index * len(modes)) // max(rounds, 1) % len(modes)
    return modes[shift:] + modes[:shift]
