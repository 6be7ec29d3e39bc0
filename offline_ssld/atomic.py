"""The one durable atomic write: a file appears under its final name whole, or not at all.

Every writer of the project (cache shards and manifest, checkpoints, converted weights) goes
through here, so a kill or a full disk never leaves half a file and a power cut after the
rename never loses it: the file is fsynced before the rename and its directory after it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

TMP_MARK = ".tmp-"  # temporary names are `.<final name>.tmp-<pid>`


def tmp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(tmp: Path, final: Path) -> None:
    """Make a fully written temporary file visible under its final name, durably."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)`, then commit it over `path`; on any failure the old file stays and no
    temporary file is left behind."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        write(tmp)
        commit_file(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
