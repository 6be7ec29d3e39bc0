"""A cache from elsewhere cannot make offline-ssld read outside it, hang, or allocate what its
files claim; a resume deletes only what the dump wrote. Each hostile cache here is
consistent (checksums and the manifest's own checksums recomputed), as an attacker's would be.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa

from offline_ssld.cache import backends
from offline_ssld.cache.backends import read_columns
from offline_ssld.cache.format import MANIFEST, ShardInfo, file_checksum, load_manifest
from offline_ssld.cache.writer import open_cache
from offline_ssld.config import loading, specs
from offline_ssld.errors import OfflineSSLDError
from offline_ssld.tools.audit import verify_cache
from tests.helpers import open_for_training, plan_cache, write_cache
from tests.reliability.common import HOSTILE, dump_both_backends

SECONDS = 60  # a refusal takes well under a second; an open that blocks on a FIFO never ends
BOMB_ROWS = 2_000_000  # a 32 MB key column, compressed to a few kB


class Hung(Exception):
    pass


def _bounded(call: Callable[[], object]) -> object:
    """`call()`, failing instead of hanging (SIGALRM interrupts a blocking open)."""

    def alarm(signum, frame):
        raise Hung(f"no answer within {SECONDS} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(SECONDS)
    try:
        return call()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _refusal(call: Callable[[], object]) -> str | None:
    """The one-line error `call` refuses with, or None if it succeeds."""
    try:
        _bounded(call)
    except OfflineSSLDError as exc:
        return str(exc) if "\n" not in str(exc) else f"NOT ONE LINE: {exc}"
    return None


def _resign(cache: Path, number: int | None = None) -> None:
    """Recompute shard `number`'s checksum and size, and the manifest's own checksums."""
    manifest = load_manifest(cache)
    if number is not None:
        info = manifest.shards[number]
        path = cache / info.name
        size = path.stat().st_size
        manifest.shards[number] = ShardInfo(
            info.name, info.rows, info.images, file_checksum(path, size), size
        )
    manifest.save(cache)


def _rewrite_paths(cache: Path, backend: str, path_dir: str, path_name: str) -> None:
    """Every image of shard 0 renamed to `path_dir/path_name`, the cache re-signed."""
    manifest = load_manifest(cache)
    shard = cache / manifest.shards[0].name
    columns = read_columns(backend, shard, manifest.shards[0].images)
    images = len(columns["key"])
    columns["path_dir"] = np.array([path_dir] * images, dtype=object)
    columns["path_name"] = np.array([path_name] * images, dtype=object)
    backends.write_columns(backend, shard, columns, manifest.dump_id)
    _resign(cache, 0)


def _bomb(cache: Path, backend: str, rows: int, compressed: bool) -> None:
    """Shard 0 replaced by a shard of `rows` rows (compressed if asked), the cache re-signed:
    its file is small, its decoded columns would not be."""
    manifest = load_manifest(cache)
    path = cache / manifest.shards[0].name
    if backend == "arrow":
        keys = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(rows * 16, np.uint8)), 16)
        batch = pa.RecordBatch.from_arrays([keys], names=["key"])
        options = pa.ipc.IpcWriteOptions(compression="zstd" if compressed else None)
        with (
            pa.OSFile(str(path), "wb") as sink,
            pa.ipc.new_file(sink, batch.schema, options=options) as writer,
        ):
            writer.write_batch(batch)
    else:
        path.unlink()
        with h5py.File(path, "w") as fh:
            kwargs = {"compression": "gzip", "chunks": (min(rows, 65536), 16)} if compressed else {}
            fh.create_dataset("key", data=np.zeros((rows, 16), np.uint8), **kwargs)
    _resign(cache, 0)


def test_hostile_caches_are_refused(project, monkeypatch, rlog):
    config, tmp = project
    caches = dump_both_backends(config, tmp)
    outside = tmp / "outside"
    outside.mkdir()
    fifo = outside / "fifo"
    os.mkfifo(fifo)
    cfg = loading.load_config([str(config)], [f"Offline.cache_dir={tmp / 'hostile'}"])
    image_root = Path(specs.data_spec(cfg, "Train").image_root)
    outcomes: Counter = Counter()
    failures: list[str] = []

    def train() -> object:
        return open_for_training(cfg)

    def verify(teacher_check: int = 0) -> Callable[[], object]:
        def run():
            report = verify_cache(tmp / "hostile", teacher_check, 0, cfg)
            if not report.ok:
                raise _VerifyProblem(report.problems[0])
            return report

        return run

    def case(name: str, backend: str, damage, checks: dict[str, tuple[Callable, str | None]]):
        """Copy the clean cache, `damage` it, and require each check to refuse with a line
        holding its text (None: to succeed)."""
        hostile = tmp / "hostile"
        shutil.rmtree(hostile, ignore_errors=True)
        shutil.copytree(caches[backend], hostile, symlinks=True)
        try:
            damage(hostile)
            problems = []
            for label, (call, expected) in checks.items():
                try:
                    line = _refusal(call)
                except _VerifyProblem as exc:
                    line = str(exc)
                except Hung as exc:
                    line = f"HUNG: {exc}"
                if (expected is None) != (line is None) or (
                    expected is not None and expected not in (line or "")
                ):
                    problems.append(f"{label}: {line!r} (expected {expected!r})")
        finally:
            for path in image_root.rglob("*"):  # undo image replacements
                if path.is_symlink() or path.is_fifo():
                    path.unlink()
                    shutil.copy(tmp / "images_backup" / path.relative_to(image_root), path)
        outcomes[f"{name}: {'as required' if not problems else 'FAILED'}"] += 1
        if problems:
            failures.append(f"{name}: {problems}")

    shutil.copytree(image_root, tmp / "images_backup")
    first_image = sorted(p for p in image_root.rglob("*") if p.is_file())[0]

    # --- paths a shard stores: read only under the config's image_root, as list paths are
    for what, (d, n), expected in [
        ("shard path absolute (/etc/hostname)", ("", "/etc/hostname"), "is absolute"),
        ("shard path absolute dir (/etc + hostname)", ("/etc", "hostname"), "is absolute"),
        ("shard path ../../etc/hostname", ("../..", "etc/hostname"), "leaves image_root"),
        ("shard path /dev/zero", ("/dev", "zero"), "is absolute"),
    ]:
        case(
            what,
            "arrow",
            lambda c, d=d, n=n: _rewrite_paths(c, "arrow", d, n),
            {"verify --teacher-check": (verify(1000), expected)},
        )

    def image_to(target: Path) -> Callable[[Path], None]:
        def damage(cache: Path) -> None:
            first_image.unlink()
            first_image.symlink_to(target)

        return damage

    def fifo_image(cache: Path) -> None:
        first_image.unlink()
        os.mkfifo(first_image)

    case(
        "image replaced by a symlink to a FIFO outside image_root",
        "arrow",
        image_to(fifo),
        {"verify --teacher-check": (verify(1000), "resolves outside image_root")},
    )
    case(
        "image replaced by a symlink to /dev/zero",
        "arrow",
        image_to(Path("/dev/zero")),
        {"verify --teacher-check": (verify(1000), "resolves outside image_root")},
    )
    case(
        "image replaced by a FIFO inside image_root",
        "arrow",
        fifo_image,
        {"verify --teacher-check": (verify(1000), "not a regular file")},
    )

    def manifest_names(**source) -> Callable[[Path], None]:
        def damage(cache: Path) -> None:
            manifest = load_manifest(cache)
            manifest.source.update(source)
            manifest.save(cache)

        return damage

    case(
        "manifest names a FIFO as teacher weights and / as image_root",
        "arrow",
        manifest_names(teacher_weights=str(fifo), image_root="/"),
        {"verify --teacher-check (config's weights and images)": (verify(16), None)},
    )

    # --- the files of the cache directory
    def shard_to(target: Path, number: int = 1) -> Callable[[Path], None]:
        def damage(cache: Path) -> None:
            shard = cache / load_manifest(cache).shards[number].name
            shard.unlink()
            shard.symlink_to(target)

        return damage

    def fifo_shard(cache: Path) -> None:
        shard = cache / load_manifest(cache).shards[1].name
        shard.unlink()
        os.mkfifo(shard)

    for backend in caches:
        for what, damage in [
            ("shard is a symlink to /dev/zero", shard_to(Path("/dev/zero"))),
            ("shard is a symlink to a FIFO outside", shard_to(fifo)),
            ("shard is a FIFO in the cache", fifo_shard),
        ]:
            case(
                f"{what} ({backend})",
                backend,
                damage,
                {
                    "verify": (verify(), "shard-00001"),
                    "train-student": (train, "shard-00001"),
                },
            )

    def manifest_to(target: Path) -> Callable[[Path], None]:
        def damage(cache: Path) -> None:
            (cache / MANIFEST).unlink()
            (cache / MANIFEST).symlink_to(target)

        return damage

    def huge_manifest(cache: Path) -> None:
        with open(cache / MANIFEST, "r+b") as fh:
            fh.truncate(65 << 20)  # sparse: nothing is written, a reader would get 65 MiB

    for what, damage, expected in [
        ("manifest.json is a symlink to /dev/zero", manifest_to(Path("/dev/zero")), "outside"),
        ("manifest.json is a symlink to a FIFO", manifest_to(fifo), "outside"),
        ("manifest.json of 65 MiB", huge_manifest, "above the limit"),
    ]:
        case(
            what,
            "arrow",
            damage,
            {"verify": (verify(), expected), "train-student": (train, expected)},
        )

    # --- declared sizes and compression bombs: refused before anything is decoded
    bomb: dict[str, int] = {}
    real_open = pa.ipc.open_file

    def guarded_open(source, *args, **kwargs):
        if len(source) == bomb.get("bytes"):
            raise AssertionError("pyarrow decoded a shard the manifest does not size")
        return real_open(source, *args, **kwargs)

    monkeypatch.setattr(backends.pa.ipc, "open_file", guarded_open)
    for backend in caches:
        arrow = backend == "arrow"
        for what, rows, compressed, expected in [
            (f"{BOMB_ROWS} rows compressed", BOMB_ROWS, True, f"{BOMB_ROWS}"),
            (
                "right row count, compressed",
                7,
                True,
                "compress" if arrow else "contiguous",
            ),
            (f"{BOMB_ROWS} rows uncompressed", BOMB_ROWS, False, "field 'bytes'"),
        ]:

            def damage(c: Path, rows=rows, compressed=compressed, backend=backend) -> None:
                shard = c / load_manifest(c).shards[0].name
                _bomb(c, backend, rows, compressed)
                bomb["bytes"] = shard.stat().st_size

            case(
                f"{backend} shard of {what}",
                backend,
                damage,
                {"verify": (verify(), expected), "train-student": (train, expected)},
            )
    monkeypatch.undo()
    assert all(verify_cache(c).ok for c in caches.values())
    rlog.record(
        HOSTILE,
        "Hostile caches (consistent checksums): shard paths outside image_root, symlinks to "
        "FIFOs and /dev/zero for images, shards and the manifest, manifest-named weights, a "
        "65 MiB manifest, compression bombs and huge row counts",
        outcomes,
        ok=not failures,
        goal="refused with one line naming the file (and row), without opening anything "
        "outside the cache or the config's image_root, without blocking and without decoding",
        notes=f"{sum(outcomes.values()) - len(failures)} of {sum(outcomes.values())} handled as "
        f"required. Bombs: {BOMB_ROWS} zero keys in a shard of a few kB (Arrow zstd, HDF5 "
        "gzip), refused from the Arrow footer and message headers or the HDF5 dataset shapes "
        "with pyarrow's decoder patched to fail if called. A blocking open would have "
        f"failed the case after {SECONDS} s (SIGALRM)."
        + (f" Failures: {failures}" if failures else ""),
    )
    assert not failures, failures


class _VerifyProblem(Exception):
    """verify reported a problem (exit 1) rather than raising: its first problem line."""


def test_resume_deletes_only_what_it_wrote(project, rlog):
    """Files a user put in a partly written cache: resume leaves every one in place and
    refuses, naming it; its own temporary files and shards it can prove it wrote are handled."""
    config, tmp = project
    outcomes: Counter = Counter()
    failures: list[str] = []
    other = tmp / "other"
    write_cache(plan_cache(config), other)  # the same dump, another cache (another dump id)

    def partial() -> Path:
        cache = tmp / "partial"
        shutil.rmtree(cache, ignore_errors=True)
        write_cache(plan_cache(config), cache, shards=[0])
        return cache

    user_files = {
        "random bytes under a shard name": ("shard-00002.arrow", lambda: b"user data" * 100),
        "a shard of another cache of the same dump": (
            "shard-00002.arrow",
            lambda: (other / "shard-00002.arrow").read_bytes(),
        ),
        "a shard name outside this cache's range": (
            "shard-99999.arrow",
            lambda: (other / "shard-00001.arrow").read_bytes(),
        ),
        "an unrelated shard-* file": ("shard-notes.txt", lambda: b"keep me"),
        "an hdf5 shard in an arrow cache": ("shard-00001.h5", lambda: b"\x89HDF\r\n"),
    }
    for what, (name, content) in user_files.items():
        cache = partial()
        data = content()
        (cache / name).write_bytes(data)
        line = _refusal(lambda c=cache: open_cache(c, plan_cache(config).manifest, keys=None))
        kept = (cache / name).exists() and (cache / name).read_bytes() == data
        ok = kept and line is not None and name in line
        outcomes[f"{what}: {'left in place, refused naming it' if ok else 'FAILED'}"] += 1
        if not ok:
            failures.append(f"{what}: kept {kept}, {line!r}")
    # What the dump wrote: its own temporary names go, its own unlisted shard is adopted.
    cache = partial()
    plan = plan_cache(config)
    own_tmp = cache / ".shard-00001.arrow.tmp-4242"
    own_tmp.write_bytes(b"half a shard")
    user_dot = cache / ".shard-mine"
    user_dot.write_bytes(b"keep me")
    manifest = load_manifest(cache)
    manifest.shards = []
    manifest.complete = False
    manifest.save(cache)  # shard 0 is on disk, carries the dump id, but is not listed
    resumed = open_cache(cache, plan.manifest, keys=plan.keys)
    ok = not own_tmp.exists() and user_dot.read_bytes() == b"keep me"
    ok = ok and [s.name for s in resumed.shards] == ["shard-00000.arrow"]
    outcomes[f"own tmp removed, own unlisted shard adopted: {'yes' if ok else 'FAILED'}"] += 1
    if not ok:
        failures.append(f"own files: tmp {own_tmp.exists()}, shards {resumed.shards}")
    rlog.record(
        HOSTILE,
        "Resume with files the dump did not write (shard-* names, another cache's shard, "
        "dot files)",
        outcomes,
        ok=not failures,
        goal="resume deletes only its own temporary names and adopts or replaces only shards "
        "carrying its dump id; any other shard-* file stays byte for byte and the dump "
        "refuses with one line naming it",
        notes="Before format 3, a resume deleted every unlisted shard-* file; a shard of "
        "another cache with the same content keys would have been adopted."
        + (f" Failures: {failures}" if failures else ""),
    )
    assert not failures, failures
