"""PaddleClas's own code reads what we write: init_model (Global.checkpoints, from its
source and the identical ppcls/utils/save_load.py in the paddleclas wheel) resumes weights,
optimizer state and epoch from our `latest`, in a fresh process as tools/train.py would; and
best_model_student.pdparams loads into its build_model of the student."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from offline_ssld.config.loading import load_config
from offline_ssld.config.specs import student_spec
from offline_ssld.models import build_model, load_weights
from offline_ssld.train import train
from tests.helpers import CLASSES, STUDENT
from tests.paddleclas_source import paddleclas_source

# Run by a fresh interpreter: Paddle names parameters by a per-process counter, so only a
# fresh process sees the names tools/train.py would give them.
RESUME = r"""
import copy, json, sys
import numpy as np, paddle, yaml
from safetensors import safe_open
from safetensors.numpy import load_file
source, config, prefix, epochs, steps = sys.argv[1:6]
sys.path.insert(0, source)
from ppcls.arch import build_model
from ppcls.optimizer import build_optimizer
from ppcls.utils import logger
from ppcls.utils.save_load import init_model

logger.init_logger()  # as Engine does first
cfg = yaml.safe_load(open(config))
arch = copy.deepcopy(cfg["Arch"])
for item in arch["models"]:
    next(iter(item.values())).pop("pretrained", None)
model = build_model({"Arch": arch, "Global": {"device": "cpu"}})  # as Engine, loss first: no params
optimizers, schedules = build_optimizer(cfg["Optimizer"], int(epochs), int(steps), [model])
states = init_model({"checkpoints": prefix}, model, optimizers, paddle.nn.Layer())
student = model.model_list[model.model_name_list.index("Student")]
ours = load_file(prefix + ".safetensors")
own = student.state_dict()
weights = sorted(ours) == sorted(own) and all(
    np.array_equal(own[k].numpy(), v) for k, v in ours.items())
holder = optimizers[0]._accumulators_holder
names = {k: p.name for k, p in own.items()}
moments = load_file(prefix + ".opt.safetensors")  # ours: "<structured>::velocity_0"
velocity = len(moments) == len(holder) > 0 and all(
    np.array_equal(np.asarray(holder[names[k.split("::")[0]] + "_" + k.split("::")[1]]), v)
    for k, v in moments.items())
with safe_open(prefix + ".opt.safetensors", framework="numpy") as fh:
    schedule = json.loads(fh.metadata()["LR_Scheduler"])
# One step: PaddleClas's optimizer creates each accumulator and asserts it is in the state.
x = paddle.to_tensor(np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype("float32"))
model(x)["Student"].mean().backward()
optimizers[0].step()
print(json.dumps({
    "states": states, "weights": weights, "velocity": velocity, "left": len(holder),
    "last_epoch": [schedules[0].last_epoch, schedule["last_epoch"]],
    "last_lr": [schedules[0].last_lr, schedule["last_lr"]],
}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, teacher_weights):
    """A 2-epoch run of the shared tiny project (conftest's `project`, built once here)."""
    from tests.conftest import project as make_project

    tmp = tmp_path_factory.mktemp("init_model")
    config, _ = make_project.__wrapped__(tmp, teacher_weights)
    cfg = load_config([str(config)], [])
    # A model built earlier in this process (as pipelines train a teacher, then a student)
    # moves Paddle's name counter: our parameter names then differ from tools/train.py's.
    build_model(student_spec(cfg))
    train(cfg, "supervised", progress=False)
    return config, cfg, Path(cfg["Global"]["output_dir"])


def test_wheel_save_load_is_paddleclas_source():
    """The wheel's save_load.py (the one the next tests import when the source is absent
    elsewhere) is the source's file: testing either tests PaddleClas's own code."""
    from paddleclas.ppcls.utils import save_load

    source = paddleclas_source() / "ppcls" / "utils" / "save_load.py"
    assert Path(save_load.__file__).read_text() == source.read_text()


def test_paddleclas_init_model_resumes_our_latest(trained):
    config, cfg, out = trained
    source = paddleclas_source()
    spec = cfg["DataLoader"]["Train"]["sampler"]
    images = (
        len((Path(cfg["DataLoader"]["Train"]["dataset"]["cls_label_path"])).read_text().split("\n"))
        - 1
    )
    steps = (
        images // spec["batch_size"]
        if spec.get("drop_last")
        else math.ceil(images / spec["batch_size"])
    )
    env = {**os.environ, "GLOG_minloglevel": "2"}
    args = [source, config, out / "latest", cfg["Global"]["epochs"], steps]
    run = subprocess.run(
        [sys.executable, "-c", RESUME, *map(str, args)], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    epoch = json.loads((out / "latest.json").read_text())["epoch"]
    assert result["states"] == {"metric": 0.0, "epoch": epoch}  # init_model zeroes the metric
    assert result["weights"] and result["velocity"]
    assert result["left"] == 0  # every state entry was taken by the step
    assert result["last_epoch"][0] == result["last_epoch"][1] > 0
    assert result["last_lr"][0] == pytest.approx(result["last_lr"][1])


def test_pdstates_hold_what_paddleclas_engine_saves(trained):
    _, _, out = trained
    best = json.loads((out / "best_model.json").read_text())
    assert paddle.load(str(out / "best_model.pdstates")) == {
        "metric": pytest.approx(best["top1"]),
        "epoch": best["epoch"],
    }
    for tag in ("latest", "epoch_1", "epoch_2"):
        states = paddle.load(str(out / f"{tag}.pdstates"))
        assert sorted(states) == ["epoch", "metric"], tag


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_best_model_student_loads_into_paddleclas_student(trained):
    """PaddleClas's build_model of the student alone and load_dygraph_pretrain (what
    tools/eval.py and export_model.py do with Global.pretrained_model) take it, and answer
    as our best_model does."""
    from paddleclas.ppcls.arch import build_model as paddleclas_build_model
    from paddleclas.ppcls.utils.save_load import load_dygraph_pretrain

    _, cfg, out = trained
    theirs = paddleclas_build_model(
        {"Arch": {"name": STUDENT, "class_num": CLASSES}, "Global": {"device": "cpu"}}
    )
    before = {k: v.numpy().copy() for k, v in theirs.state_dict().items()}
    load_dygraph_pretrain(theirs, str(out / "best_model_student"))
    assert all(
        not np.array_equal(before[k], v.numpy())
        for k, v in theirs.state_dict().items()
        if "weight" in k
    )  # every weight was set
    ours = build_model(student_spec(cfg))
    load_weights(ours, out / "best_model.safetensors", "test")
    theirs.eval(), ours.eval()
    x = paddle.to_tensor(np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype("float32"))
    np.testing.assert_allclose(theirs(x).numpy(), ours(x).numpy(), rtol=1e-5, atol=1e-6)
