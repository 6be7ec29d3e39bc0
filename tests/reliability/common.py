"""What the reliability campaigns share: their CI/full setting (OFFLINE_SSLD_FULL=1),
the report's section names, and helpers that run the CLI and compare caches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

import offline_ssld
from offline_ssld import train as train_module
from offline_ssld.atomic import TMP_MARK
from offline_ssld.cache.format import MANIFEST
from offline_ssld.cache.reader import CacheReader
from offline_ssld.cli import main
from tests.reliability.log import FULL

CLI = Path(sys.executable).with_name("offline-ssld")
PACKAGE = Path(offline_ssld.__file__).parent

# CI setting / full setting (OFFLINE_SSLD_FULL=1)
DUMP_KILLS = 20 if FULL else 5
TRAIN_KILLS = 5 if FULL else 1
BYTE_FLIPS = 500 if FULL else 50
BIT_FLIPS = int(os.environ.get("OFFLINE_SSLD_BIT_FLIPS", 1000 if FULL else 200))
TRUNCATIONS = 50 if FULL else 10
FUZZ_EXAMPLES = 1000 if FULL else 100  # per fuzz target

FAULTS, CORRUPTION, HOSTILE = "Fault injection", "Corruption", "Hostile and odd input"


# ----------------------------------------------------------------------------------- helpers


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def o_flags(overrides) -> list[str]:
    return [part for option in overrides for part in ("-o", str(option))]


def dump_cli(config: Path, *overrides: str, flags: tuple[str, ...] = ()):
    return cli("dump-teacher", "-c", config, "--quiet", *flags, *o_flags(overrides))


def one_error_line(result) -> str | None:
    """The single `error: ...` line of a refused command (exit 2, no traceback), else None."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if result.exit_code != 2 or "Traceback" in result.output or len(lines) != 1:
        return None
    return lines[0] if lines[0].startswith("error: ") else None


def cache_rows(cache: Path) -> list[dict[str, np.ndarray]]:
    reader = CacheReader(cache)
    return [reader.load_shard(n) for n in range(len(reader.manifest.shards))]


def same_rows(a: Path, b: Path) -> bool:
    shards_a, shards_b = cache_rows(a), cache_rows(b)
    if len(shards_a) != len(shards_b) or not shards_a:
        return False
    for cols_a, cols_b in zip(shards_a, shards_b, strict=True):
        if sorted(cols_a) != sorted(cols_b):
            return False
        for name in cols_a:
            if cols_a[name].dtype != cols_b[name].dtype:
                return False
            if not np.array_equal(cols_a[name], cols_b[name]):
                return False
    return True


def row_ids(cache: Path) -> list[tuple[bytes, int]]:
    """(content key, view) of every row, in storage order."""
    return [
        (cols["key"][r].tobytes(), int(cols["view"][r, 0]))
        for cols in cache_rows(cache)
        for r in range(len(cols["key"]))
    ]


def leftovers(cache: Path) -> list[str]:
    """Files that are neither the manifest nor a listed shard (temporaries, orphans)."""
    listed = {s["name"] for s in json.loads((cache / MANIFEST).read_text())["shards"]}
    return sorted(p.name for p in cache.iterdir() if p.name != MANIFEST and p.name not in listed)


def wait_for(
    condition, proc: subprocess.Popen, timeout: float = 180.0, poll: float = 0.002
) -> float | None:
    """Poll `condition()`; the time it became true, or None if `proc` ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        if proc.poll() is not None:
            return time.monotonic() if condition() else None
        time.sleep(poll)
    raise AssertionError("timed out waiting for the subprocess")


def writing_after(cache: Path, shards: int) -> bool:
    """A temporary file is on disk and at least `shards` shards are committed."""
    try:
        names = os.listdir(cache)
    except FileNotFoundError:
        return False
    committed = sum(n.startswith("shard-") for n in names)
    return committed >= shards and any(TMP_MARK in n for n in names)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def metric_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dump_both_backends(config: Path, tmp: Path) -> dict[str, Path]:
    caches = {}
    for backend in ("arrow", "hdf5"):
        caches[backend] = tmp / f"cache_{backend}"
        result = dump_cli(
            config, f"Offline.format={backend}", f"Offline.cache_dir={caches[backend]}"
        )
        assert result.exit_code == 0, result.output
    return caches


def train_refusal(config: Path, cache: Path, monkeypatch) -> tuple[str | None, bool]:
    """(error line of train-student on `cache`, whether any batch was requested first)."""
    started = {"batches": False}
    real_loader = train_module.BatchLoader

    class WatchedLoader(real_loader):
        def __iter__(self):
            started["batches"] = True
            return super().__iter__()

    monkeypatch.setattr(train_module, "BatchLoader", WatchedLoader)
    try:
        out = cache.parent / f"out_{cache.name}"
        result = cli(
            "train-student",
            "-c",
            config,
            "--quiet",
            *o_flags([f"Offline.cache_dir={cache}", f"Global.output_dir={out}", "Global.epochs=1"]),
        )
    finally:
        monkeypatch.setattr(train_module, "BatchLoader", real_loader)
    return one_error_line(result), started["batches"]
