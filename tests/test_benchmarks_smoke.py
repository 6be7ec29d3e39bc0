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


def break_even_results(online_step: float) -> dict:
    """A results dict of made-up costs (seconds) for checking the table's arithmetic."""
    costs = {
        "dump_per_view": 0.01,
        "dump_fixed": 1.0,
        "offline_step": 0.1,
        "online_step": online_step,
        "student_only_step": 0.09,
    }
    return {
        "settings": {
            "teacher": "T",
            "student": "S",
            "batch_size": 10,
            "steps": 4,
            "epochs": 2,
            "repeats": 3,
        },
        "assumptions": {
            "dataset_images": 95,  # 10 steps of 10 (the last one short)
            "scenarios": [{"epochs": 2, "views": 4}, {"epochs": 8, "views": 1}],
            "students": [1, 2, 4, 8],
        },
        "costs": {k: {"median": v, "min": v, "max": v, "values": [v]} for k, v in costs.items()},
        "machine": {"nproc": 2, "cpu": "cpu", "paddle": "3"},
        "load_average": {"before": [1.0], "during": [1.5, 2.5], "after": [2.0]},
        "command": "python benchmarks/break_even.py",
        "commit": "0123456789abcdef",
    }


def test_break_even_table_from_costs():
    from benchmarks import break_even as module

    r = break_even_results(online_step=0.3)
    short, long = module.table(r)
    # dump = 1 + 95 images x 4 views x 0.01; one student = 2 epochs x 10 steps x step cost
    assert short["dump_seconds"] == pytest.approx(4.8)
    assert short["offline_training_seconds"] == pytest.approx(2.0)
    assert short["online_training_seconds"] == pytest.approx(6.0)
    assert short["break_even_students"] == pytest.approx(4.8 / 4.0, abs=1e-3)
    assert short["first_winning_students"] == 2
    assert short["students"]["1"]["speedup"] == pytest.approx(6.0 / 6.8, abs=1e-3)
    assert short["students"]["8"]["speedup"] == pytest.approx(48.0 / 20.8, abs=1e-3)
    # one view, 8 epochs: the dump is paid back by the first student
    assert long["first_winning_students"] == 1 and long["students"]["1"]["speedup"] > 1
    text = module.render_break_even(r)
    assert "| 1.20 | 0.88x | 1.36x |" in text  # break-even N, then speedups at 1 and 2
    assert (
        "Offline is ahead from 2 students at (E, V) = (2, 4); from 1 student at (E, V) = (8, 1)."
        in text
    )
    assert "2.0 during (median)" in text and "`0123456789`" in text


def test_break_even_never_when_online_is_not_slower():
    from benchmarks import break_even as module

    r = break_even_results(online_step=0.1)
    assert [row["break_even_students"] for row in module.table(r)] == [None, None]
    assert "| never |" in module.render_break_even(r)


def test_break_even_smoke(tmp_path):
    pytest.importorskip("pipelines.fashion_mnist")
    from pipelines.fashion_mnist import IDX_DIR

    if not (IDX_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    from benchmarks import break_even as module

    out = tmp_path / "break_even.json"
    args = ["--steps", 2, "--batch-size", 8, "--epochs", 1, "--repeats", 2]
    result = run(module.main, [*args, "--workdir", tmp_path / "work", "--out", out])
    r = json.loads(out.read_text())
    assert r["settings"]["images"] == 16 and r["settings"]["teacher"] == "ResNet50_vd"
    assert len(r["runs"]) == 2 and all(sorted(o) == sorted(module.COSTS) for o in r["order"])
    assert r["order"][0] != r["order"][1]  # rotated
    for run_ in r["runs"]:
        assert run_["dump"]["rows"] == 16
        check_positive([run_[k]["step_seconds"] for k in module.COSTS if k != "dump"])
    check_positive({k: v["median"] for k, v in r["costs"].items() if k != "dump_fixed"})
    assert r["table"] == module.table(r)  # the stored table is the one the costs give
    assert len(r["load_average"]["during"]) == 2 * len(module.COSTS)
    assert r["commit"] and r["command"].startswith("python ")
    assert module.render_break_even(r) in result.output


def test_online_vs_offline_mode_registry():
    import click

    from benchmarks import online_vs_offline as module

    everything = module.available_modes()
    assert everything[:6] == [
        "student_only",
        "online_bn_train",
        "online_bn_eval",
        "offline_v1",
        "offline_v2",
        "offline_v4",
    ]
    assert module.mode_list(None, None, None) == everything
    assert module.mode_list("offline_v8,student_only", None, None) == ["offline_v8", "student_only"]
    assert module.MODES["offline_v8"].overrides == ("Offline.views=8",)
    # the older shorthands still name the same modes
    assert module.mode_list(None, "1,2", "eval") == [
        "student_only",
        "online_bn_eval",
        "offline_v1",
        "offline_v2",
    ]
    with pytest.raises(click.BadParameter, match="'online_bn_maybe': not a mode here"):
        module.mode_list("online_bn_maybe", None, None)
    with pytest.raises(click.BadParameter, match="modes repeat"):
        module.mode_list("offline_v1,offline_v1", None, None)


def test_online_vs_offline_smoke_paired_and_rendered(tmp_path):
    from pipelines.fashion_mnist import IDX_DIR

    if not (IDX_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    from benchmarks import online_vs_offline as module

    out = tmp_path / "results.json"
    args = [
        *("--preset", "smoke", "--images", 48, "--val-images", 16, "--batch-size", 16),
        *("--epochs", 1, "--teacher-epochs", 1, "--seeds", "3,4"),
        *("--modes", "online_bn_eval,offline_v1,offline_v2", "--workdir", tmp_path / "work"),
        *("--data-dir", tmp_path / "data", "--out", out, "--quiet"),
    ]
    result = run(module.main, args)
    r = json.loads(out.read_text())
    modes = ["online_bn_eval", "offline_v1", "offline_v2"]
    assert r["order"] == {"3": modes, "4": modes[1:] + modes[:1]}
    assert r["dump"]["views"] == 2 and r["teacher"]["seconds"] > 0
    assert r["commit"] and len(r["load_average"]["during"]) == 6
    assert r["settings"]["modes"]["offline_v2"]["overrides"] == ["Offline.views=2"]
    paired = {p["offline"]: p for p in r["summary"]["paired"]}
    assert set(paired) == {"offline_v1", "offline_v2"}
    for off, p in paired.items():
        assert p["online"] == "online_bn_eval"
        diffs = [
            r["runs"][s]["online_bn_eval"]["last_top1"] - r["runs"][s][off]["last_top1"]
            for s in ("3", "4")
        ]
        assert p["difference"]["values"] == pytest.approx(diffs, abs=1e-5)
    text = module.render_accuracy(r)
    assert text in result.output
    t = r["summary"]["modes"]["offline_v2"]["top1"]
    assert f"| offline SSLD, 2 view(s) | {100 * t['mean']:.2f}% ± {100 * t['ci95']:.2f} |" in text
    assert "3: online_bn_eval, offline_v1, offline_v2; 4: offline_v1" in text
    estimate = module.estimate(r, images=96, val_images=16, epochs=2, teacher_epochs=1, seeds=2)
    assert set(estimate["modes"]) == set(modes)
    assert estimate["total"] > sum(estimate["modes"].values()) > 0
