"""SIGKILL or interrupt train-student mid-epoch and at checkpoint boundaries; `--resume`
finishes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter

import pytest

from offline_ssld import train as train_module
from offline_ssld.config.loading import load_config
from offline_ssld.dump import run_dump
from offline_ssld.train import train
from tests.reliability.common import (
    CLI,
    FAULTS,
    TRAIN_KILLS,
    metric_lines,
    o_flags,
    read_json,
    wait_for,
)


def test_sigkill_train_student_mid_epoch_then_resume(project, rlog):
    """SIGKILL train-student during an epoch; `--resume` finishes with one metrics line per
    epoch."""
    config, tmp = project
    epochs = 4
    run_dump(load_config([str(config)], []), progress=False)
    env = {**os.environ, "GLOG_minloglevel": "2"}
    rng = random.Random(11)
    outcomes: Counter = Counter()
    failures: list[str] = []
    stale: list[str] = []
    for trial in range(TRAIN_KILLS):
        out = tmp / f"train{trial}"
        overrides = [f"Global.output_dir={out}", f"Global.epochs={epochs}"]
        args = ["train-student", "-c", str(config), "--quiet", *o_flags(overrides)]
        with open(tmp / f"train{trial}.log", "wb") as log:
            proc = subprocess.Popen([str(CLI), *args], stdout=log, stderr=log, env=env)
        metrics = out / "metrics.jsonl"
        first = wait_for(lambda metrics=metrics: len(metric_lines(metrics)) >= 1, proc)
        assert first is not None, (tmp / f"train{trial}.log").read_text()[-2000:]
        # One epoch (training, eval, checkpoint) takes a little longer than its train_seconds.
        epoch_seconds = 1.5 * metric_lines(metrics)[0]["train_seconds"]
        time.sleep(rng.uniform(0.0, epoch_seconds))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        latest = read_json(out / "latest.json")
        at_kill = int(latest["epoch"]) if latest else 0
        if proc.returncode != -signal.SIGKILL:
            outcomes["finished before the kill"] += 1
        else:
            outcomes[f"killed in epoch {at_kill + 1} of {epochs}"] += 1

        result = train(
            load_config([str(config)], overrides), "offline", resume=True, progress=False
        )
        problems = []
        final = read_json(out / "latest.json")
        if not final or final["epoch"] != epochs:
            problems.append(f"latest.json is {final}")
        lines = [m["epoch"] for m in metric_lines(metrics)]
        if lines != list(range(1, epochs + 1)):
            problems.append(f"metrics.jsonl epochs {lines}")
        if len(result.train_seconds) != epochs - at_kill:
            problems.append(
                f"resumed run trained {len(result.train_seconds)} epochs, expected "
                f"{epochs - at_kill} (from the checkpoint of epoch {at_kill})"
            )
        stale += [p.name for p in out.iterdir() if p.name.startswith(".")]
        if problems:
            failures.append(f"trial {trial}: {problems}")
    rlog.record(
        FAULTS,
        "SIGKILL train-student mid-epoch, then --resume",
        outcomes,
        ok=not failures,
        goal="--resume continues from the last checkpoint and finishes: latest.json epoch == "
        "Global.epochs, metrics.jsonl holds epochs 1..N once each",
        notes=f"{TRAIN_KILLS - len(failures)} of {TRAIN_KILLS} resumed runs finished correctly. "
        f"Subprocess `offline-ssld train-student`, {epochs} epochs, killed at a seeded random "
        "moment within the epoch after the first metrics line. Temporary checkpoint files "
        f"left in output_dir by the killed runs: {stale or 'none'}."
        + (f" Failures: {failures}" if failures else ""),
    )
    assert not failures, failures


class _Killed(BaseException):
    """Stands for SIGKILL at an exact point (nothing in the library catches it)."""


def test_train_interrupted_at_checkpoint_boundaries(project, monkeypatch, rlog):
    """The moments a random kill rarely hits, made exact in-process: right after a checkpoint
    is written, and between checkpoints (save_interval 2)."""
    config, tmp = project
    epochs = 4
    run_dump(load_config([str(config)], []), progress=False)
    real_save = train_module.save_checkpoint
    outcomes: Counter = Counter()
    failures: list[str] = []
    cases = {
        "killed right after the checkpoint of epoch 2": ["Global.save_interval=1"],
        "killed after epoch 3 with save_interval 2 (checkpoint of epoch 2)": [
            "Global.save_interval=2"
        ],
    }
    for trial, (case, extra) in enumerate(cases.items()):
        out = tmp / f"boundary{trial}"
        cfg = load_config(
            [str(config)], [f"Global.output_dir={out}", f"Global.epochs={epochs}", *extra]
        )

        def save_then_die(where, tag, model, optimizer, info, *rest, trial=trial, **kw):
            real_save(where, tag, model, optimizer, info, *rest, **kw)
            if trial == 0 and tag == "latest" and info["epoch"] == 2:
                raise _Killed

        if trial == 0:
            monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
            with pytest.raises(_Killed):
                train(cfg, "offline", progress=False)
            monkeypatch.undo()
        else:
            train(cfg, "offline", progress=False, stop_after=3)
        at_kill = read_json(out / "latest.json")["epoch"]
        result = train(cfg, "offline", resume=True, progress=False)
        lines = [m["epoch"] for m in metric_lines(out / "metrics.jsonl")]
        ok = (
            lines == list(range(1, epochs + 1))
            and read_json(out / "latest.json")["epoch"] == epochs
            and len(result.train_seconds) == epochs - at_kill
        )
        outcomes[f"{case}: " + ("resumed, one line per epoch" if ok else "FAILED")] += 1
        if not ok:
            failures.append(f"{case}: metrics epochs {lines}")
    rlog.record(
        FAULTS,
        "train-student interrupted at checkpoint boundaries (in-process, exact)",
        outcomes,
        ok=not failures,
        goal="--resume finishes with metrics.jsonl holding epochs 1..N once each",
        notes="Before the fix in train.py, the second case logged epoch 3 twice and a kill "
        "between a checkpoint and its metrics line lost that epoch's line."
        + (f" Failures: {failures}" if failures else ""),
    )
    assert not failures, failures
