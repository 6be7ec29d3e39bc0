"""A kill at every file operation of a checkpoint write, then resume: the state that comes
back is one epoch's (weights, optimizer, .pdparams/.pdopt/.pdstates and epoch together), and
the run finishes as an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file

from offline_ssld.checkpoint import (
    PaddleClasNames,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from offline_ssld.config.loading import load_config
from offline_ssld.optim import build_optimizer
from offline_ssld.train import train
from tests.reliability.common import FAULTS, read_json
from tests.reliability.log import FULL
from tests.test_checkpoint import CFG  # Momentum, Cosine with warmup, L2

EPOCHS, STEPS = 3, 2
OPS = ("replace", "fsync", "unlink", "rmdir", "mkdir")  # every durable step of a write


class _Killed(BaseException):
    """The process is gone: nothing in the library catches it."""


class KillAt:
    """Patch the file operations of `os`: the k-th one (1-based) and every later one raise
    without acting, as a SIGKILL there would leave the disk."""

    def __init__(self, monkeypatch, k: int | None) -> None:
        self.k, self.count = k, 0
        for name in OPS:
            monkeypatch.setattr(os, name, self._wrap(getattr(os, name)))

    def _wrap(self, real):
        def op(*args, **kwargs):
            self.count += 1
            if self.k is not None and self.count >= self.k:
                raise _Killed
            return real(*args, **kwargs)

        return op


def _run(out: Path, start: int) -> tuple[int, dict]:
    """Epochs start+1..EPOCHS of a tiny model, checkpointing best_model, epoch_N and latest
    each epoch as train does; resumes from `out`/latest when start > 0. Returns the epoch
    resumed from and the final weights."""
    with paddle.utils.unique_name.guard():  # names as in a fresh process, run after run
        return _epochs(out, start)


def _epochs(out: Path, start: int) -> tuple[int, dict]:
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Linear(4, 8), paddle.nn.BatchNorm1D(8))
    names = PaddleClasNames("Student.", {k: p.name for k, p in model.state_dict().items()})
    optimizer, sched = build_optimizer(CFG, model.parameters(), STEPS, EPOCHS)
    if start:
        start = load_checkpoint(out, "latest", model, optimizer)["epoch"]
    for epoch in range(start, EPOCHS):
        rng = np.random.default_rng(epoch)
        for _ in range(STEPS):
            x = paddle.to_tensor(rng.standard_normal((6, 4)).astype("float32"))
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.clear_grad()
            sched.step()
        info = {"epoch": epoch + 1, "top1": 0.1 * (epoch + 1)}
        for tag in ("best_model", f"epoch_{epoch + 1}", "latest"):
            save_checkpoint(out, tag, model, optimizer, info, names, metric=info["top1"])
    return start, {k: v.numpy() for k, v in model.state_dict().items()}


def _one_epoch(out: Path, reference: Path) -> list[str]:
    """Problems with `out`/latest: every file must be the reference run's epoch_E file."""
    epoch = json.loads((out / "latest.json").read_text())["epoch"]
    problems = []
    for suffix in (".safetensors", ".opt.safetensors", ".pdparams", ".pdopt", ".pdstates"):
        theirs = reference / f"epoch_{epoch}{suffix}"
        if suffix in (".safetensors", ".opt.safetensors"):
            same = _same(load_file(str(out / f"latest{suffix}")), load_file(str(theirs)))
        else:
            same = _same_pickle(paddle.load(str(out / f"latest{suffix}")), paddle.load(str(theirs)))
        if not same:
            problems.append(f"latest{suffix} is not epoch {epoch}'s")
    return problems


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _same_pickle(a, b) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_pickle(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_pickle(a[k], b[k]) for k in a)
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def test_kill_at_every_file_operation_of_a_checkpoint_write(tmp_path, monkeypatch, rlog):
    reference = tmp_path / "reference"
    counter = KillAt(monkeypatch, None)
    _, final = _run(reference, 0)
    per_run = counter.count
    monkeypatch.undo()
    outcomes: Counter = Counter()
    failures: list[str] = []
    # every operation of the middle epoch's writes (a whole set in place, a new one coming),
    # every 5th of the others; all of them with OFFLINE_SSLD_FULL=1
    third = range(per_run // 3, 2 * per_run // 3 + 1)
    points = [k for k in range(1, per_run + 1) if FULL or k in third or k % 5 == 0]
    for k in points:
        out = tmp_path / f"kill{k}"
        with monkeypatch.context() as patch:
            KillAt(patch, k)
            with pytest.raises(_Killed):
                _run(out, 0)
        # what --resume sees: has_checkpoint finishes or discards the cut write first
        problems = _one_epoch(out, reference) if has_checkpoint(out, "latest") else []
        start, weights = _run(out, 1 if has_checkpoint(out, "latest") else 0)
        problems += [f"final {n} differs" for n in final if not np.allclose(weights[n], final[n])]
        problems += [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging left
        outcomes[f"resumed from epoch {start}" if not problems else "FAILED"] += 1
        if problems:
            failures.append(f"kill at operation {k}: {problems}")
        shutil.rmtree(out)
    rlog.record(
        FAULTS,
        "Kill at every file operation of a checkpoint write, then resume",
        outcomes,
        ok=not failures,
        goal="latest's weights, optimizer state, .pdparams, .pdopt and .pdstates all equal one "
        "epoch's (the uninterrupted run's epoch_N files); the resumed run ends with the "
        "uninterrupted run's weights; no staging directory left",
        notes=f"{len(points)} kill points of the {per_run} file operations (os.replace, fsync, "
        f"unlink, rmdir, mkdir) of a {EPOCHS}-epoch run writing best_model, epoch_N and latest "
        "each epoch: all of the middle epoch's, every 5th of the others; from the kill on, "
        "every operation fails without acting, as after SIGKILL."
        + (f" Failures: {failures[:5]}" if failures else ""),
    )
    assert not failures, failures[:5]


# A real SIGKILL-equivalent: the child os._exit()s at its k-th file operation inside
# save_checkpoint of train-student (tests/reliability/test_training_kills.py style).
CHILD = r"""
import os, sys
from offline_ssld import checkpoint, train as train_module
from offline_ssld.config.loading import load_config
config, out, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
count, inside = [0], [False]
def wrap(real):
    def op(*a, **kw):
        if inside[0]:
            count[0] += 1
            if count[0] == k:
                os._exit(137)
        return real(*a, **kw)
    return op
for name in ("replace", "fsync", "unlink", "rmdir", "mkdir"):
    setattr(os, name, wrap(getattr(os, name)))
real_save = train_module.save_checkpoint
def save(*a, **kw):
    inside[0] = True
    try:
        real_save(*a, **kw)
    finally:
        inside[0] = False
train_module.save_checkpoint = save
cfg = load_config([config], [f"Global.output_dir={out}", "Global.epochs=3"])
train_module.train(cfg, "supervised", progress=False)
"""


def test_train_student_killed_inside_checkpoint_writes_resumes(project, rlog):
    config, tmp = project
    overrides = ["Global.epochs=3"]
    train(
        load_config([str(config)], [f"Global.output_dir={tmp / 'whole'}", *overrides]),
        "supervised",
        progress=False,
    )
    whole = load_file(str(tmp / "whole" / "latest.safetensors"))
    env = {**os.environ, "GLOG_minloglevel": "2"}
    failures: list[str] = []
    outcomes: Counter = Counter()
    kills = (5, 40, 77, 110)  # inside best_model/epoch_N/latest of epochs 1 and 2
    for k in kills:
        out = tmp / f"k{k}"
        run = subprocess.run(
            [sys.executable, "-c", CHILD, str(config), str(out), str(k)],
            env=env,
            capture_output=True,
            text=True,
        )
        if run.returncode != 137:
            failures.append(f"k={k}: child exited {run.returncode}: {run.stderr[-500:]}")
            continue
        cfg = load_config([str(config)], [f"Global.output_dir={out}", *overrides])
        result = train(cfg, "supervised", resume=True, progress=False)
        resumed = EPOCHS - len(result.train_seconds)
        final = load_file(str(out / "latest.safetensors"))
        worst = max(float(np.abs(final[n] - whole[n]).max()) for n in whole)
        ok = worst < 1e-4 and read_json(out / "latest.json")["epoch"] == EPOCHS
        outcomes[f"resumed from epoch {resumed}" if ok else "FAILED"] += 1
        if not ok:
            failures.append(f"k={k}: final weights differ by {worst}")
    rlog.record(
        FAULTS,
        "train-student os._exit inside a checkpoint write, then --resume",
        outcomes,
        ok=not failures,
        goal="--resume finishes with the uninterrupted run's weights (within 1e-4)",
        notes=f"Kill at file operation {kills} counted inside save_checkpoint of a 3-epoch "
        "train-student (subprocess, os._exit)." + (f" Failures: {failures}" if failures else ""),
    )
    assert not failures, failures
