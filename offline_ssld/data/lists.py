"""PaddleClas list files (`relative/path.jpg <label>` per line), path safety and content hashing.

Content hashes key the cache: a row belongs to the bytes of an image, not to its position in a
list, so renaming or reordering files never makes a cache silently wrong. BLAKE3 is used
because it is a cryptographic hash (nobody can craft two images that share a key) and still
hashes at several GB/s; the digest is cut to 128 bits, which keeps collisions out of reach.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3

from offline_ssld.errors import DataError

KEY_BYTES = 16
UNLABELED = -1


@dataclass(frozen=True)
class Sample:
    """One list line: path relative to image_root, label (-1 if none), 1-based line number;
    a multi-label list's line has its attribute vector instead (and label -1)."""

    path: str
    label: int
    line: int
    attributes: tuple[int, ...] = ()


def content_key(data: bytes) -> bytes:
    """The cache key of an image: the first 128 bits of the BLAKE3 hash of its file bytes."""
    return blake3.blake3(data).digest(length=KEY_BYTES)


def _safe_relpath(raw: str, where: str) -> str:
    if "\0" in raw:  # the OS cannot open such a path (Python raises ValueError, not OSError)
        raise DataError(f"{where}: path {raw!r} contains a NUL byte")
    if raw.startswith(("/", "\\")) or (len(raw) > 1 and raw[1] == ":"):
        raise DataError(f"{where}: path {raw!r} is absolute; paths must be relative to image_root")
    norm = os.path.normpath(raw)
    if norm == ".." or norm.startswith(".." + os.sep) or norm == ".":
        raise DataError(f"{where}: path {raw!r} leaves image_root")
    return norm


def read_list(
    list_path: str | Path,
    class_num: int | None = None,
    delimiter: str | None = None,
    multilabel: bool = False,
) -> list[Sample]:
    """Parse a list file; every malformed line is an error naming the file and line.

    Fields are split on whitespace, or exactly on `delimiter` when the dataset sets one other
    than a space (PaddleClas's `delimiter: "\t"` lets paths hold spaces).

    A line holding only a path is an unlabeled image (label -1): SSLD learns from unlabeled
    data too. Blank lines are skipped. A path listed twice is an error (it would be seen twice
    per epoch by accident); two different paths with the same bytes are fine.

    `multilabel` reads PaddleClas's MultiLabelDataset format, `path<TAB>a1,a2,...`: one
    value per attribute, 1 present, 0 absent, -1 left out (PaddleClas's metric ignores it).
    """
    list_path = Path(list_path)
    try:
        raw_lines = list_path.read_bytes().splitlines()
    except OSError as exc:
        raise DataError(f"{list_path}: cannot read list file ({exc.strerror})") from None
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(raw_lines, start=1):
        where = f"{list_path}:{number}"
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DataError(f"{where}: line is not valid UTF-8") from None
        if not line:
            continue
        fields = line.split(delimiter) if delimiter not in (None, " ") else line.split()
        if multilabel:
            path = _safe_relpath(fields[0], where)
            attributes = _attributes(fields, class_num, where)
            if path in seen:
                raise DataError(f"{where}: path {path!r} already listed on line {seen[path]}")
            seen[path] = number
            samples.append(Sample(path, UNLABELED, number, attributes))
            continue
        if len(fields) > 2:
            raise DataError(f"{where}: expected 'path [label]', got {len(fields)} fields")
        path = _safe_relpath(fields[0], where)
        label = UNLABELED
        if len(fields) == 2:
            try:
                label = int(fields[1])
            except ValueError:
                raise DataError(f"{where}: label {fields[1]!r} is not an integer") from None
            if label < 0 or (class_num is not None and label >= class_num):
                bound = f"[0, {class_num})" if class_num is not None else ">= 0"
                raise DataError(f"{where}: label {label} outside {bound}")
        if path in seen:
            raise DataError(f"{where}: path {path!r} already listed on line {seen[path]}")
        seen[path] = number
        samples.append(Sample(path, label, number))
    if not samples:
        raise DataError(f"{list_path}: list file holds no images")
    return samples


def _attributes(fields: list[str], class_num: int | None, where: str) -> tuple[int, ...]:
    """The attribute vector of a multi-label line's second field."""
    if len(fields) != 2:
        raise DataError(f"{where}: expected 'path<TAB>a1,a2,...', got {len(fields)} fields")
    try:
        values = tuple(int(v) for v in fields[1].split(","))
    except ValueError:
        raise DataError(f"{where}: attributes {fields[1]!r} are not integers") from None
    if class_num is not None and len(values) != class_num:
        raise DataError(f"{where}: {len(values)} attributes, class_num is {class_num}")
    if any(v not in (-1, 0, 1) for v in values):
        raise DataError(f"{where}: attributes must be 1, 0 or -1, got {fields[1]!r}")
    return values


