"""SIGKILL dump-teacher at random moments; every resumed cache equals an uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from offline_ssld.atomic import TMP_MARK
from offline_ssld.cache.format import MANIFEST
from offline_ssld.tools.audit import verify_cache
from tests.helpers import make_images, write_list
from tests.reliability.common import (
    CLI,
    DUMP_KILLS,
    FAULTS,
    dump_cli,
    leftovers,
    o_flags,
    read_json,
    row_ids,
    same_rows,
    wait_for,
    writing_after,
)


def shard_bytes(cache) -> list[bytes]:
    """The shard files of `cache`, with its dump id (drawn per cache, written into every shard
    it writes) blanked: two dumps of the same inputs are then equal byte for byte."""
    manifest = json.loads((cache / MANIFEST).read_text())
    dump_id = manifest["dump_id"].encode()
    names = [s["name"] for s in manifest["shards"]]
    return [(cache / name).read_bytes().replace(dump_id, b"-" * 32) for name in names]


def test_sigkill_dump_teacher_at_random_moments(project, rlog):
    """SIGKILL a dump-teacher subprocess at seeded random moments of its run, resume each to
    completion, and compare with an uninterrupted dump row for row."""
    config, tmp = project
    root = tmp / "kill_images"
    listing = write_list(tmp / "kill_list.txt", make_images(root, 30, seed=3, size=48))
    overrides = [
        f"DataLoader.Train.dataset.image_root={root}",
        f"DataLoader.Train.dataset.cls_label_path={listing}",
        "Offline.views=2",
        "Offline.shard_size=4",  # 2 images a shard: 15 shards
        "Offline.batch_size=4",
    ]
    num_shards, rows = 15, 60
    env = {**os.environ, "GLOG_minloglevel": "2"}

    def start(cache: Path) -> tuple[subprocess.Popen, float | None]:
        args = ["dump-teacher", "-c", str(config), "--quiet"]
        args += o_flags([*overrides, f"Offline.cache_dir={cache}"])
        log = open(tmp / f"{cache.name}.log", "wb")  # noqa: SIM115 (closed by the child's end)
        proc = subprocess.Popen([str(CLI), *args], stdout=log, stderr=log, env=env)
        log.close()
        return proc, wait_for((cache / MANIFEST).exists, proc)

    # The reference, uninterrupted, also times the dump from its first manifest to its end.
    reference = tmp / "reference"
    proc, began = start(reference)
    assert proc.wait(timeout=300) == 0, (tmp / "reference.log").read_text()[-2000:]
    duration = time.monotonic() - began
    assert len(json.loads((reference / MANIFEST).read_text())["shards"]) == num_shards
    reference_ids = row_ids(reference)
    reference_bytes = shard_bytes(reference)

    rng = random.Random(7)
    outcomes: Counter = Counter()
    failures: list[str] = []
    for trial in range(DUMP_KILLS):
        cache = tmp / f"killed{trial:02d}"
        proc, began = start(cache)
        assert began is not None, (tmp / f"{cache.name}.log").read_text()[-2000:]
        if trial % 2 == 0:  # a uniformly random moment of the dump
            delay = rng.uniform(0.0, duration)
            time.sleep(max(0.0, began + delay - time.monotonic()))
            aim = f"at {delay:.3f} s"
        else:  # aimed at a write: as soon as a temporary file shows after k shards
            k = rng.randrange(num_shards)
            wait_for(lambda cache=cache, k=k: writing_after(cache, k), proc, poll=0.0002)
            aim = f"at a write after {k} shards"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        # Where the kill landed, from what it left on disk.
        names = sorted(p.name for p in cache.iterdir())
        state = read_json(cache / MANIFEST)
        listed = len(state["shards"]) if state else 0
        on_disk = sum(n.startswith("shard-") for n in names)
        if proc.returncode != -signal.SIGKILL:
            where = "dump finished before the kill"
        elif any(TMP_MARK in n for n in names):
            where = "killed during a write (temporary file on disk)"
        elif on_disk > listed:
            where = "killed between a shard's rename and the manifest update"
        elif listed == 0:
            where = "killed before the first shard"
        else:
            where = "killed between shard writes"
        outcomes[where] += 1

        result = dump_cli(config, *overrides, f"Offline.cache_dir={cache}")
        problems = []
        if result.exit_code != 0:
            problems.append(f"resume failed: {result.output[-500:]}")
        else:
            ids = row_ids(cache)
            if len(ids) != len(set(ids)):
                problems.append("a row is duplicated")
            if sorted(ids) != sorted(reference_ids) or len(ids) != rows:
                problems.append("rows lost or added")
            if not same_rows(cache, reference):
                problems.append("rows differ from the uninterrupted dump")
            if shard_bytes(cache) != reference_bytes:
                problems.append("shard files differ byte-wise from the uninterrupted dump")
            if leftovers(cache):
                problems.append(f"left behind: {leftovers(cache)}")
            if not verify_cache(cache).ok:
                problems.append("verify fails")
        if problems:
            failures.append(f"trial {trial} ({where}, {aim}): {problems}")
    resumed = DUMP_KILLS - len(failures)
    rlog.record(
        FAULTS,
        "SIGKILL dump-teacher at random moments, then resume",
        outcomes,
        ok=not failures,
        goal="resume completes; cache equals an uninterrupted dump row for row and byte for "
        "byte (but for the dump id each cache draws); no row duplicated or lost; no "
        "temporary file left; verify passes",
        notes=f"{resumed} of {DUMP_KILLS} resumed caches equal the reference. Subprocess "
        f"`offline-ssld dump-teacher`, {num_shards} shards x 4 rows. Even trials: kill after a "
        f"delay drawn uniformly (seed 7) over the dump's {duration:.2f} s from its first "
        "manifest write; odd trials: kill as soon as a temporary file (shard or manifest) "
        "appears after a random number of committed shards. The outcome is classified from "
        "the files the kill left." + (f" Failures: {failures}" if failures else ""),
    )
    assert not failures, failures
