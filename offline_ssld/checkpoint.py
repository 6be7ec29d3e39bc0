"""Checkpoints: what `train-student --resume` needs, written so a kill never leaves half of it.

A checkpoint `tag` (latest, best) in the output directory is:

    <tag>.safetensors       the model's weights
    <tag>.opt.safetensors   optimizer state, keyed by structured parameter names, and the lr
                            schedule's and (with AMP) the GradScaler's state as JSON metadata
    <tag>.pdparams/.pdopt   the same for PaddleClas tools (pickles: written, never read back)
    <tag>.json              epoch, metrics and `targets` (which cache, by path and
                            fingerprint, and which list, by path and the fingerprint of its
                            images' content keys), written last: it marks the checkpoint whole

Every file goes through the durable atomic write (offline_ssld/atomic.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import paddle
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from offline_ssld.atomic import atomic_write, write_text_atomic
from offline_ssld.errors import ConfigError
from offline_ssld.models import load_weights, save_weights


def _param_names(model: paddle.nn.Layer) -> dict[str, str]:
    """Paddle's generated parameter name (e.g. conv2d_204.w_0, differs per model instance)
    -> the structured name from state_dict() (stable), used to key optimizer state."""
    return {p.name: k for k, p in model.state_dict().items()}


def _rename(key: str, names: dict[str, str]) -> str:
    for generated in sorted(names, key=len, reverse=True):
        if key.startswith(generated + "_"):
            return f"{names[generated]}::{key[len(generated) + 1 :]}"
    raise KeyError(key)


# GradScaler.state_dict() entries besides `scale` (a 1-element array), and their types.
_SCALER_FIELDS: dict[str, type] = {
    "incr_ratio": float,
    "decr_ratio": float,
    "incr_every_n_steps": int,
    "decr_every_n_nan_or_inf": int,
    "incr_count": int,
    "decr_count": int,
    "use_dynamic_loss_scaling": bool,
}


def scaler_state_to_json(state: dict) -> str:
    """A GradScaler's state_dict() as JSON numbers: no pickle in a file someone may send."""
    numbers = {"scale": float(np.asarray(state["scale"]).reshape(-1)[0])}
    numbers.update({k: kind(state[k]) for k, kind in _SCALER_FIELDS.items()})
    return json.dumps(numbers)


def scaler_state_from_json(text: str, where: str) -> dict:
    """The state_dict() GradScaler.load_state_dict takes, from scaler_state_to_json's text;
    anything else (missing keys, wrong types, a scale that is not positive and finite) is
    refused naming `where` and the field."""
    try:
        numbers = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: GradScaler state is not JSON ({exc})") from None
    if not isinstance(numbers, dict) or set(numbers) != {"scale", *_SCALER_FIELDS}:
        fields = ", ".join(["scale", *_SCALER_FIELDS])
        raise ConfigError(f"{where}: GradScaler state must have exactly the keys {fields}")
    state: dict[str, Any] = {}
    for key, kind in {"scale": float, **_SCALER_FIELDS}.items():
        value = numbers[key]
        if kind is bool:
            ok, expected = isinstance(value, bool), "true or false"
        elif key == "scale":
            ok, expected = _is_number(value, kind) and value > 0, "a positive number"
        else:
            ok, expected = _is_number(value, kind) and value >= 0, f"a non-negative {kind.__name__}"
        if not ok:
            raise ConfigError(f"{where}: GradScaler.{key} is {value!r}, expected {expected}")
        state[key] = value
    state["scale"] = np.array([state["scale"]], dtype=np.float32)
    return state


def _is_number(value: Any, kind: type) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) if kind is int else math.isfinite(value)


