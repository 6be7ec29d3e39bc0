"""dump-teacher and train-student under `python -m paddle.distributed.launch` (2 CPU ranks, gloo).

The multi-process tests are marked `distributed` (select with `-m distributed`, skip with
`-m "not distributed"`); each launch costs ~15 s of process start-up on a small machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from offline_ssld import distributed as dist
from offline_ssld.atomic import TMP_MARK
from offline_ssld.cache.format import MANIFEST, load_manifest
from offline_ssld.cache.reader import CacheReader
from offline_ssld.cli import main
from offline_ssld.config.loading import load_config
from offline_ssld.config.specs import student_spec
from offline_ssld.data.samplers import EpochBatches
from offline_ssld.models import build_model, load_weights
from offline_ssld.train import eval_metrics, evaluate, make_eval_loader
from tests.helpers import make_images, signed_manifest, write_list

CLI = Path(sys.executable).with_name("offline-ssld")
LAUNCH_TIMEOUT = 240


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def options(overrides) -> list[str]:
    return [part for option in overrides for part in ("-o", str(option))]


def launch_command(log_dir: Path, *args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        "2",
        "--log_dir",
        str(log_dir),
        str(CLI),
        *[str(a) for a in args],
    ]


def launch_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    return {**env, "GLOG_minloglevel": "2", "OMP_NUM_THREADS": "1"}


def logs(log_dir: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
        for p in sorted(log_dir.glob("workerlog.*"))
    )


def launch(tmp: Path, log_name: str, *args) -> str:
    """Run a 2-rank launch to completion; return rank 0's log."""
    log_dir = tmp / log_name
    proc = subprocess.run(
        launch_command(log_dir, *args),
        cwd=tmp,
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs(log_dir)}"
    return (log_dir / "workerlog.0").read_text(errors="replace")


def assert_same_cache(a: Path, b: Path) -> None:
    """Row for row: everything exact except fp16 logits, equal within 1e-2."""
    ra, rb = CacheReader(a), CacheReader(b)
    assert [s.name for s in ra.manifest.shards] == [s.name for s in rb.manifest.shards]
    assert [s.rows for s in ra.manifest.shards] == [s.rows for s in rb.manifest.shards]
    assert ra.manifest.fingerprints == rb.manifest.fingerprints
    for number in range(len(ra.manifest.shards)):
        ca, cb = ra.load_shard(number), rb.load_shard(number)
        assert sorted(ca) == sorted(cb)
        for name in ca:
            assert ca[name].dtype == cb[name].dtype, name
            if name == "logits":
                diff = np.abs(ca[name].astype(np.float32) - cb[name].astype(np.float32))
                assert float(diff.max()) <= 1e-2, (number, float(diff.max()))
            else:
                assert np.array_equal(ca[name], cb[name]), (number, name)


# --------------------------------------------------------------------------- in-process


def test_single_process_helpers_are_no_ops(monkeypatch):
    for name in ("PADDLE_TRAINER_ID", "PADDLE_TRAINERS_NUM"):
        monkeypatch.delenv(name, raising=False)
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    assert not dist.is_distributed()
    dist.init()
    dist.barrier()
    assert dist.all_reduce_sum([1, 2.5]) == [1.0, 2.5]


