"""benchmarks/report.py on online-vs-offline results: the multi-seed schema renders paired
intervals and says what they show; the earlier one-seed files still render, without one."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.common import rotated
from benchmarks.online_vs_offline import aggregate


def _run(top1: float, epoch_s: float) -> dict:
    return {
        "best_top1": top1,
        "last_top1": top1,
        "median_epoch_seconds": epoch_s,
        "median_images_per_second": 100 / epoch_s,
        "train_seconds": 2 * epoch_s,
    }


def test_interval_reading_says_only_what_the_interval_shows():
    assert "contains 0" in report.interval_reading({"mean": 0.01, "ci95": 0.02})
    assert report.interval_reading({"mean": 0.05, "ci95": 0.02}).endswith("offline higher")
    assert report.interval_reading({"mean": -0.05, "ci95": 0.02}) == (
        "-7.00 to -3.00 points: offline lower"
    )
    assert report.interval_reading({"mean": -0.05, "ci95": None}) == "none (one seed)"


def test_rotation_moves_every_mode_off_the_first_place():
    modes = ["a", "b", "c", "d", "e"]
    orders = [rotated(modes, i, 5) for i in range(5)]
    assert all(sorted(o) == modes for o in orders)
    assert {o[0] for o in orders} == set(modes)


def _multi_seed_results(shift: float, recipe: dict | None) -> dict:
    """A multi-seed accuracy-pair results file; `recipe` None is a file from before results
    recorded the students' batch and lr."""
    runs = {
        str(seed): {
            "student_only": _run(0.70 + shift + d, 10.0 + seed),
            "online_bn_eval": _run(0.68 + shift + d, 30.0 + seed),
            "offline_v2": _run(0.69 + shift + d + 0.01 * seed, 11.0 + seed),
        }
        for seed, d in ((0, 0.0), (1, 0.02), (2, -0.02))
    }
    settings = {"train_images": 64, "val_images": 32, "student_epochs": 2, "teacher_epochs": 3}
    settings |= {"batch_size": 128 if recipe is None else None, "seeds": [0, 1, 2]}
    if recipe is not None:
        settings["student_recipe"] = recipe
    return {
        "settings": settings,
        "teacher": {"top1": 0.8},
        "summary": aggregate(runs, dump_seconds=6.0),
        "runs": runs,
    }


def test_student_recipe_table_reads_before_and_after_files(tmp_path, monkeypatch):
    import json

    before = _multi_seed_results(0.0, None)
    after = _multi_seed_results(0.1, {"batch_size": 32, "lr": 0.05})
    for when, r in (("before", before), ("after", after)):
        (tmp_path / report.RECIPE_FILES[when]).write_text(json.dumps(r))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    text = report.student_recipe()
    rows = [line for line in text.splitlines() if line.startswith(("| before", "| after"))]
    assert rows[0].startswith(
        "| before | 64 images, batch 128 at lr 0.1, 2 epochs, 3 seeds | 80.00%"
    )
    assert rows[1].startswith("| after | 64 images, batch 32 at lr 0.05, 2 epochs, 3 seeds |")
    # student only 80, 82, 78: 80.00 ± 4.97 (std 2.00); offline - student only -1, 0, +1
    assert "| 80.00% ± 4.97 (std 2.00) |" in rows[1]
    assert rows[1].endswith(
        "| +0.00 ± 2.48: -2.48 to +2.48 points: contains 0, so neither is shown ahead; "
        "any difference in it fits |"
    )


def test_multi_seed_results_render_paired_intervals():
    r = _multi_seed_results(0.0, None)
    r["settings"]["batch_size"] = 32
    summary = r["summary"]
    c = next(c for c in summary["comparisons"] if c["vs"] == "online_bn_eval")
    assert c["top1_difference"]["values"] == pytest.approx([0.01, 0.02, 0.03])
    assert c["top1_difference"]["mean"] == pytest.approx(0.02)
    assert c["train_speedup"] == pytest.approx(31 / 12, abs=1e-3)
    assert c["end_to_end_speedup"] == pytest.approx(62 / (24 + 6), abs=1e-3)
    r |= {
        "dump": {
            "seconds": 6.0,
            "rows": 128,
            "views": 2,
            "cache_bytes": 1e4,
            "codec": {"name": "fp16"},
        },
        "machine": {"nproc": 2, "cpu": "cpu", "paddle": "3"},
        "load_average_before_after": [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]],
        "command": "python benchmarks/online_vs_offline.py --seeds 0,1,2",
    }
    text = "\n".join(report.online_vs_offline_seeds(r))
    # 0.01, 0.02, 0.03: std 0.01, half-width 4.303 * 0.01 / sqrt(3) = 0.02484
    assert "| +2.00 ± 2.48 | -0.48 to +4.48 points: contains 0" in text
    assert "- offline SSLD, 2 view(s): +2.00 ± 2.48 points, 95% interval -0.48" in text
    assert "3 student seeds (0, 1, 2)" in text
    assert "| student only (no KD) | 70.00% ± 2.00 | ± 4.97 | 70.00, 72.00, 68.00 |" in text


# The speed pair's results as written before --seeds (one run per mode), kept as test data.
ONE_SEED = Path(__file__).parent / "data" / "online_vs_offline_one_seed.json"


def test_one_seed_results_render_without_intervals(tmp_path, monkeypatch):
    """A results file written before --seeds still renders, saying it has no interval."""
    (tmp_path / "online_vs_offline_accuracy.json").write_text(ONE_SEED.read_text())
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    text = report.online_vs_offline("accuracy")
    assert "one seed (0)" in text and "no difference above has an interval" in text
    assert "Reproduce: `python benchmarks/online_vs_offline.py" in text