def _save_optimizer(
    optimizer: paddle.optimizer.Optimizer,
    model: paddle.nn.Layer,
    path: Path,
    scaler: paddle.amp.GradScaler | None,
) -> None:
    state = optimizer.state_dict()
    names = _param_names(model)
    tensors = {
        _rename(k, names): np.ascontiguousarray(v.numpy())
        for k, v in state.items()
        if isinstance(v, paddle.Tensor)
    }
    scheduler = state.get("LR_Scheduler", {})
    meta = {"LR_Scheduler": json.dumps(scheduler, default=float)}
    if scaler is not None and scaler.state_dict():  # empty when Paddle disabled the scaler
        meta["GradScaler"] = scaler_state_to_json(scaler.state_dict())
    save_file(tensors, str(path), metadata=meta)


def _load_optimizer(
    optimizer: paddle.optimizer.Optimizer,
    model: paddle.nn.Layer,
    path: Path,
    scaler: paddle.amp.GradScaler | None,
) -> None:
    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata() or {}
    generated = {k: p.name for k, p in model.state_dict().items()}
    state: dict = {}
    for key, value in load_file(str(path)).items():
        structured, _, suffix = key.partition("::")
        if structured not in generated:
            raise ConfigError(f"--resume: {path} holds state for unknown parameter {structured}")
        state[f"{generated[structured]}_{suffix}"] = paddle.to_tensor(value)
    state["LR_Scheduler"] = json.loads(meta.get("LR_Scheduler", "{}"))
    optimizer.set_state_dict(state)
    if scaler is not None and "GradScaler" in meta:
        scaler.load_state_dict(scaler_state_from_json(meta["GradScaler"], f"--resume: {path}"))


def save_checkpoint(
    out: Path,
    tag: str,
    model: paddle.nn.Layer,
    optimizer: paddle.optimizer.Optimizer,
    info: dict,
    paddleclas_prefix: str = "",
    scaler: paddle.amp.GradScaler | None = None,
) -> None:
    """Write checkpoint `tag` in `out`; each file is replaced atomically, the .json last.

    The .pdparams keys carry `paddleclas_prefix` ("Student." under a DistillationModel), the
    names PaddleClas's tools/eval.py and export_model.py look for in the config's Arch.
    The AMP loss scaler's state goes with the optimizer's, so a resumed run continues with
    the scale it had reached (PaddleClas's .pdstates keeps only the metric, and restarts it
    at AMP.scale_loss)."""
    text = json.dumps(info, indent=1) + "\n"
    save_weights(model, out / f"{tag}.safetensors")
    atomic_write(
        out / f"{tag}.opt.safetensors", lambda p: _save_optimizer(optimizer, model, p, scaler)
    )
    state = {f"{paddleclas_prefix}{k}": v for k, v in model.state_dict().items()}
    atomic_write(out / f"{tag}.pdparams", lambda p: paddle.save(state, str(p)))
    atomic_write(out / f"{tag}.pdopt", lambda p: paddle.save(optimizer.state_dict(), str(p)))
    write_text_atomic(out / f"{tag}.json", text)


def has_checkpoint(out: Path, tag: str) -> bool:
    return (out / f"{tag}.json").exists()


def load_checkpoint(
    out: Path,
    tag: str,
    model: paddle.nn.Layer,
    optimizer: paddle.optimizer.Optimizer,
    scaler: paddle.amp.GradScaler | None = None,
) -> dict:
    """Restore weights and optimizer (with its lr schedule and, when both the run and the
    checkpoint have one, the loss scaler) of checkpoint `tag`; return its info (epoch,
    metrics). A run with a scaler resuming a checkpoint without one starts at scale_loss."""
    info = json.loads((out / f"{tag}.json").read_text())
    load_weights(model, out / f"{tag}.safetensors", "--resume")
    _load_optimizer(optimizer, model, out / f"{tag}.opt.safetensors", scaler)
    return info


def keep_metrics_through(path: Path, epoch: int) -> None:
    """On --resume from `epoch`, drop the lines of later epochs (a killed run logs an epoch
    before checkpointing it) and a line cut short, so each epoch appears once."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["epoch"]) <= epoch:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    write_text_atomic(path, "".join(kept))
