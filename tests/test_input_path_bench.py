"""benchmarks/input_path.py at a tiny size: every mode runs (PaddleClas's own DataLoader from its
source tree included), the results file is whole, and the renderer derives its sentences."""

from __future__ import annotations

import json

from tests.paddleclas_source import paddleclas_source
from tests.test_benchmarks_smoke import load, run


def test_input_path_smoke_and_render(tmp_path):
    paddleclas_source()  # skips, saying how to get it, when PaddleClas's source is missing
    module = load("input_path")
    out = tmp_path / "input_path.json"
    images = tmp_path / "images"
    args = ["--images", 64, "--rounds", 1, "--views", 1, "--image-dir", images, "--out", out]
    run(module.main, args)
    report = json.loads(out.read_text())
    modes = {(r["mode"], r["ops"], r["workers"]) for r in report["runs"]}
    for ops in ("standard", "strong"):
        for workers in (1, 2):
            assert ("ours", ops, workers) in modes and ("paddleclas", ops, workers) in modes
    assert ("dump", "standard", 2) in modes and ("floor", "standard", 1) in modes
    assert ("handover", "standard", 1) in modes
    assert report["images"]["mean_kib"] > 0 and report["images"]["count"] == 64
    baseline = tmp_path / "before.json"
    baseline.write_text(out.read_text())
    run(module.main, [*args[:-2], "--modes", "ours", "--baseline", baseline, "--out", out])
    text = module.render_input_path(json.loads(out.read_text()))
    assert "Before and after" in text
    first = module.render_input_path(report)
    ours = [r["images_per_s"] for r in report["runs"] if r["mode"] == "ours"]
    assert "| standard | 1 |" in first and f"{ours[0]:.0f}" in first
    assert "Cores per GPU" in first and "ASSUMED" in first and "taking over a batch" in first
