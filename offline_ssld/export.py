"""`export`: the trained student as a Paddle Inference model, as PaddleClas's
tools/export_model.py writes it (`<Global.save_inference_dir>/inference.*`, input
[None] + Global.image_shape, sigmoid appended for Global.use_multilabel, else softmax unless
Arch.infer_add_softmax is falsy, and re-parameterisable blocks folded first)."""

from __future__ import annotations

from pathlib import Path

import paddle

from offline_ssld.config import paddleclas, specs
from offline_ssld.errors import ConfigError
from offline_ssld.models import build_model, load_weights, select_device


class _Inference(paddle.nn.Layer):
    """The student with PaddleClas's output activation (ExportModel's out_act, or none)."""

    def __init__(self, model: paddle.nn.Layer, activation: paddle.nn.Layer | None):
        super().__init__()
        self.model = model
        self.activation = activation

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.model(x)
        return out if self.activation is None else self.activation(out)


def _activation(cfg: dict) -> paddle.nn.Layer | None:
    """As PaddleClas's ExportModel: sigmoid for Global.use_multilabel, else softmax unless
    Arch.infer_add_softmax is falsy."""
    if specs.is_multilabel(cfg):
        return paddle.nn.Sigmoid()
    return (
        paddle.nn.Softmax(axis=-1)
        if (cfg.get("Arch") or {}).get("infer_add_softmax", True)
        else None
    )


def export_student(cfg: dict) -> Path:
    """Write the inference model of Global.pretrained_model; return its path prefix."""
    paddleclas.check_supported(cfg)
    glob = cfg.get("Global") or {}
    select_device("cpu")
    weights = glob.get("pretrained_model")
    if not weights:
        raise ConfigError("Global.pretrained_model: required (checkpoint path without suffix)")
    shape = glob.get("image_shape", [3, 224, 224])
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) for v in shape)):
        raise ConfigError(f"Global.image_shape: expected [C, H, W] integers, got {shape!r}")
    spec = specs.student_spec(cfg)
    model = build_model(spec)
    load_weights(model, f"{weights}.safetensors", "Global.pretrained_model")
    model.eval()
    for layer in model.sublayers():  # as PaddleClas: fold re-parameterisable blocks
        if hasattr(layer, "re_parameterize") and not getattr(layer, "is_repped", False):
            layer.re_parameterize()
    wrapped = _Inference(model, _activation(cfg))
    wrapped.eval()
    # full_graph: Paddle 3 applies input_spec only then (the batch dimension stays free).
    static = paddle.jit.to_static(
        wrapped,
        input_spec=[paddle.static.InputSpec(shape=[None, *shape], dtype="float32")],
        full_graph=True,
    )
    prefix = Path(glob.get("save_inference_dir", "./inference")) / "inference"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paddle.jit.save(static, str(prefix))
    return prefix
