"""Smoke tests of the benchmark scripts: tiny sizes, in-process, results JSON well formed."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def numbers(node):
    """Every number in a JSON value (bools excluded)."""
    if isinstance(node, dict):
        for value in node.values():
            yield from numbers(value)
    elif isinstance(node, list):
        for value in node:
            yield from numbers(value)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield node


def check_positive(node) -> None:
    found = list(numbers(node))
    assert found
    assert all(math.isfinite(v) and v > 0 for v in found), found


def run(main, args: list[str]):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_dump_throughput_smoke(project, tmp_path):
    config, _ = project
    out = tmp_path / "dump_throughput.json"
    module = load("dump_throughput")
    run(
        module.main,
        ["-c", config, "--images", 32, "--repeats", 1, "--workers", 0, "--out", out],
    )
    report = json.loads(out.read_text())
    for section in ("bare", "dump", "dump_wall"):
        check_positive(report[section])
    check_positive([report["rows"], report["num_images"], report["cache_bytes"]])
    assert report["rows"] == 24 * 3  # the project's 24 images x 3 views (fewer than --images)
    assert 0 < report["ratio"] <= 2
    assert report["weights"] != "random"
    assert report["machine"]["nproc"] >= 1 and report["machine"]["paddle"]
    assert isinstance(report["command"], str) and report["command"]


def test_dump_throughput_random_weights(project, tmp_path):
    config, _ = project
    out = tmp_path / "dump_throughput.json"
    missing = tmp_path / "no-such-teacher.safetensors"
    module = load("dump_throughput")
    run(
        module.main,
        [
            "-c",
            config,
            "-o",
            f"Offline.teacher_weights={missing}",
            "--images",
            8,
            "--repeats",
            1,
            "--out",
            out,
        ],
    )
    report = json.loads(out.read_text())
    assert report["weights"] == "random"
    assert report["rows"] == 8 * 3
    check_positive(report["dump"])


def test_cache_formats_smoke(tmp_path):
    out = tmp_path / "cache_formats.json"
    module = load("cache_formats")
    args = ["--rows", 2000, "--lookups", 2000, "--repeats", 1, "--shard-rows", 512]
    result = run(module.main, [*args, "--out", out])
    report = json.loads(out.read_text())
    assert len(report["results"]) == len(module.CASES) * len(module.BACKENDS)
    for entry in report["results"]:
        check_positive({k: v for k, v in entry.items() if k not in ("codec", "payload")})
        assert entry["rows"] == 2000 and entry["shards"] == 4
    assert report["recommendation"]["default"] in module.BACKENDS
    check_positive(report["recommendation"]["read_rows_per_s_geomean"])
    assert "recommended default" in result.output


def test_cache_bytes_smoke(tmp_path):
    out = tmp_path / "cache_bytes.json"
    module = load("cache_bytes")
    run(module.main, ["--rows", 256, "--shard-size", 64, "--out", out])
    report = json.loads(out.read_text())
    cases = len(module.CODECS) * len(module.CLASSES) * len(module.VIEWS) * len(module.BACKENDS)
    assert len(report["results"]) == cases
    for entry in report["results"]:
        check_positive({k: v for k, v in entry.items() if k not in ("codec", "backend")})
        # Never less than the codec payload plus the 9 B of view params per view.
        assert entry["bytes_per_view"] > 9
    assert isinstance(report["target"]["met"], bool)


def test_cache_scale_smoke(tmp_path):
    """The benchmark at its smallest size, its measurements in a child process as in a run."""
    out = tmp_path / "cache_scale.json"
    module = load("cache_scale")
    args = ["--sizes", 2000, "--batches", 2, "--workers", 1, "--batch-size", 64]
    run(module.main, [*args, "--out", out, "--tmp-dir", tmp_path])
    report = json.loads(out.read_text())
    (entry,) = report["results"]
    assert entry["rows"] == 2000 and entry["shards"] == 1 and entry["rows_read"] == 128
    check_positive({k: v for k, v in entry.items() if k != "rss"})
    assert {"main", "worker 1"} <= set(entry["rss"])
    assert report["summary"]["rows_per_s_ratio_largest_to_smallest"] == 1.0


def test_data_only_smoke(tmp_path):
    out = tmp_path / "data_only.json"
    module = load("data_only")
    args = ["--images", 64, "--views", 2, "--workers", 0, "--batch-size", 16]
    run(module.main, [*args, "--out", out, "--tmp-dir", tmp_path])
    report = json.loads(out.read_text())
    assert report["cache"]["rows"] == 128 and report["cache"]["shards"] == 1
    check_positive([report["images_per_s"], report["in_memory_images_per_s"], report["ratio"]])
    check_positive(report["stage_us_per_image"])


def test_near_duplicates_smoke(tmp_path):
    out = tmp_path / "near_duplicates.json"
    module = load("near_duplicates")
    args = ["--pool", 3000, "--excluded", 50, "--variants", 4, "--planted", 40, "--check", 20]
    run(module.main, [*args, "--out", out])
    report = json.loads(out.read_text())
    assert report["queries"] == 200 and report["planted"] == 40
    assert report["planted_missed"] == 0 and report["brute_force_mismatches"] == 0
    assert report["pairs_within_distance"] >= 40
    check_positive([report["build_seconds"], report["search_seconds"], report["peak_rss_bytes"]])
    assert isinstance(report["command"], str) and report["machine"]["nproc"] >= 1


def test_ensemble_labeled_rows_shared_or_disjoint():
    import click

    from benchmarks.ensemble import labeled_rows

    assert labeled_rows(3, 100, None, "disjoint") == [(0, 100)] * 3
    assert labeled_rows(3, 100, 20, "shared") == [(0, 20)] * 3
    assert labeled_rows(3, 100, 20, "disjoint") == [(0, 20), (20, 40), (40, 60)]
    with pytest.raises(click.BadParameter, match="3 disjoint parts of 40 need 120"):
        labeled_rows(3, 100, 40, "disjoint")
