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
