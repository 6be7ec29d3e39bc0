"""Backbones from PaddleClas's model zoo, weights that load without pickle, the device.

Weights are stored as safetensors: a file from someone else can only hold tensors, never code.
PaddleClas's own `.pdparams` are pickles; they load only when the user says they trust them
(`Offline.allow_pickle_weights: true`). We also write `.pdparams` beside our checkpoints so
PaddleClas tools can use them, but never read those back.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
from pathlib import Path

import numpy as np
import paddle
from safetensors.numpy import load_file, save_file

from offline_ssld.atomic import atomic_write
from offline_ssld.config.specs import ModelSpec
from offline_ssld.errors import ConfigError


def _zoo():
    # Imported lazily: paddleclas pulls in faiss and logging on import, which CLI --help and
    # cache-only commands do not need.
    from paddleclas.ppcls.arch import backbone

    return backbone


def build_model(spec: ModelSpec) -> paddle.nn.Layer:
    """A PaddleClas backbone by name with `class_num` outputs: random initialisation, or, when
    the config asks PaddleClas to download its weights (`pretrained: True`, use_ssld, a URL)
    and no file is given, those weights as PaddleClas's backbone loads them: a tensor of
    another shape (the classifier of another class_num) keeps its initial values."""
    model = construct(spec)
    if spec.download is not None and spec.pretrained is None:
        from offline_ssld.pretrained import fetch_weights

        load_weights(model, fetch_weights(spec), spec.download.key, keep_mismatched=True)
    return model


def construct(spec: ModelSpec, **zoo_args: object) -> paddle.nn.Layer:
    """The backbone's factory called as PaddleClas's build_model calls it; `zoo_args` are
    the factory's own pretrained/use_ssld (pretrained.zoo_url asks it for its URL)."""
    zoo = _zoo()
    factory = getattr(zoo, spec.name, None)
    if factory is None or not callable(factory) or spec.name.startswith("_"):
        names = [n for n in dir(zoo) if n[:1].isupper()]
        close = difflib.get_close_matches(spec.name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{spec.key}.name: {spec.name!r} is not a PaddleClas backbone{hint}")
    args = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.args}
    try:
        try:
            return factory(class_num=spec.class_num, **args, **zoo_args)
        except ValueError as exc:
            if "have be been used" not in str(exc):
                raise
            # Some zoo backbones (Res2Net, ...) give parameters fixed names, and Paddle
            # refuses a name twice per process: a second instance (a survey, an audit after a
            # dump) gets a fresh name scope of its own.
            with paddle.utils.unique_name.guard():
                return factory(class_num=spec.class_num, **args, **zoo_args)
    except TypeError as exc:
        bad = next((k for k in args if repr(k) in str(exc)), None)
        if bad is None:
            raise
        raise ConfigError(f"{spec.key}.{bad}: {spec.name} takes no argument {bad!r}") from None


def backbone_arguments(name: str) -> frozenset[str]:
    """The constructor arguments a PaddleClas backbone honours: the named parameters of its
    factory and of the model classes the factory calls. PaddleClas's classes also take
    **kwargs and drop what they do not know; we name such a key instead of ignoring it."""
    zoo = _zoo()
    factory = getattr(zoo, name, None)
    if factory is None or not callable(factory):
        return frozenset()
    module = inspect.getmodule(factory)
    source = inspect.getsource(factory)
    names: set[str] = set()
    candidates = [factory] + [
        cls
        for cls_name, cls in vars(module).items()
        if inspect.isclass(cls)
        and issubclass(cls, paddle.nn.Layer)
        and re.search(rf"\b{cls_name}\s*\(", source)
    ]
    for fn in candidates:
        target = fn.__init__ if inspect.isclass(fn) else fn
        for param in inspect.signature(target).parameters.values():
            if param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL) and param.name != "self":
                names.add(param.name)
    return frozenset(names - {"pretrained", "use_ssld", "class_num"})


