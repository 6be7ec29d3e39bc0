"""A full disk (simulated ENOSPC, a real small tmpfs) during dump-teacher: one error
line and a resumable cache."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from offline_ssld import atomic
from offline_ssld.atomic import TMP_MARK
from offline_ssld.cache import writer as cache_writer
from offline_ssld.cache.format import MANIFEST, load_manifest
from offline_ssld.config.loading import load_config
from offline_ssld.dump import run_dump
from offline_ssld.errors import CacheError
from tests.reliability.common import FAULTS, dump_cli, leftovers, one_error_line, same_rows


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_simulated(project, monkeypatch, rlog):
    """A write fails with ENOSPC after N shards (in the shard file or in the manifest): one
    clear error, and the same command completes once space is back."""
    config, tmp = project
    outcomes: Counter = Counter()
    failures: list[str] = []
    references: dict[str, Path] = {}
    for backend in ("arrow", "hdf5"):
        references[backend] = tmp / f"reference_{backend}"
        result = dump_cli(
            config, f"Offline.format={backend}", f"Offline.cache_dir={references[backend]}"
        )
        assert result.exit_code == 0, result.output
    real_write, real_commit = cache_writer.write_columns, atomic.commit_file
    cases = [
        ("arrow", "shard file", 2),
        ("hdf5", "shard file", 1),
        ("arrow", "manifest", 3),
        ("arrow", "shard file", 0),
    ]
    for backend, target, after in cases:
        cache = tmp / f"full_{backend}_{target.replace(' ', '_')}_{after}"
        calls = {"n": 0}

        def failing_write(b, path, columns, dump_id, after=after, calls=calls):
            calls["n"] += 1
            if calls["n"] > after:  # half a file reaches the disk, then the disk is full
                real_write(b, path, columns, dump_id)
                with open(path, "r+b") as fh:
                    fh.truncate(path.stat().st_size // 2)
                raise _enospc()
            real_write(b, path, columns, dump_id)

        def failing_commit(tmp_file, final, after=after, calls=calls):
            if final.name == MANIFEST:
                calls["n"] += 1
                if calls["n"] > after + 1:  # the first save is the empty manifest
                    raise _enospc()
            real_commit(tmp_file, final)

        if target == "shard file":
            monkeypatch.setattr(cache_writer, "write_columns", failing_write)
        else:
            monkeypatch.setattr(atomic, "commit_file", failing_commit)
        result = dump_cli(config, f"Offline.format={backend}", f"Offline.cache_dir={cache}")
        monkeypatch.undo()
        line = one_error_line(result)
        problems = []
        if line is None or "free space" not in line or "resume" not in line:
            problems.append(f"not one clear line: {result.output[-600:]}")
        manifest = load_manifest(cache)
        if manifest.complete or len(manifest.shards) > after:
            problems.append(f"manifest lists {len(manifest.shards)} shards after the failure")
        stray = [n for n in leftovers(cache) if TMP_MARK in n]
        if stray:
            problems.append(f"temporary files left: {stray}")
        again = dump_cli(config, f"Offline.format={backend}", f"Offline.cache_dir={cache}")
        if again.exit_code != 0:
            problems.append(f"re-run failed: {again.output[-600:]}")
        elif not same_rows(cache, references[backend]) or leftovers(cache):
            problems.append("re-run cache differs from the reference")
        outcomes["clear error, then resumed to the reference" if not problems else "FAILED"] += 1
        if problems:
            failures.append(f"{backend} {target} after {after}: {problems}")
    rlog.record(
        FAULTS,
        "Full disk, simulated (ENOSPC raised in-process after N shards)",
        outcomes,
        ok=not failures,
        goal="one-line CacheError telling to free space and resume; no temporary file; the "
        "same command then completes and equals an uninterrupted dump",
        notes="Cases (backend, failing write, after N): "
        + ", ".join(f"{b} {t} after {n}" for b, t, n in cases)
        + ". A failing shard write leaves half a file first."
        + (f" Failures: {failures}" if failures else ""),
    )
    assert not failures, failures


def test_full_disk_real_tmpfs(project, rlog):
    """The same on a real, small tmpfs (needs root to mount; skipped otherwise)."""
    config, tmp = project
    mount = tmp / "small_fs"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        rlog.record(FAULTS, "Full disk, real (small tmpfs)", {"skipped: not root": 1}, True, "-")
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        reason = made.stderr.decode(errors="replace").strip()
        rlog.record(
            FAULTS,
            "Full disk, real (small tmpfs)",
            {"skipped: mount refused": 1},
            True,
            "-",
            reason,
        )
        pytest.skip(f"cannot mount a tmpfs: {reason}")
    try:
        overrides = ["Offline.views=3", "Offline.shard_size=3"]  # 24 one-image shards
        reference = tmp / "reference"
        assert dump_cli(config, *overrides, f"Offline.cache_dir={reference}").exit_code == 0
        page = os.statvfs(mount).f_frsize
        shard_pages = [-(-p.stat().st_size // page) for p in reference.glob("shard-*")]
        manifest_pages = -(-(reference / MANIFEST).stat().st_size // page)
        # Room for the manifest (old and new copy) and about half the shards.
        room = (2 * manifest_pages + sum(shard_pages) // 2) * page
        stat = os.statvfs(mount)
        filler = mount / "filler"
        filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - room))
        cache = mount / "cache"
        result = dump_cli(config, *overrides, f"Offline.cache_dir={cache}")
        line = one_error_line(result)
        problems = []
        if line is None or "No space left" not in line or "free space" not in line:
            problems.append(f"not one clear line: {result.output[-600:]}")
        manifest = load_manifest(cache)
        done = len(manifest.shards)
        if manifest.complete or not 0 < done < 24:
            problems.append(f"{done} of 24 shards listed after the failure")
        stray = [n for n in leftovers(cache) if TMP_MARK in n]
        if stray:
            problems.append(f"temporary files left: {stray}")
        filler.unlink()  # free space
        again = dump_cli(config, *overrides, f"Offline.cache_dir={cache}")
        if again.exit_code != 0:
            problems.append(f"re-run failed: {again.output[-600:]}")
        elif not same_rows(cache, reference) or leftovers(cache):
            problems.append("re-run cache differs from the reference")
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    rlog.record(
        FAULTS,
        "Full disk, real (small tmpfs)",
        {"clear error, then resumed to the reference" if not problems else "FAILED": 1},
        ok=not problems,
        goal="as for the simulated full disk",
        notes=f"tmpfs of 2 MiB filled to leave room for about half of 24 shards; {done} shards "
        f"were committed before ENOSPC; error line: "
        f"{(line or '').replace(str(cache), '<cache_dir>')!r}"
        + (f" Problems: {problems}" if problems else ""),
    )
    assert not problems, problems


def test_killed_first_manifest_write_leaves_no_temp_and_full_disk_is_one_line(project, monkeypatch):
    """A tmp manifest from a run killed during its very first write is cleaned up, and a disk
    that fails that first write gives a CacheError, not a traceback."""
    from offline_ssld.cache import format as fmt

    path, tmp = project
    cache = tmp / "cache"
    cache.mkdir()
    (cache / f".{fmt.MANIFEST}{TMP_MARK}12345").write_text("{")
    cfg = load_config([str(path)])

    def no_space(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fmt, "write_json_atomic", no_space)
    with pytest.raises(CacheError, match="free space"):
        run_dump(cfg, progress=False)
    monkeypatch.undo()
    run_dump(cfg, progress=False)
    assert not [p for p in cache.iterdir() if TMP_MARK in p.name]
