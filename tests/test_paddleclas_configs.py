"""Every distillation config PaddleClas ships, sent through the overlay, a tiny dump and one
epoch of train-student with its own transforms, backbones and losses (see
benchmarks/paddleclas_configs.py). The recorded statuses (and so the README table) must be
what the code does now, and a refusal is either inherent to caching a teacher or names the
key at fault."""

from __future__ import annotations

import json

import pytest

from benchmarks.paddleclas_configs import INHERENT, RESULTS, shipped, survey_one

SHIPPED = shipped()
RECORDED = json.loads(RESULTS.read_text())


def test_results_cover_every_shipped_config_at_the_same_commit():
    assert RECORDED["paddleclas"] == SHIPPED["source"]
    assert sorted(RECORDED["configs"]) == sorted(SHIPPED["configs"])
    assert (
        len(SHIPPED["configs"]) == 29
    )  # every ppcls/configs YAML whose Arch is a DistillationModel


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(SHIPPED["configs"]))
def test_shipped_config_runs_or_is_refused_as_recorded(path, tmp_path):
    got = survey_one(SHIPPED["configs"][path], tmp_path)
    assert got == RECORDED["configs"][path], "rerun: python benchmarks/paddleclas_configs.py"
    if got["status"] == "refused (inherent)":
        assert got["reason"] in INHERENT.values()
    elif got["status"] == "not yet":
        assert got["message"].startswith(got["reason"] + ":")  # names the key at fault
