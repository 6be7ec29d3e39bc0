"""benchmarks/report.py and its render functions: the multi-seed schema renders paired
intervals and says what they show; the earlier one-seed files still render, without one; and
--check fails on a stale, missing or unregistered block in README.md or docs/."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.common import rotated
from benchmarks.online_vs_offline import aggregate
from benchmarks.render.common import interval_reading
from benchmarks.render.online_vs_offline import headline, online_vs_offline_seeds, student_recipe


def _run(top1: float, epoch_s: float) -> dict:
    return {
        "best_top1": top1,
        "last_top1": top1,
        "median_epoch_seconds": epoch_s,
        "median_images_per_second": 100 / epoch_s,
        "train_seconds": 2 * epoch_s,
    }


def test_interval_reading_says_only_what_the_interval_shows():
    assert "contains 0" in interval_reading({"mean": 0.01, "ci95": 0.02})
    assert interval_reading({"mean": 0.05, "ci95": 0.02}).endswith("offline higher")
    assert interval_reading({"mean": -0.05, "ci95": 0.02}) == (
        "-7.00 to -3.00 points: offline lower"
    )
    assert interval_reading({"mean": -0.05, "ci95": None}) == "none (one seed)"


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


def test_student_recipe_table_reads_before_and_after_files():
    before = _multi_seed_results(0.0, None)
    after = _multi_seed_results(0.1, {"batch_size": 32, "lr": 0.05})
    text = student_recipe(before, after)
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
    text = "\n".join(online_vs_offline_seeds(r))
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
    study = next(s for s in report.STUDIES if s.name == "accuracy")
    text = report.block(study)
    assert "one seed (0)" in text and "no difference above has an interval" in text
    assert "Reproduce: `python benchmarks/online_vs_offline.py" in text


def test_headline_reads_both_pairs_with_their_intervals():
    """The README's headline: the multi-seed pair with what its intervals show, the one-seed
    random-teacher pair with its speedups only."""
    import json

    accuracy = _multi_seed_results(0.0, None)
    speed = json.loads(ONE_SEED.read_text())
    speed["teacher"]["top1"] = None
    rows = headline(accuracy, speed).splitlines()
    assert rows[2].startswith("| [accuracy pair](docs/results/online_vs_offline.md): ")
    assert "3 paired seeds | +0.00 ± 2.48 (-2.48 to +2.48 points: contains 0" in rows[2]
    modes = speed["modes"]
    train = (
        modes["online_bn_train"]["median_epoch_seconds"]
        / modes["offline_v1"]["median_epoch_seconds"]
    )
    assert "random teacher (timing only) | - | - | " in rows[3]
    assert f"| {train:.2f}x |" in rows[3]


def _toy(tmp_path, monkeypatch, studies):
    """A repository of its own: results and docs under tmp_path, the given studies."""
    import json

    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "toy.json").write_text(json.dumps({"value": 1, "command": "/x/bin/python3 toy.py"}))
    monkeypatch.setattr(report, "ROOT", tmp_path)
    monkeypatch.setattr(report, "RESULTS", results)
    monkeypatch.setattr(report, "STUDIES", studies)
    return results


def _toy_render(r: dict) -> str:
    return f"value {r['value']}, [chart](benchmarks/results/toy.png), `{r['command']}`"


def _main(*args: str):
    from click.testing import CliRunner

    return CliRunner().invoke(report.main, list(args))


def test_one_registry_entry_creates_its_page_and_check_catches_staleness(tmp_path, monkeypatch):
    """A new study is one Study entry: the write creates its page and block; --check then
    passes, and fails (naming the doc) once the results file changes, for README.md and a
    docs/results page alike."""
    import json

    studies = (
        report.Study("toy_head", "README.md", _toy_render, ("toy.json",)),
        report.Study("toy", "docs/results/toy.md", _toy_render, ("toy.json",), "python toy.py"),
    )
    results = _toy(tmp_path, monkeypatch, studies)
    (tmp_path / "README.md").write_text(
        "# r\n\n<!-- BEGIN results:toy_head -->\n<!-- END results:toy_head -->\n"
    )
    assert _main("--check").exit_code == 1
    assert _main().exit_code == 0
    page = (tmp_path / "docs" / "results" / "toy.md").read_text()
    # links are written from the repository root and rewritten from the page's folder
    assert "value 1, [chart](../../benchmarks/results/toy.png), `python toy.py`" in page
    assert "value 1, [chart](benchmarks/results/toy.png)" in (tmp_path / "README.md").read_text()
    assert _main("--check").exit_code == 0
    (results / "toy.json").write_text(json.dumps({"value": 2, "command": "toy.py"}))
    stale = _main("--check")
    assert stale.exit_code == 1
    assert "README.md: generated blocks are stale" in stale.output
    assert "docs/results/toy.md: generated blocks are stale" in stale.output
    (results / "toy.json").unlink()
    assert _main().exit_code == 0
    assert (
        "_not measured yet: run `python toy.py`_" in (tmp_path / "docs/results/toy.md").read_text()
    )


def test_check_fails_on_a_block_no_study_renders(tmp_path, monkeypatch):
    """A block left behind in the wrong doc (or of a study that was removed) fails --check."""
    studies = (report.Study("toy", "docs/results/toy.md", _toy_render, ("toy.json",)),)
    _toy(tmp_path, monkeypatch, studies)
    assert _main().exit_code == 0
    (tmp_path / "README.md").write_text(
        "<!-- BEGIN results:toy -->\nold\n<!-- END results:toy -->\n"
    )
    out = _main("--check")
    assert out.exit_code == 1 and "README.md: block 'toy' is not a study of this doc" in out.output


def test_the_repository_docs_are_up_to_date():
    """What CI's `python benchmarks/report.py --check` runs: every block current, none stray."""
    assert report.problems() == []
