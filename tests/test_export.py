"""`export` writes what Paddle Inference runs: the predictor's outputs equal the dynamic
student's softmax."""

from __future__ import annotations

import numpy as np
import paddle
from click.testing import CliRunner

from offline_ssld.cli import main
from offline_ssld.config.loading import load_config
from offline_ssld.config.specs import student_spec
from offline_ssld.models import build_model, load_weights
from offline_ssld.train import train


def test_exported_student_runs_in_paddle_inference(project):
    path, tmp = project
    train(load_config([str(path)], ["Global.epochs=1"]), "supervised", progress=False)
    out = tmp / "inference"
    overrides = [
        f"Global.pretrained_model={tmp / 'output' / 'best_model'}",
        f"Global.save_inference_dir={out}",
        "Global.image_shape=[3, 16, 16]",
    ]
    args = ["export", "-c", str(path)] + [a for o in overrides for a in ("-o", o)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output

    files = {p.suffix for p in out.iterdir()}
    model_file = next(out / f"inference{s}" for s in (".json", ".pdmodel") if s in files)
    config = paddle.inference.Config(str(model_file), str(out / "inference.pdiparams"))
    config.disable_gpu()
    predictor = paddle.inference.create_predictor(config)
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype("float32")
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(x.shape)
    handle.copy_from_cpu(x)
    predictor.run()
    got = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()

    model = build_model(student_spec(load_config([str(path)])))
    load_weights(model, tmp / "output" / "best_model.safetensors", "test")
    model.eval()
    expected = paddle.nn.functional.softmax(model(paddle.to_tensor(x)), axis=-1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)
