"""Every distillation config PaddleClas ships, sent through the overlay, a tiny dump and one
epoch of train-student with its own transforms, backbones and losses (see
benchmarks/paddleclas_configs.py). The recorded statuses (and so the README table) must be
what the code does now, and a refusal is either inherent to caching a teacher or names the
key at fault."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from benchmarks.paddleclas_configs import (
    INHERENT,
    OVERLAY,
    RESULTS,
    shipped,
    survey_one,
    weights_plan,
)
from offline_ssld.cli import main

SHIPPED = shipped()
RECORDED = json.loads(RESULTS.read_text())


def test_results_cover_every_shipped_config_at_the_same_commit():
    assert RECORDED["paddleclas"] == SHIPPED["source"]
    assert sorted(RECORDED["configs"]) == sorted(SHIPPED["configs"])
    assert (
        len(SHIPPED["configs"]) == 29
    )  # every ppcls/configs YAML whose Arch is a DistillationModel


def test_every_runnable_config_passes_overlay_as_shipped(tmp_path):
    """Issue 30's done-when: the shipped YAML plus the overlay, no -o at all (weights as
    shipped: zoo downloads are named, not refused and not run); the inherent refusals are
    the recorded ones and name the key."""
    for path, raw in SHIPPED["configs"].items():
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        result = CliRunner().invoke(main, ["overlay", "-c", str(config), "-c", str(OVERLAY)])
        recorded = RECORDED["configs"][path]
        if recorded["status"] == "runs":
            assert result.exit_code == 0, (path, result.output[-300:])
            assert "could not" not in result.output
        else:
            assert result.exit_code == 2
            assert result.output.strip().splitlines()[-1] == f"error: {recorded['message']}"


def test_weights_column_says_what_was_stood_in():
    runs = {p: v for p, v in RECORDED["configs"].items() if v["status"] == "runs"}
    for path, result in runs.items():
        assert result["weights"] == weights_plan(SHIPPED["configs"][path])[0]
    zoo = [p for p, v in runs.items() if "served on 127.0.0.1" in v["weights"]]
    assert any("PULC" in p for p in zoo) and any("ImageNet" in p for p in zoo)


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(SHIPPED["configs"]))
def test_shipped_config_runs_or_is_refused_as_recorded(path, tmp_path):
    got = survey_one(SHIPPED["configs"][path], tmp_path)
    assert got == RECORDED["configs"][path], "rerun: python benchmarks/paddleclas_configs.py"
    if got["status"] == "refused (inherent)":
        assert got["reason"] in INHERENT.values()
    elif got["status"] == "not yet":
        assert got["message"].startswith(got["reason"] + ":")  # names the key at fault
