"""`export` writes what users deploy: Paddle Inference, configured as PaddleClas's deploy
predictor (deploy/utils/predictor.py) configures it on a CPU, loads it and on the eval list's
images returns what `eval` computes: the softmax of the student's logits, the logits with
Arch.infer_add_softmax False, their sigmoid with Global.use_multilabel."""

from __future__ import annotations

import numpy as np
import paddle
from click.testing import CliRunner
from paddle.inference import Config, create_predictor

from offline_ssld.cli import main
from offline_ssld.config.loading import load_config
from offline_ssld.config.specs import student_spec
from offline_ssld.models import build_model, load_weights
from offline_ssld.train import evaluate_config, make_eval_loader, train


def deploy_predict(model_dir, batches: list[np.ndarray]) -> np.ndarray:
    """PaddleClas's Predictor.create_paddle_predictor with deploy/configs/inference_cls.yaml's
    CPU settings (MKLDNN, IR optimisation, zero copy) and ClsPredictor.predict's feeding.
    Not PaddleClas's class itself: it calls Config.enable_memory_optim(), with which paddle
    3.3.1 creates no predictor for any model ("Not find predictor_id 0 and pass_name
    memory_optimize_pass"; also a PaddleClas backbone saved by paddle.jit.save)."""
    config = Config(str(model_dir), "inference")  # PaddleClas's call for paddle >= 2.6
    config.disable_gpu()
    config.set_mkldnn_cache_capacity(10)
    config.enable_mkldnn()
    config.set_cpu_math_library_num_threads(1)
    config.disable_glog_info()
    config.switch_ir_optim(True)
    config.switch_use_feed_fetch_ops(False)
    predictor = create_predictor(config)
    inputs = predictor.get_input_handle(predictor.get_input_names()[0])
    outputs = predictor.get_output_handle(predictor.get_output_names()[0])
    got = []
    for x in batches:
        inputs.copy_from_cpu(x)
        predictor.run()
        got.append(outputs.copy_to_cpu())
    return np.concatenate(got)


def test_exported_student_predicts_what_eval_computes(project):
    path, tmp = project
    train(load_config([str(path)], ["Global.epochs=1"]), "supervised", progress=False)
    overrides = [
        f"Global.pretrained_model={tmp / 'output' / 'best_model'}",
        "Global.image_shape=[3,16,16]",
    ]
    cfg = load_config([str(path)], overrides)
    spec = student_spec(cfg)
    model = build_model(spec)
    load_weights(model, tmp / "output" / "best_model.safetensors", "test")
    model.eval()
    batches = [(x, label.numpy()) for x, label in make_eval_loader(cfg, spec.class_num)]
    with paddle.no_grad():
        logits = np.concatenate([model(x).numpy() for x, _ in batches])
    labels = np.concatenate([label.reshape(-1) for _, label in batches])
    assert len(logits) == 8 and len(set(logits.argmax(axis=1))) > 1  # images told apart

    multilabel = [
        "Global.use_multilabel=True",
        *(f"DataLoader.{mode}.dataset.name=MultiLabelDataset" for mode in ("Train", "Eval")),
    ]
    activations = {  # as PaddleClas's ExportModel: the student's output, activated
        "softmax": ([], paddle.nn.functional.softmax),
        "logits": (["Arch.infer_add_softmax=False"], None),
        "multilabel": (multilabel, paddle.nn.functional.sigmoid),
    }
    for name, (extra, activation) in activations.items():
        out = tmp / f"inference_{name}"
        args = ["export", "-c", str(path), "-o", f"Global.save_inference_dir={out}"]
        args += [a for o in [*overrides, *extra] for a in ("-o", o)]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        got = deploy_predict(out, [x.numpy() for x, _ in batches])
        expected = logits if activation is None else activation(paddle.to_tensor(logits)).numpy()
        # oneDNN kernels and IR-fused conv + batch norm round differently from the dynamic
        # graph: fp32 errors that scale with the largest activation
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())

        if activation is None:  # the predictor's top-1 over the eval list is what `eval` reports
            assert (got.argmax(axis=1) == labels).mean() == evaluate_config(cfg)["top1"]