def load_weights(
    model: paddle.nn.Layer,
    path: str | Path,
    key: str,
    allow_pickle: bool = False,
    keep_mismatched: bool = False,
) -> None:
    """Load a weights file into `model`, refusing any key or shape that does not match, or,
    with `keep_mismatched` (model-zoo initial weights, as PaddleClas's set_dict does), keeping
    the model's own values where a shape differs, with a note on stderr."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ConfigError(f"{key}: {path} is not a readable safetensors file ({exc})") from None
    elif path.suffix == ".pdparams":
        if not allow_pickle:
            raise ConfigError(
                f"{key}: {path} is a pickle (.pdparams), which can run code when loaded; "
                "convert it with `offline-ssld convert-weights` or set "
                "Offline.allow_pickle_weights=True if you trust the file"
            )
        state = {k: np.asarray(v) for k, v in paddle.load(str(path)).items()}
    else:
        raise ConfigError(f"{key}: {path}: weights must be .safetensors (or trusted .pdparams)")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has unexpected {unexpected[0]}"
        raise ConfigError(f"{key}: {path} does not match this backbone: it {what}")
    kept = [n for n, p in own.items() if tuple(state[n].shape) != tuple(p.shape)]
    if keep_mismatched and kept:
        state.update({n: own[n].numpy() for n in kept})
        print(
            f"{key}: {', '.join(kept)} keep their initial values: {path} has shapes for "
            "another class_num (as PaddleClas's fine-tuning does)",
            file=sys.stderr,
        )
    for name, param in own.items():
        if tuple(state[name].shape) != tuple(param.shape):
            raise ConfigError(
                f"{key}: {path} does not match this backbone/class_num: {name} has shape "
                f"{list(state[name].shape)}, the model expects {list(param.shape)}"
            )
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})


def load_teacher(cfg: dict) -> paddle.nn.Layer:
    """The config's teacher with its weights, frozen and in eval mode (as a cache holds it)."""
    from offline_ssld.config.offline import offline_spec
    from offline_ssld.config.specs import teacher_spec

    spec = teacher_spec(cfg)
    if not spec.pretrained:
        raise ConfigError(
            "Offline.teacher_weights: no teacher weights given (set Offline.teacher_weights or "
            "the Teacher entry's pretrained); a random teacher would teach nothing"
        )
    teacher = build_model(spec)
    allow = offline_spec(cfg).allow_pickle_weights
    load_weights(teacher, spec.pretrained, "Offline.teacher_weights", allow)
    for param in teacher.parameters():
        param.stop_gradient = True
    teacher.eval()
    return teacher


def save_weights(model: paddle.nn.Layer, path: str | Path) -> None:
    """Write safetensors through the durable atomic write: a kill never leaves half a file."""
    state = {k: np.ascontiguousarray(v.numpy()) for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def convert_pdparams(source: str | Path, target: str | Path, model: str | None = None) -> int:
    """Rewrite a trusted PaddleClas .pdparams (a pickle) as safetensors; returns tensor count.

    Loading the pickle is the one step that can run code, so it happens once, on the user's
    explicit request, and every later load reads only tensors."""
    source, target = Path(source), Path(target)
    if source.suffix != ".pdparams" or target.suffix != ".safetensors":
        raise ConfigError("convert-weights: expected IN.pdparams OUT.safetensors")
    if not source.is_file():
        raise ConfigError(f"convert-weights: {source} does not exist")
    state = paddle.load(str(source))
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"convert-weights: {source} holds no state dict")
    arrays = {str(k): np.ascontiguousarray(np.asarray(v)) for k, v in state.items()}
    if model is not None:  # one model of a DistillationModel checkpoint: keys "<model>.<param>"
        prefix = f"{model}."
        arrays = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        if not arrays:
            raise ConfigError(f"convert-weights --model {model}: {source} has no {prefix}* keys")
    atomic_write(target, lambda tmp: save_file(arrays, str(tmp)))
    return len(arrays)


def available_device(preference: str | None = None) -> str:
    """'gpu' when asked for (or by default) and Paddle has CUDA and a device; else 'cpu'.
    Nothing is set, so `overlay` can say what a run here would use."""
    preference = (preference or "gpu").lower()
    if preference not in {"gpu", "cpu"}:
        raise ConfigError(f"Global.device: {preference!r} is not supported; use gpu or cpu")
    has_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    return "gpu" if preference == "gpu" and has_gpu else "cpu"


def select_device(preference: str | None = None) -> str:
    """The available_device, made Paddle's current device."""
    device = available_device(preference)
    paddle.set_device(device)
    return device