MAX_IMAGE_BYTES = 256 << 20
"""Largest image file read (a 64-megapixel BMP, the decoder's pixel limit, is 192 MiB)."""


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
        rel = _safe_relpath(relpath, where)
    except DataError as exc:
        raise error(str(exc)) from None
    base = Path(root).resolve()
    full = (base / rel).resolve()
    if full != base and base not in full.parents:
        raise error(f"{where}: {relpath!r} resolves outside {root_name} ({full})")
    return full


def resolve(image_root: str | Path, sample: Sample, list_path: str | Path) -> Path:
    """Absolute path of a sample; symlinks that lead outside image_root are refused."""
    return inside(image_root, sample.path, f"{list_path}:{sample.line}")


def read_image_bytes(
    image_root: str | Path,
    sample: Sample,
    list_path: str | Path,
    error: type[Exception] = DataError,
) -> bytes:
    """An image's bytes, through the one containment check and the one capped reader."""
    where = f"{list_path}:{sample.line}"
    path = inside(image_root, sample.path, where, error)
    return read_regular(path, where, MAX_IMAGE_BYTES, error)


def hash_images(
    image_root: str | Path,
    samples: list[Sample],
    list_path: str | Path,
    check=None,
    threads: int = 8,
) -> list[bytes | DataError]:
    """Content keys for all samples, read in threads (BLAKE3 and file reads release the GIL).

    `check(data)` may raise DataError (for example a trial decode); failures are returned in
    place of the key so the caller decides between stopping and `--skip-bad`.
    """

    def one(sample: Sample) -> bytes | DataError:
        try:
            data = read_image_bytes(image_root, sample, list_path)
            if check is not None:
                try:
                    check(data)
                except DataError as exc:
                    raise DataError(f"{list_path}:{sample.line}: {sample.path}: {exc}") from None
            return content_key(data)
        except DataError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, samples, chunksize=64))


PROBE_HEAD = 16 << 10  # enough for the header of nearly every image (JPEG EXIF included)
PROBE_TAIL = 4 << 10  # where two photos of one size differ: the last entropy-coded bytes


def probe_key(data: bytes) -> bytes:
    """A file's probe: its content key when it is small enough to be read whole by the
    probe, else BLAKE3 of its size, head and tail. Equal files have equal probes; files with
    equal probes are hashed in full before they are taken for duplicates."""
    if len(data) <= PROBE_HEAD + PROBE_TAIL:
        return content_key(data)
    return _probe_digest(len(data), data[:PROBE_HEAD], data[-PROBE_TAIL:])


def _probe_digest(size: int, head: bytes, tail: bytes) -> bytes:
    hasher = blake3.blake3(size.to_bytes(8, "little"))
    hasher.update(head)
    hasher.update(tail)
    return hasher.digest(length=KEY_BYTES)


def probe_images(
    image_root: str | Path,
    samples: list[Sample],
    list_path: str | Path,
    vouch=None,
    check=None,
    threads: int = 8,
) -> list[bytes | DataError]:
    """`probe_key` of every sample, reading at most PROBE_HEAD + PROBE_TAIL bytes of a file:
    the cost grows with the list, not with the bytes of its images.

    `vouch(head, tail, size)` says whether the header and ending show a whole image (it may
    raise DataError); a file it does not vouch for is read whole and given to `check(data)`
    (a trial decode). Failures are returned in place of the probe, naming the list line, so
    the caller decides between stopping and `--skip-bad`."""

    def one(sample: Sample) -> bytes | DataError:
        where = f"{list_path}:{sample.line}"
        try:
            head, tail, size = _ends(inside(image_root, sample.path, where), where)
            whole = len(head) >= size
            try:
                if vouch is not None and vouch(head, tail, size):
                    return content_key(head) if whole else _probe_digest(size, head, tail)
                data = head if whole else read_image_bytes(image_root, sample, list_path)
                if check is not None:
                    check(data)
                return probe_key(data)
            except DataError as exc:
                if str(exc).startswith(where):  # a read error names the line already
                    raise
                raise DataError(f"{where}: {sample.path}: {exc}") from None
        except DataError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, samples, chunksize=64))


def _ends(path: Path, where: str) -> tuple[bytes, bytes, int]:
    """(head, tail, size) of a file: the whole file as both ends when the probe reads it all."""
    with open_regular(path, where, MAX_IMAGE_BYTES) as fh:
        size = os.fstat(fh.fileno()).st_size
        try:
            head = fh.read(PROBE_HEAD + PROBE_TAIL)
            if len(head) >= size:
                return head, head, len(head)
            fh.seek(max(size - PROBE_TAIL, len(head)))
            tail = (head + fh.read(PROBE_TAIL))[-PROBE_TAIL:]
        except OSError as exc:
            raise DataError(f"{where}: cannot read {path} ({exc.strerror})") from None
    return head[:PROBE_HEAD], tail, size
