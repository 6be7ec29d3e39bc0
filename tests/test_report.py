"""offline-ssld report: planted mislabeled images rank at the top of the label-noise list, a
planted self-contradicting view tops the disagreement list, and a student checkpoint adds
the agreement section; every new command's --help has an example."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from offline_ssld.cache.writer import BackgroundWriter, open_cache
from offline_ssld.cli import main
from offline_ssld.config.loading import load_config
from offline_ssld.dump import run_dump, shard_columns
from offline_ssld.tools.report import write_report
from tests.helpers import (
    CLASSES,
    STUDENT,
    fake_params,
    plan_cache,
    save_random_weights,
    shard_items,
)

PLANTED = (3, 10, 17)  # list lines whose label is changed: the teacher knows better
DOUBTFUL = 7  # its view 1 gets another argmax


def test_planted_label_noise_ranks_first(project):
    path, tmp = project
    listing = tmp / "train_list.txt"
    lines = listing.read_text().splitlines()
    truth = [int(line.split()[1]) for line in lines]
    for i in PLANTED:
        lines[i] = f"{lines[i].split()[0]} {(truth[i] + 2) % CLASSES}"
    listing.write_text("\n".join(lines) + "\n")
    plan = plan_cache(path)
    manifest = open_cache(tmp / "cache", plan.manifest, keys=plan.keys)
    writer = BackgroundWriter(tmp / "cache", manifest)
    for shard in range(manifest.num_shards):
        items = shard_items(manifest, shard)
        rng = np.random.default_rng(shard)
        logits = rng.normal(0, 0.5, (len(items), CLASSES))
        for row, item in enumerate(items):
            image, view = divmod(int(item), manifest.views)
            true = truth[image]
            if image == DOUBTFUL and view == 1:
                true = (true + 1) % CLASSES
            logits[row, true] += 4.0
        columns = shard_columns(plan, shard, items, fake_params(manifest, items), logits)
        writer.submit(shard, columns, len(items) // manifest.views)
    writer.close()

    result = CliRunner().invoke(main, ["report", "-c", str(path), "--out", str(tmp / "rep")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp / "rep" / "report.json").read_text())
    suspects = data["label_suspects"]
    top = {s["path"] for s in suspects[: len(PLANTED)]}
    assert top == {lines[i].split()[0] for i in PLANTED}
    assert all(s["line"] - 1 in PLANTED for s in suspects[: len(PLANTED)])
    assert data["self_disagreement"]["ranking"][0]["path"] == lines[DOUBTFUL].split()[0]
    assert data["self_disagreement"]["images"] == 1
    assert data["per_class_accuracy"][truth[PLANTED[0]]] < 1.0
    text = (tmp / "rep" / "report.md").read_text()
    assert lines[PLANTED[0]].split()[0] in text and "confusion.png" in text
    assert (tmp / "rep" / "confusion.png").stat().st_size > 0
    assert (tmp / "rep" / "entropy.png").stat().st_size > 0


def test_report_with_student_compares_on_replayed_views(project):
    path, tmp = project
    cfg = load_config([str(path)])
    run_dump(cfg, progress=False)
    ckpt = save_random_weights(STUDENT, tmp / "student.safetensors", seed=1)
    write_report(cfg, tmp / "rep", str(ckpt)[: -len(".safetensors")])
    data = json.loads((tmp / "rep" / "report.json").read_text())
    student = data["student"]
    assert len(student["ranking"]) == data["images"] == 24
    assert 0.0 <= student["agreement"] <= 1.0
    tv = [d["total_variation"] for d in student["ranking"]]
    assert tv == sorted(tv, reverse=True)
    assert (tmp / "rep" / "agreement.png").exists()
    assert "## Teacher and student" in (tmp / "rep" / "report.md").read_text()


@pytest.mark.parametrize("command", ["merge", "report", "train-student"])
def test_new_commands_have_help_with_example(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and f"offline-ssld {command}" in result.output
