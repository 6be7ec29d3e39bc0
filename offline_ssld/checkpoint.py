"""Checkpoints: PaddleClas's files and ours, each checkpoint one unit that a kill never tears.

The output directory holds what PaddleClas 2.6's save_model writes (ppcls/utils/save_load.py;
since 2.6 straight into Global.output_dir, 2.5 and older added an Arch.name directory), for
each tag `best_model`, `latest` and `epoch_N`:

    <tag>.pdparams     the student's weights, keys named as in the config's Arch
                       ("Student.<param>" under a DistillationModel)
    <tag>.pdopt        [optimizer state], keyed by the parameter names PaddleClas's own process
                       gives them, so its optimizer finds its momentum after Global.checkpoints
    <tag>.pdstates     {"metric": this epoch's eval value (0.0 when not evaluated), "epoch": N}
    best_model_student.pdparams, best_model/model.pdparams   (best_model only, as PaddleClas)

and beside them what offline-ssld itself resumes from, with no pickle:

    <tag>.safetensors / <tag>.opt.safetensors   weights; optimizer, lr schedule and GradScaler
    <tag>.json          the manifest: epoch, metrics, targets, and every file of the set with
                        its size and sha256

The .pdparams/.pdopt/.pdstates are pickles, written for PaddleClas's tools and read back only
when the user names PaddleClas's own files in Global.checkpoints and trusts pickles
(Offline.allow_pickle_weights).

One unit. A checkpoint is written whole into a staging directory `.<tag>.staging` (every file
fsynced), whose manifest, written last, commits it; then each file is renamed into place, the
directory fsynced, and the manifest renamed last. A kill before the staging manifest leaves
the old set in place untouched (the staging directory is discarded); a kill after it leaves a
staging directory that `recover` finishes (the renames are idempotent: a file still in staging
was not yet moved). Every reader recovers first and then checks each file against the
manifest, so a resume after a kill at any instant sees exactly one epoch's set: weights,
optimizer and epoch together. Files changed later by someone else (PaddleClas's train.py
writing into the same directory) fail that check by name.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paddle
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from offline_ssld.atomic import atomic_write, fsync_dir, write_text_atomic
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


# ------------------------------------------------------------------ PaddleClas's names

STUDENT_MARK = "Student."  # save_load._extract_student_weights keeps keys holding this
PDSTATES_KEYS = ("metric", "epoch")


@dataclass(frozen=True)
class PaddleClasNames:
    """How PaddleClas names the student's parameters: `prefix` on its .pdparams keys, and
    `generated` (our state_dict key -> the name Paddle generates for it when PaddleClas's
    build_model runs first in a fresh process), which keys its optimizer state."""

    prefix: str
    generated: dict[str, str]


def paddleclas_names(cfg: dict, prefix: str) -> PaddleClasNames:
    """Run PaddleClas's own build_model on the config's Arch (no weights, no memory: under
    LazyGuard) in a fresh name scope, as tools/train.py does before it builds its optimizer."""
    from paddleclas.ppcls.arch import build_model as paddleclas_build_model

    arch = copy.deepcopy(cfg["Arch"])
    arch.pop("pretrained_list", None)
    for entry in [arch, *(next(iter(m.values())) for m in arch.get("models") or [])]:
        entry.pop("pretrained", None)  # no downloads, and our weights paths mean nothing there
    with paddle.utils.unique_name.guard(), paddle.LazyGuard():
        net = paddleclas_build_model({"Arch": arch, "Global": {"device": "cpu"}})
    generated = {
        k[len(prefix) :]: p.name for k, p in net.state_dict().items() if k.startswith(prefix)
    }
    return PaddleClasNames(prefix, generated)


def _paddleclas_optimizer_state(
    optimizer: paddle.optimizer.Optimizer, model: paddle.nn.Layer, names: PaddleClasNames
) -> dict:
    """optimizer.state_dict() keyed as PaddleClas's optimizer will look it up."""
    ours = _param_names(model)
    state: dict[str, Any] = {}
    for key, value in optimizer.state_dict().items():
        if not isinstance(value, paddle.Tensor):
            state[key] = value  # LR_Scheduler
            continue
        structured, _, suffix = _rename(key, ours).partition("::")
        state[f"{names.generated[structured]}_{suffix}"] = value
    return state