@pytest.mark.parametrize("size, world, drop_last", [(30, 2, False), (31, 3, False), (7, 4, True)])
def test_rank_batches_split_one_global_order(size, world, drop_last):
    single = EpochBatches(size, 4, True, False, seed=5)
    single.set_epoch(3)
    order = [i for batch in single for i in batch]
    ranks = []
    for rank in range(world):
        sampler = EpochBatches(size, 4, True, drop_last, 5, rank, world)
        sampler.set_epoch(3)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert all(len(b) <= 4 for b in batches)
        ranks.append([i for b in batches for i in b])
    per_rank = -(-size // world)
    padded = (order * world)[: per_rank * world]  # the global order, wrapped round
    for rank, taken in enumerate(ranks):
        expected = padded[rank::world]
        if drop_last:
            expected = expected[: len(expected) // 4 * 4]
        assert taken == expected
    assert len({len(taken) for taken in ranks}) == 1  # equal steps: DataParallel never waits
    if not drop_last:
        assert set().union(*ranks) == set(range(size))
    # Evaluation: no padding, every image exactly once.
    evals = [
        list(EpochBatches(size, 4, False, False, 0, r, world, pad=False)) for r in range(world)
    ]
    assert sorted(i for batches in evals for b in batches for i in b) == list(range(size))


def test_orphan_shards_are_adopted_and_bad_ones_rewritten(project):
    config, tmp = project
    cache = tmp / "cache"
    assert cli("dump-teacher", "-c", config, "--quiet").exit_code == 0
    before = {p.name: p.read_bytes() for p in cache.glob("shard-*")}
    manifest = json.loads((cache / MANIFEST).read_text())
    # As a killed run or another rank leaves it: shards 1, 2 and 3 committed but not listed,
    # shard 2 replaced by whole-looking bytes of shard 1 (this dump's, wrong rows for it).
    unlisted = {"shard-00001.arrow", "shard-00002.arrow", "shard-00003.arrow"}
    manifest["shards"] = [s for s in manifest["shards"] if s["name"] not in unlisted]
    manifest["complete"] = False
    (cache / MANIFEST).write_bytes(signed_manifest(manifest))  # as the writer leaves it
    (cache / "shard-00002.arrow").write_bytes(before["shard-00001.arrow"])
    (cache / f".shard-00004.arrow{TMP_MARK}123").write_bytes(b"partial")
    result = cli("dump-teacher", "-c", config, "--quiet")
    assert result.exit_code == 0, result.output
    assert "wrote 1 shards" in result.stdout  # shard 2 only: shards 1 and 3 were adopted
    after = {p.name: p.read_bytes() for p in cache.glob("shard-*")}
    assert after == before
    assert sorted(p.name for p in cache.iterdir()) == sorted([MANIFEST, *before])
    assert load_manifest(cache).complete
    assert cli("verify", cache).exit_code == 0


# --------------------------------------------------------------------------- launched


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _rank_process(launcher: int, rank: int) -> int | None:
    """The worker process of `rank`: a child of the launcher with PADDLE_TRAINER_ID=rank."""
    for pid in _children(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PADDLE_TRAINER_ID={rank}".encode() in environ:
            return pid
    return None


@pytest.mark.distributed
def test_killed_rank_resumes_with_the_same_launch_command(project):
    config, tmp = project
    root = tmp / "big_images"
    listing = write_list(tmp / "big_list.txt", make_images(root, 200, seed=1))
    overrides = [
        f"DataLoader.Train.dataset.image_root={root}",
        f"DataLoader.Train.dataset.cls_label_path={listing}",
        "DataLoader.Train.dataset.transform_ops.1.RandCropImage.size=96",  # slower teacher
        "Offline.views=4",
        "Offline.shard_size=80",  # 20 images a shard, 10 shards: 5 per rank
        "Offline.batch_size=4",
    ]
    killed, reference = tmp / "killed", tmp / "reference"
    args = ["dump-teacher", "-c", config, "--quiet", *options(overrides)]
    log_dir = tmp / "log_killed"
    proc = subprocess.Popen(
        launch_command(log_dir, *args, "-o", f"Offline.cache_dir={killed}"),
        cwd=tmp,
        env=launch_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    victim = None
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            names = {p.name for p in killed.glob("shard-*")} if killed.exists() else set()
            if "shard-00001.arrow" in names and len(names) < 8:  # rank 1 is mid-way
                victim = _rank_process(proc.pid, 1)
                if victim is not None:
                    os.kill(victim, signal.SIGKILL)
                    break
            time.sleep(0.005)
        proc.wait(timeout=90)  # the launcher stops the pod when a rank dies
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert victim is not None, f"rank 1 was not killed mid-dump\n{logs(log_dir)}"
    assert proc.returncode != 0
    on_disk = {p.name for p in killed.glob("shard-*")}
    assert 1 <= len(on_disk) < 10
    assert not load_manifest(killed).complete

    log = launch(tmp, "log_resumed", *args, "-o", f"Offline.cache_dir={killed}")
    written = int(log.split("wrote ")[1].split()[0])
    assert written == 10 - len(on_disk)  # committed shards are adopted, not redone
    result = cli(*args, "-o", f"Offline.cache_dir={reference}")
    assert result.exit_code == 0, result.output
    assert_same_cache(reference, killed)
    assert not [p for p in killed.iterdir() if TMP_MARK in p.name]
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert cli("verify", killed).exit_code == 0


@pytest.mark.distributed
def test_two_rank_train_student(project):
    config, tmp = project
    assert cli("dump-teacher", "-c", config, "--quiet").exit_code == 0
    out = tmp / "student"
    overrides = [f"Global.output_dir={out}", "Global.epochs=4"]
    log = launch(tmp, "log_train", "train-student", "-c", config, "--quiet", *options(overrides))
    assert "best top-1" in log
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]  # rank 0 alone writes
    assert records[-1]["loss"] < records[0]["loss"], records
    # The checkpoint is the plain model's: it loads and evaluates in a single process.
    cfg = load_config([str(config)], overrides)
    model = build_model(student_spec(cfg))
    load_weights(model, out / "latest.safetensors", "test")
    class_num = student_spec(cfg).class_num
    loader = make_eval_loader(cfg, class_num)
    top1 = evaluate(model, loader, eval_metrics(cfg, class_num))["top1"]
    assert 0.0 <= top1 <= 1.0
    best = json.loads((out / "best_model.json").read_text())["top1"]
    assert max(r["top1"] for r in records) == pytest.approx(best, abs=1e-5)


@pytest.mark.distributed
def test_two_rank_dump_equals_one_rank_dump_and_the_scaling_benchmark_runs(
    project, tmp_path, monkeypatch
):
    """benchmarks/dump_scaling.py dumps the project with `offline-ssld dump-teacher` and with
    a 2-rank launch of it: its report is checked, and the two caches, seen through its own
    cache comparison before it deletes them, are compared here row for row (one launch
    serves both checks; each costs ~10 s of process start-up)."""
    import importlib.util

    config, _ = project
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "dump_scaling.py"
    spec = importlib.util.spec_from_file_location("_bench_dump_scaling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    compared: list[tuple[Path, Path]] = []
    module_same_cache = module.same_cache

    def same_cache(one: Path, two: Path) -> bool:
        if one != two:
            assert_same_cache(one, two)
            assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
            assert cli("verify", two).exit_code == 0
            assert "wrote 4 shards" in (two.parent / "log-2" / "workerlog.0").read_text()
            compared.append((one, two))
        return module_same_cache(one, two)

    monkeypatch.setattr(module, "same_cache", same_cache)
    out = tmp_path / "dump_scaling.json"
    args = ["-c", config, "--repeats", 1, "--workers", 0, "--out", out, "--tmp-dir", tmp_path]
    result = CliRunner().invoke(module.main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [(a.name, b.name) for a, b in compared] == [("cache-1", "cache-2")]
    report = json.loads(out.read_text())
    assert report["rows"] == 24 * 3 and report["shards"] == 4
    assert report["identical_caches"] is True
    for n in ("1", "2"):
        assert report["procs"][n]["median_views_per_s"] > 0
    assert report["procs"]["1"]["speedup"] == 1.0
