"""Reading files we did not write, and naming bytes by their content: one home each.

Safe opens: every read of a file named by a list, a cache or a manifest is capped in size,
refused unless it is a regular file, and (for relative names) contained in its root, so a
FIFO, a huge file or a `../` path never hangs, floods or escapes a run.

Content keys: a cache row belongs to the bytes of an image, not to its position in a list,
so renaming or reordering files never makes a cache silently wrong. BLAKE3 is used because
it is a cryptographic hash (nobody can craft two images that share a key) and still hashes at
several GB/s; the digest is cut to 128 bits (KEY_BYTES), which keeps collisions out of reach.
(Atomic writes live in offline_ssld/atomic.py.)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import blake3

from offline_ssld.errors import DataError

KEY_BYTES = 16


def content_key(data: bytes) -> bytes:
    """The cache key of an image: the first 128 bits of the BLAKE3 hash of its file bytes."""
    return blake3.blake3(data).digest(length=KEY_BYTES)


def safe_relpath(raw: str, where: str) -> str:
    """`raw` normalised, refused if absolute, leaving its root or holding a NUL byte."""
    if "\0" in raw:  # the OS cannot open such a path (Python raises ValueError, not OSError)
        raise DataError(f"{where}: path {raw!r} contains a NUL byte")
    if raw.startswith(("/", "\\")) or (len(raw) > 1 and raw[1] == ":"):
        raise DataError(f"{where}: path {raw!r} is absolute; paths must be relative to image_root")
    norm = os.path.normpath(raw)
    if norm == ".." or norm.startswith(".." + os.sep) or norm == ".":
        raise DataError(f"{where}: path {raw!r} leaves image_root")
    return norm


def open_regular(path: Path, where: str, max_bytes: int, error: type[Exception] = DataError):
    """Open `path` for reading only if it is a regular file of at most `max_bytes` bytes.

    Opened non-blocking, so a FIFO or device is refused by `fstat` instead of hanging the
    open; the size is checked on the open descriptor, so what is read is what was checked.
    Every read of a file named by a list, a cache or a manifest goes through here."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"{where}: cannot read {path} ({exc.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise error(f"{where}: cannot read {path}: not a regular file")
    if st.st_size > max_bytes:
        os.close(fd)
        raise error(f"{where}: {path} holds {st.st_size} bytes, above the limit of {max_bytes}")
    return os.fdopen(fd, "rb")


def read_regular(path: Path, where: str, max_bytes: int, error: type[Exception] = DataError):
    """The bytes of `path` through `open_regular`; a file that grows past the cap while it is
    read is refused too."""
    with open_regular(path, where, max_bytes, error) as fh:
        try:
            # Ask for the size fstat gave (+1 to notice growth): asking for max_bytes makes
            # Python allocate that much first, which cost more than reading a JPEG.
            expected = os.fstat(fh.fileno()).st_size
            data = fh.read(expected + 1)
            if len(data) > expected:
                data += fh.read(max_bytes + 1 - len(data))
        except OSError as exc:
            raise error(f"{where}: cannot read {path} ({exc.strerror})") from None
    if len(data) > max_bytes:
        raise error(f"{where}: {path} grew above the limit of {max_bytes} bytes")
    return data


def inside(
    root: str | Path,
    relpath: str,
    where: str,
    error: type[Exception] = DataError,
    root_name: str = "image_root",
) -> Path:
    """`root/relpath` resolved, refused if `relpath` is absolute, holds `..` or a NUL byte, or
    resolves (through symlinks) outside `root`. The one containment check: list files, the
    paths a cache stores and the files a cache directory holds all go through it."""
    try:
        rel = safe_relpath(relpath, where)
    except DataError as exc:
        raise error(str(exc)) from None
    base = Path(root).resolve()
    full = (base / rel).resolve()
    if full != base and base not in full.parents:
        raise error(f"{where}: {relpath!r} resolves outside {root_name} ({full})")
    return full