# ---------------------------------------------------------------------------- one unit


def _staging(out: Path, tag: str) -> Path:
    return out / f".{tag}.staging"


def _manifest(out: Path, tag: str) -> Path:
    return out / f"{tag}.json"


def _describe(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def recover(out: Path, tag: str) -> None:
    """Finish or discard a checkpoint write a kill interrupted: a staging directory with its
    manifest is renamed into place (files already moved are skipped), one without is removed."""
    staging = _staging(out, tag)
    if not staging.is_dir():
        return
    manifest = staging / f"{tag}.json"
    if manifest.is_file():
        names = json.loads(manifest.read_text())["files"]
        for name in names:
            if (staging / name).is_file():
                (out / name).parent.mkdir(exist_ok=True)
                os.replace(staging / name, out / name)
        for folder in {(out / name).parent for name in names}:
            fsync_dir(folder)  # every file in place before the manifest says so
        os.replace(manifest, _manifest(out, tag))
        fsync_dir(out)
    shutil.rmtree(staging)


def recover_all(out: Path) -> None:
    """recover() every tag with a staging directory in `out` (train calls it before resuming)."""
    for staging in sorted(out.glob(".*.staging")):
        recover(out, staging.name[1 : -len(".staging")])


def save_checkpoint(
    out: Path,
    tag: str,
    model: paddle.nn.Layer,
    optimizer: paddle.optimizer.Optimizer,
    info: dict,
    names: PaddleClasNames,
    scaler: paddle.amp.GradScaler | None = None,
    metric: float = 0.0,
) -> None:
    """Write checkpoint `tag` (best_model, latest, epoch_N) in `out` as one unit.

    `metric` goes to .pdstates as PaddleClas's engine puts it there: the eval value of this
    epoch, 0.0 when it did not evaluate. The AMP loss scaler's state goes with our optimizer
    state, so a resumed run continues with the scale it had reached (PaddleClas's .pdstates
    keeps no scaler, and restarts it at AMP.scale_loss)."""
    recover(out, tag)
    staging = _staging(out, tag)
    staging.mkdir(parents=True)
    state = {f"{names.prefix}{k}": v for k, v in model.state_dict().items()}
    pdstates = {"metric": float(metric), "epoch": int(info["epoch"])}

    def pickled(obj: Any) -> Callable[[Path], None]:
        return lambda path: atomic_write(path, lambda tmp: paddle.save(obj, str(tmp)))

    writers: dict[str, Callable[[Path], None]] = {
        f"{tag}.safetensors": lambda path: save_weights(model, path),
        f"{tag}.opt.safetensors": lambda path: atomic_write(
            path, lambda tmp: _save_optimizer(optimizer, model, tmp, scaler)
        ),
        f"{tag}.pdparams": pickled(state),
        f"{tag}.pdopt": pickled([_paddleclas_optimizer_state(optimizer, model, names)]),
        f"{tag}.pdstates": pickled(pdstates),
    }
    if tag == "best_model":  # what save_model adds for its best_model prefix
        student = {k[len(STUDENT_MARK) :]: v for k, v in state.items() if STUDENT_MARK in k}
        if student:
            writers[f"{tag}_student.pdparams"] = pickled(student)
        writers[f"{tag}/model.pdparams"] = pickled(state)
    files = {}
    for name, write in writers.items():
        (staging / name).parent.mkdir(exist_ok=True)
        write(staging / name)
        files[name] = _describe(staging / name)
    text = json.dumps({**info, "files": files}, indent=1) + "\n"
    write_text_atomic(staging / f"{tag}.json", text)  # the staged set is whole from here on
    recover(out, tag)


def has_checkpoint(out: Path, tag: str) -> bool:
    recover(out, tag)
    return _manifest(out, tag).is_file()


def _verified(out: Path, tag: str, key: str) -> dict:
    """The manifest of `tag` after checking each file it lists, naming the first that differs."""
    recover(out, tag)
    manifest = _manifest(out, tag)
    if not manifest.is_file():
        raise ConfigError(f"{key}: {manifest} does not exist")
    info = json.loads(manifest.read_text())
    if "files" not in info:
        raise ConfigError(f"{key}: {manifest} lists no files (written by an older offline-ssld)")
    for name, expected in info.pop("files").items():
        path = out / name
        if not path.is_file() or _describe(path) != expected:
            raise ConfigError(
                f"{key}: {path} is not the file {manifest.name} lists (changed after "
                "offline-ssld wrote it, e.g. by PaddleClas's tools/train.py in the same "
                "output_dir); resume from PaddleClas's files with Global.checkpoints"
            )
    return info


def load_checkpoint(
    out: Path,
    tag: str,
    model: paddle.nn.Layer,
    optimizer: paddle.optimizer.Optimizer,
    scaler: paddle.amp.GradScaler | None = None,
    key: str = "--resume",
) -> dict:
    """Restore weights and optimizer (with its lr schedule and, when both the run and the
    checkpoint have one, the loss scaler) of checkpoint `tag`; return its info (epoch,
    metrics). A run with a scaler resuming a checkpoint without one starts at scale_loss."""
    info = _verified(out, tag, key)
    load_weights(model, out / f"{tag}.safetensors", key)
    _load_optimizer(optimizer, model, out / f"{tag}.opt.safetensors", scaler)
    return info


# ------------------------------------------------------------- Global.checkpoints


def read_paddleclas_pickle(path: Path, key: str, allow_pickle: bool = False) -> Any:
    """A pickle PaddleClas wrote (.pdparams, .pdopt, .pdstates), read only on trust."""
    if not allow_pickle:
        raise ConfigError(
            f"{key}: {path} is a pickle, which can run code when loaded; set "
            "Offline.allow_pickle_weights=True if you trust it"
        )
    if not path.is_file():
        raise ConfigError(f"{key}: {path} does not exist")
    return paddle.load(str(path))


def resume_checkpoint(
    prefix: str | Path,
    model: paddle.nn.Layer,
    optimizer: paddle.optimizer.Optimizer,
    names: PaddleClasNames,
    scaler: paddle.amp.GradScaler | None = None,
    allow_pickle: bool = False,
) -> dict:
    """Global.checkpoints: `prefix` (output/latest, as PaddleClas takes it) is ours when
    `<prefix>.json` exists, read without pickle; otherwise PaddleClas's .pdparams, .pdopt and
    .pdstates, read on trust only. Returns the info; from PaddleClas's files that is its
    epoch alone, and the best metric starts over, as PaddleClas's init_model resets it."""
    prefix, key = Path(prefix), "Global.checkpoints"
    if prefix.with_name(f"{prefix.name}.json").is_file():
        return load_checkpoint(prefix.parent, prefix.name, model, optimizer, scaler, key)
    found = {
        suffix: read_paddleclas_pickle(Path(f"{prefix}{suffix}"), key, allow_pickle)
        for suffix in (".pdparams", ".pdopt", ".pdstates")
    }
    params, opt, states = found[".pdparams"], found[".pdopt"], found[".pdstates"]
    if not isinstance(states, dict) or not isinstance(states.get("epoch"), int):
        raise ConfigError(f"{key}: {prefix}.pdstates holds no epoch")
    own = model.state_dict()
    weights = {k[len(names.prefix) :]: v for k, v in params.items() if k.startswith(names.prefix)}
    for name, param in own.items():
        if name not in weights or tuple(weights[name].shape) != tuple(param.shape):
            raise ConfigError(
                f"{key}: {prefix}.pdparams has no {names.prefix}{name} of shape "
                f"{list(param.shape)} for this Arch"
            )
    model.set_state_dict({k: weights[k] for k in own})
    theirs = {v: k for k, v in names.generated.items()}
    generated = {k: p.name for k, p in own.items()}
    state: dict[str, Any] = {}
    for name, value in (opt[0] if isinstance(opt, list) else opt).items():
        if name == "LR_Scheduler":
            state[name] = value
            continue
        param = next(
            (g for g in sorted(theirs, key=len, reverse=True) if name.startswith(g + "_")), None
        )
        if param is None:
            raise ConfigError(f"{key}: {prefix}.pdopt holds state for {name}, no student parameter")
        state[f"{generated[theirs[param]]}{name[len(param) :]}"] = value
    optimizer.set_state_dict(state)
    return {"epoch": states["epoch"]}


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
