"""Smoke runs of the Fashion-MNIST pipeline and the online-vs-offline benchmark on real data.

CI installs Debian's dataset-fashion-mnist (pipelines/setup_env.sh); these tests check that
every stage produced its outputs and that the reported numbers are well formed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipelines import fashion_mnist

pytestmark = pytest.mark.skipif(
    not (fashion_mnist.IDX_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (pipelines/setup_env.sh does it)",
)


def _results(main, args: list[str], out) -> dict:
    """Run a benchmark's command in-process; the results file it wrote to `out`."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_pipeline_smoke_preset_runs_every_stage_and_resumes(tmp_path):
    work, data = tmp_path / "work", tmp_path / "data"
    args = ["--preset", "smoke", "--workdir", str(work), "--data-dir", str(data), "--quiet"]
    result = CliRunner().invoke(fashion_mnist.main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((work / "report.json").read_text())
    assert report["cache"]["rows"] == 256 * 2
    for model in ("teacher", "student", "student_only"):
        assert 0.0 <= report[model]["top1"] <= 1.0
    # the baseline: the same student, no teacher, reported beside the distilled one
    assert report["student_only"]["mode"].startswith("supervised")
    difference = report["student"]["top1"] - report["student_only"]["top1"]
    assert report["student_minus_student_only"]["top1"] == pytest.approx(difference)
    text = (work / "report.md").read_text()
    assert f"| {report['student_only']['top1']:.4f} |" in text
    assert f"**{100 * difference:+.2f} points**" in text
    assert f"**{100 * difference:+.2f} points**" in result.output
    assert all(_finite(v) and v >= 0 for v in report["stage_seconds"].values())
    assert len((data / "train_list.txt").read_text().splitlines()) == 256
    for path in (
        "teacher/best_model.safetensors",
        "student/best_model.safetensors",
        "student_only/best_model.safetensors",
        "cache/manifest.json",
        "report.md",
    ):
        assert (work / path).exists(), path
    # A second run finds every stage complete and redoes none of the training.
    before = {m: (work / m / "metrics.jsonl").read_text() for m in ("teacher", "student_only")}
    result = CliRunner().invoke(fashion_mnist.main, args)
    assert result.exit_code == 0, result.output
    assert {m: (work / m / "metrics.jsonl").read_text() for m in before} == before
    assert json.loads((work / "report.json").read_text())["stage_seconds"]["teacher"] < 5


def test_online_vs_offline_benchmark_smoke_two_seeds(tmp_path):
    from benchmarks import online_vs_offline

    out = tmp_path / "results.json"
    args = [
        *("--pair", "accuracy", "--preset", "smoke", "--images", "64", "--val-images", "32"),
        *("--batch-size", "32", "--epochs", "1", "--views", "1,2", "--teacher-epochs", "0"),
        *("--online-bn", "train", "--seeds", "0,1", "--workdir", str(tmp_path / "work")),
        *("--data-dir", str(tmp_path / "data"), "--out", str(out), "--quiet"),
    ]
    r = _results(online_vs_offline.main, args, out)
    modes = {"student_only", "online_bn_train", "offline_v1", "offline_v2"}
    assert r["command"].startswith("python ") and r["settings"]["seeds"] == [0, 1]
    # the file records the recipe each config ran with: --batch-size, and the config's own lr
    student_yaml = yaml.safe_load(fashion_mnist.STUDENT_CFG.read_text())
    assert r["settings"]["student_recipe"] == {
        "batch_size": 32,
        "lr": student_yaml["Optimizer"]["lr"]["learning_rate"],
    }
    assert r["settings"]["teacher_recipe"]["batch_size"] == 32
    assert r["teacher"]["weights"] == "random" and "once" in r["teacher"]["note"]
    assert r["dump"]["rows"] == 64 * 2 and r["dump"]["seconds"] > 0
    assert len(r["load_average_before_after"]) == 2
    # every round runs every mode once, and the second round starts with another mode
    assert set(r["runs"]) == {"0", "1"} == set(r["order"])
    assert all(sorted(order) == sorted(modes) for order in r["order"].values())
    assert r["order"]["0"][0] != r["order"]["1"][0]
    for runs in r["runs"].values():
        assert set(runs) == modes
        for run in runs.values():
            assert 0.0 <= run["last_top1"] <= run["best_top1"] <= 1.0
            assert _finite(run["median_epoch_seconds"]) and run["median_epoch_seconds"] > 0
    summary = r["summary"]
    for mode, v in summary["modes"].items():
        assert v["top1"]["values"] == [r["runs"][s][mode]["last_top1"] for s in ("0", "1")]
        assert v["top1"]["ci95"] is not None and v["top1"]["ci95"] >= 0
        per_run = [r["runs"][s][mode]["median_epoch_seconds"] for s in ("0", "1")]
        assert v["median_epoch_seconds"] == pytest.approx(sum(per_run) / 2, abs=1e-3)
    pairs = {(c["offline"], c["vs"]) for c in summary["comparisons"]}
    assert pairs == {
        (off, ref)
        for off in ("offline_v1", "offline_v2")
        for ref in ("online_bn_train", "student_only")
    }
    for c in summary["comparisons"]:
        diffs = [
            r["runs"][s][c["offline"]]["last_top1"] - r["runs"][s][c["vs"]]["last_top1"]
            for s in ("0", "1")
        ]
        assert c["top1_difference"]["values"] == pytest.approx(diffs, abs=1e-5)
        assert c["top1_difference"]["mean"] == pytest.approx(sum(diffs) / 2, abs=1e-5)
        half = 12.706 * abs(diffs[0] - diffs[1]) / math.sqrt(2) / math.sqrt(2)
        assert c["top1_difference"]["ci95"] == pytest.approx(half, abs=1e-4)
        ratio = (
            summary["modes"][c["vs"]]["median_epoch_seconds"]
            / summary["modes"][c["offline"]]["median_epoch_seconds"]
        )
        assert c["train_speedup"] == pytest.approx(ratio, abs=1e-3)
        assert (c["end_to_end_speedup"] is None) == (c["vs"] == "student_only")
    assert out.with_suffix(".png").stat().st_size > 1000


def test_ensemble_benchmark_smoke(tmp_path, monkeypatch):
    from benchmarks import ensemble
    from offline_ssld import train

    trained: dict[str, set[str]] = {}  # training mode -> the lists it read
    real_train = train.train

    def spy(cfg, mode, **kwargs):
        path = cfg["DataLoader"]["Train"]["dataset"]["cls_label_path"]
        trained.setdefault(mode, set()).add(path)
        return real_train(cfg, mode, **kwargs)

    monkeypatch.setattr(train, "train", spy)
    evaluated: list[dict] = []  # each teacher's eval config
    real_evaluate = train.evaluate_config

    def spy_eval(cfg):
        evaluated.append(cfg)
        return real_evaluate(cfg)

    monkeypatch.setattr(train, "evaluate_config", spy_eval)
    out = tmp_path / "ensemble.json"
    args = [
        *("--images", "64", "--val-images", "32", "--teachers", "resnet18:0,resnet18:1"),
        *("--teacher-images", "24", "--teacher-split", "disjoint"),  # each its own labels
        *("--teacher-epochs", "1", "--epochs", "1", "--views", "2", "--seeds", "0,1"),
        *("--batch-size", "32", "--workdir", str(tmp_path / "work")),
        *("--data-dir", str(tmp_path / "data"), "--out", str(out), "--quiet"),
    ]
    r = _results(ensemble.main, args, out)
    assert set(r["runs"]) == {"0", "1"}
    assert set(r["runs"]["0"]) == {"resnet18-s0", "resnet18-s1", "ensemble"}
    modes = ["resnet18-s0", "resnet18-s1", "ensemble"]  # rotated, so load drift hits all alike
    assert r["order"] == {"0": modes, "1": modes[1:] + modes[:1]}
    for mode in r["summary"]["top1"].values():
        assert 0.0 <= mode["mean"] <= 1.0 and len(mode["values"]) == 2
    assert r["summary"]["members"] == 2
    assert r["settings"]["teacher_images"] == 24
    lists = {mode: {Path(p).name for p in paths} for mode, paths in trained.items()}
    full = {"train_list.txt"}
    parts = {"train_list_rows0-24.txt", "train_list_rows24-48.txt"}
    assert lists == {"supervised": parts, "offline": full, "ensemble": full}
    train_lines = (tmp_path / "data" / "train_list.txt").read_text().splitlines()
    assert (tmp_path / "data" / "train_list_rows24-48.txt").read_text().splitlines() == (
        train_lines[24:48]
    )
    for tag, part in (("resnet18-s0", "0-24"), ("resnet18-s1", "24-48")):
        manifest = json.loads(  # ... and each teacher's dump covers all 64
            (tmp_path / "work" / f"cache_{tag}-rows{part}" / "manifest.json").read_text()
        )
        assert manifest["num_images"] == 64
    assert 0.0 <= r["ensemble_teacher_top1"] <= 1.0
    for cfg, tag in zip(evaluated, ("resnet18-s0", "resnet18-s1"), strict=True):
        # a teacher combined with itself is that teacher, under either rule
        for rule in ("mean_probs", "mean_logits"):
            assert ensemble.mixture_top1([cfg, cfg], rule) == r["teachers"][tag]["top1"]
    assert r["settings"]["student_recipe"]["batch_size"] == 32
    assert all(t["recipe"]["batch_size"] == 32 for t in r["teachers"].values())
    assert _finite(r["summary"]["time_ratio"]) and r["summary"]["time_ratio"] > 0
    for tag in ("resnet18-s0", "resnet18-s1"):  # paired on the same student seed
        diffs = [
            r["runs"][s]["ensemble"]["last_top1"] - r["runs"][s][tag]["last_top1"] for s in "01"
        ]
        assert r["summary"]["paired"][f"ensemble_minus_{tag}"]["values"] == pytest.approx(diffs)
    above = sum(
        all(r["runs"][s]["ensemble"]["last_top1"] > r["runs"][s][t]["last_top1"] for t in tags)
        for s in "01"
        for tags in [("resnet18-s0", "resnet18-s1")]
    )
    assert r["summary"]["seeds_ensemble_above_every_member"] == above
    from benchmarks.render.ensemble import ensemble

    text = ensemble(r)
    assert "- minus ResNet18 (seed 1) alone: " in text and f"in {above} of 2 seeds" in text
    assert text.startswith("Each teacher learns from the labels of its own 24 of 64 train")
    assert f"| ensemble of 2 (mean_probs) | {100 * r['ensemble_teacher_top1']:.2f}% |" in text
    assert "(this run:" not in text  # a note on how a run was made shows only when recorded
    assert ensemble({**r, "note": "teachers reused"}).count("` (this run: teachers reused)") == 1
    ckpt = json.loads((tmp_path / "work" / "s0_ensemble" / "latest.json").read_text())
    assert len(ckpt["targets"]["members"]) == 2


def test_codec_accuracy_benchmark_smoke(tmp_path):
    from benchmarks import codec_accuracy

    out = tmp_path / "codec_accuracy.json"
    args = [
        *("--images", "64", "--val-images", "32", "--teacher-epochs", "1", "--epochs", "1"),
        *("--views", "2", "--seeds", "0,1", "--batch-size", "32"),
        *("--settings", "fp16,topk k=1,topk k=3 spread"),
        *("--workdir", str(tmp_path / "work"), "--data-dir", str(tmp_path / "data")),
        *("--out", str(out), "--quiet"),
    ]
    r = _results(codec_accuracy.main, args, out)
    assert set(r["runs"]["1"]) == {"fp16", "topk k=1", "topk k=3 spread"}
    acc = r["accuracy"]
    assert acc["topk k=1"]["bytes_per_row"] < acc["fp16"]["bytes_per_row"]
    # the teacher mass a top-k cache drops: none for fp16, less for a larger k, at most
    # (C - k) / C, since the k largest hold at least k / C of it
    assert acc["fp16"]["dropped_mass"] is None
    assert 0.0 < acc["topk k=3 spread"]["dropped_mass"] < acc["topk k=1"]["dropped_mass"] <= 0.9
    for v in acc.values():
        assert 0.0 <= v["mean"] <= 1.0 and len(v["values"]) == 2
    assert acc["fp16"]["minus_fp16"]["mean"] == 0.0
    math_part = r["math_1000_classes"]["settings"]
    assert math_part["fp16"]["cosine_near_student"] > 0.999
    # the transcoded caches keep the dump's views: a topk cache exists beside the fp16 one
    assert (tmp_path / "work" / "cache_topk_k1" / "manifest.json").exists()
    assert out.with_suffix(".png").stat().st_size > 1000


def test_ssld_pool_pipeline_smoke(tmp_path):
    from pipelines import ssld_pool

    out = tmp_path / "ssld_pool.json"
    args = [
        *("--labeled", "48", "--pool", "96", "--val-images", "32", "--duplicates", "6"),
        *("--per-class", "3", "--teacher-epochs", "1", "--epochs", "1", "--views", "2"),
        *("--seeds", "0", "--batch-size", "32", "--workdir", str(tmp_path / "work")),
        *("--data-dir", str(tmp_path / "data"), "--out", str(out), "--quiet"),
    ]
    r = _results(ssld_pool.main, args, out)
    assert set(r["summary"]) == set(ssld_pool.ARMS)
    assert r["settings"]["student_recipe"]["batch_size"] == 32  # --batch-size, recorded
    sel = r["selection"]
    assert 0 < sel["selected"] <= 3 * ssld_pool.TASK_CLASSES
    assert sel["planted"] == 6 and 0 <= sel["planted_removed"] <= 6
    assert r["summary"]["selected"]["extra_images"] == sel["selected"]
    assert r["summary"]["random"]["extra_images"] == sel["selected"]
    assert r["summary"]["pool"]["extra_images"] == 96 + 6
    for arm in r["summary"].values():
        assert 0.0 <= arm["mean"] <= 1.0
    # every arm trained from the one cache: its checkpoints name the same cache fingerprint
    prints = {
        json.loads((tmp_path / "work" / f"s0_{arm}" / "latest.json").read_text())["targets"][
            "fingerprint"
        ]
        for arm in ("labeled", "random", "selected", "pool")
    }
    assert len(prints) == 1


def test_prepare_pairs_labels_each_image_by_its_two_real_garments(tmp_path):
    """Each pair image is two Fashion-MNIST images of the classes its label names, and the
    100 classes are balanced."""
    import cv2
    import numpy as np

    fashion_mnist.prepare_pairs(tmp_path, train=200, val=100)
    images = fashion_mnist.read_idx(fashion_mnist.IDX_DIR / "train-images-idx3-ubyte.gz")
    labels = fashion_mnist.read_idx(fashion_mnist.IDX_DIR / "train-labels-idx1-ubyte.gz")
    by_bytes = {img.tobytes(): int(y) for img, y in zip(images, labels, strict=True)}
    lines = (tmp_path / "train_list.txt").read_text().splitlines()
    assert len(lines) == 200 and len((tmp_path / "val_list.txt").read_text().splitlines()) == 100
    pair_labels = [int(line.split()[1]) for line in lines]
    assert sorted(set(pair_labels)) == list(range(100)) and pair_labels.count(7) == 2
    for line in lines[:30]:
        rel, label = line.split()
        img = cv2.imread(str(tmp_path / rel), cv2.IMREAD_GRAYSCALE)
        assert img.shape == (28, 56)
        left, right = np.ascontiguousarray(img[:, :28]), np.ascontiguousarray(img[:, 28:])
        assert (by_bytes[left.tobytes()], by_bytes[right.tobytes()]) == divmod(int(label), 10)
    before = (tmp_path / "train_list.txt").stat().st_mtime_ns
    fashion_mnist.prepare_pairs(tmp_path, train=200, val=100)  # idempotent
    assert (tmp_path / "train_list.txt").stat().st_mtime_ns == before


def test_codec_accuracy_benchmark_pairs_task_runs_100_classes(tmp_path):
    from benchmarks import codec_accuracy

    out = tmp_path / "codec_accuracy_pairs.json"
    args = [
        *("--task", "pairs", "--images", "100", "--val-images", "100"),
        *("--teacher-epochs", "1", "--epochs", "1", "--views", "1", "--seeds", "0"),
        *("--batch-size", "50", "--settings", "fp16,topk k=5"),
        *("--workdir", str(tmp_path / "work"), "--data-dir", str(tmp_path / "data")),
        *("--out", str(out), "--quiet"),
    ]
    r = _results(codec_accuracy.main, args, out)
    assert r["settings"]["classes"] == 100 and r["math_1000_classes"] is None
    assert r["accuracy"]["fp16"]["bytes_per_row"] == 200  # 100 fp16 logits
    assert r["accuracy"]["topk k=5"]["bytes_per_row"] < 200
    assert 0.0 < r["accuracy"]["topk k=5"]["dropped_mass"] <= 0.95
    manifest = json.loads((tmp_path / "work" / "cache" / "manifest.json").read_text())
    assert manifest["num_classes"] == 100


def test_pipeline_quick_shape_unlabeled_images_final_only_schedule(tmp_path, monkeypatch):
    """The quick start's shape. SSLD's unlabeled images: the teacher and the student-only
    baseline learn the labeled list, the teacher is dumped over labeled + unlabeled and the
    distilled student learns all of them, and the report says what each one saw. Its schedule:
    eval (with its BatchNorm recalibration) and epoch_N checkpoints after the last epoch only,
    the teacher's own recipe, the seed recorded."""
    quick = fashion_mnist.PRESETS["quick"]
    assert quick.final_only and quick.teacher_overrides and quick.unlabeled_images
    tiny = fashion_mnist.Preset(
        64,
        32,
        2,
        2,
        1,
        None,
        quick.teacher_overrides,
        final_only=True,
        unlabeled_images=24,
        distill_epochs=1,
    )
    monkeypatch.setitem(fashion_mnist.PRESETS, "tiny-final", tiny)
    from offline_ssld import train

    runs: list[tuple[str, dict]] = []  # (mode, config) of every training
    real_train = train.train

    def spy(cfg, mode, **kwargs):
        runs.append((mode, cfg))
        return real_train(cfg, mode, **kwargs)

    monkeypatch.setattr(train, "train", spy)
    work, data = tmp_path / "work", tmp_path / "data"
    report = fashion_mnist.run("tiny-final", work, data, progress=False, seed=3)
    text = (work / "report.md").read_text()
    assert report["seed"] == 3 and "seed 3;" in text
    lists = {
        Path(cfg["Global"]["output_dir"]).name: cfg["DataLoader"]["Train"]["dataset"][
            "cls_label_path"
        ]
        for _, cfg in runs
    }
    assert lists == {
        "teacher": str(data / "train_list.txt"),
        "student": str(data / "distill_list.txt"),
        "student_only": str(data / "train_list.txt"),
    }
    assert len((data / "unlabeled_list.txt").read_text().split()) == 24  # paths, no labels
    assert report["cache"]["rows"] == 64 + 24  # the teacher's outputs on both, one view
    labeled, both = {"labeled": 64, "unlabeled": 0}, {"labeled": 64, "unlabeled": 24}
    assert report["teacher"]["images"] == report["student_only"]["images"] == labeled
    assert report["student"]["images"] == both
    assert [report[m]["epochs"] for m in ("teacher", "student", "student_only")] == [2, 1, 2]
    assert text.count("| 64 | 0 | 2 |") == 2 and text.count("| 64 | 24 | 1 |") == 1
    stages = {"prepare", "teacher", "dump", "student", "student_only", "eval"}
    assert set(report["stage_seconds"]) == stages  # every stage the quick start times
    for stage, n in (("teacher", 2), ("student", 1), ("student_only", 2)):
        lines = [json.loads(x) for x in (work / stage / "metrics.jsonl").read_text().splitlines()]
        assert [("top1" in x) for x in lines] == [False] * (n - 1) + [True], stage
        assert not (work / stage / f"epoch_{n - 1}.json").exists()
        assert (work / stage / f"epoch_{n}.json").exists()
    latest = json.loads((work / "teacher" / "latest.json").read_text())
    assert latest["epoch"] == 2
    # the teacher trains with the preset's recipe, not the shipped config's batch 128 at lr 0.1
    ((_, teacher_cfg),) = [(m, c) for m, c in runs if c["Arch"]["name"] != "DistillationModel"]
    assert teacher_cfg["DataLoader"]["Train"]["sampler"]["batch_size"] == 32
    assert teacher_cfg["Optimizer"]["lr"]["learning_rate"] == 0.05
