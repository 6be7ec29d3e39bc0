"""PaddleClas-shaped configuration: load `-c` files, merge them, apply `-o` overrides, and read
the sections each stage needs.

The schema is PaddleClas's distillation config (`Global`, `Arch`, `Loss`, `Optimizer`,
`DataLoader`, `Metric`) plus one `Offline` section whose defaults live in `OFFLINE_DEFAULTS`.
Semantics follow PaddleClas's `ppcls.utils.config` (safe YAML loading, string scalars parsed as
Python literals, dotted `-o` keys with integer list indices) with one deliberate difference:
values are parsed with `ast.literal_eval`, never `eval`, so no text from a file or command line
can run code.
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from offline_ssld.errors import ConfigError

# One place for every Offline key, its default and why it exists.
OFFLINE_DEFAULTS: dict[str, Any] = {
    "cache_dir": "cache/offline_ssld",  # where dump-teacher writes and train-student reads
    "teacher_weights": None,  # .safetensors of the teacher (Arch Teacher `pretrained` also works)
    "views": 4,  # dump: views stored per image; train: use the first `views` of the cache
    "format": "arrow",  # shard backend: arrow (default, fastest random reads) or hdf5
    "codec": "fp16",  # fp16 (all logits), topk (k logits + spread tail), sampled (ids+counts)
    "topk": 5,  # k for codec topk
    "samples": 12,  # draws per view for codec sampled
    "shard_size": 4096,  # rows per shard, rounded down to whole images (all views of an image)
    "seed": 0,  # seeds view parameters; with the content hash it fixes every view
    "batch_size": 128,  # teacher inference batch in dump-teacher
    "num_workers": None,  # loader workers for dump; None takes DataLoader.Train.loader
    "skip_bad": False,  # record unreadable images in the manifest instead of failing
    "allow_pickle_weights": False,  # load .pdparams (pickle) teacher weights you trust
    "online_teacher_bn": "train",  # online baseline: teacher BatchNorm mode (PaddleClas: train)
    "view_policy": "cycle",  # each epoch one view per image, without replacement, cycled
    "prefetch_shards": 8,  # shards kept decoded in each loader worker (LRU)
}

KNOWN_SECTIONS = {
    "Global",
    "Arch",
    "Loss",
    "Optimizer",
    "DataLoader",
    "Metric",
    "Offline",
    "Infer",
    "AMP",
}
DISTILLATION_ARCH = "DistillationModel"


def _parse_scalar(value: str) -> Any:
    """PaddleClas parses string scalars as Python literals; we do the same without eval."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def _literals(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _literals(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_literals(v) for v in node]
    if isinstance(node, str):
        return _parse_scalar(node)
    return node


def load_yaml(path: str | Path) -> dict:
    """One YAML file, safely loaded (anchors and aliases resolved), errors naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: config file is not UTF-8 ({exc.reason})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: top level must be a mapping of sections, got {type(data).__name__}"
        )
    return _literals(data)


def merge(base: dict, other: dict) -> dict:
    """Later files win key by key; nested mappings merge, lists are replaced whole."""
    out = copy.deepcopy(base)
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(cfg: dict, option: str) -> None:
    """Apply one `Dotted.key.0.leaf=value` (integer segments index lists)."""
    if "=" not in option:
        raise ConfigError(f"-o {option!r}: expected Key.sub=value")
    key, raw = option.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"-o {option!r}: empty key segment")
    node: Any = cfg
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit():
                raise ConfigError(f"-o {key}: {where} indexes a list, needs an integer")
            index = int(part)
            if not -len(node) <= index < len(node):
                raise ConfigError(f"-o {key}: index {index} out of range (list has {len(node)})")
            if last:
                node[index] = _parse_scalar(raw)
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = _parse_scalar(raw)
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"-o {key}: {'.'.join(parts[:depth])} is a value, not a section")


def load_config(
    files: list[str] | tuple[str, ...], overrides: list[str] | tuple[str, ...] = ()
) -> dict:
    """Merge `files` left to right, apply `overrides`, fill Offline defaults, validate keys."""
    if not files:
        raise ConfigError("no config file given: pass -c FILE (repeatable)")
    cfg: dict = {}
    for path in files:
        cfg = merge(cfg, load_yaml(path))
    for option in overrides:
        apply_override(cfg, option)
    unknown = sorted(set(cfg) - KNOWN_SECTIONS)
    if unknown:
        raise ConfigError(
            f"unknown config section {unknown[0]!r}; known: {', '.join(sorted(KNOWN_SECTIONS))}"
        )
    offline = cfg.get("Offline") or {}
    if not isinstance(offline, dict):
        raise ConfigError("Offline: must be a mapping")
    for key in offline:
        if key not in OFFLINE_DEFAULTS:
            raise ConfigError(
                f"Offline.{key}: unknown key; known: {', '.join(sorted(OFFLINE_DEFAULTS))}"
            )
    cfg["Offline"] = {**OFFLINE_DEFAULTS, **offline}
    return cfg


def get(cfg: dict, path: str, default: Any = ConfigError) -> Any:
    """Read a dotted key; a missing required key is an error that names it."""
    node: Any = cfg
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            if default is ConfigError:
                raise ConfigError(f"{path}: required key is missing")
            return default
    return node


@dataclass(frozen=True)
class ModelSpec:
    """A PaddleClas backbone by name, its class count and optional weights file."""

    name: str
    class_num: int
    pretrained: str | None
    key: str  # config path of the entry, for error messages


def _model_entry(entry: Any, key: str) -> ModelSpec:
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"{key}: expected a mapping with 'name' and 'class_num'")
    class_num = entry.get("class_num")
    if not isinstance(class_num, int) or isinstance(class_num, bool) or class_num < 2:
        raise ConfigError(f"{key}.class_num: expected an integer >= 2, got {class_num!r}")
    pretrained = entry.get("pretrained")
    if pretrained is False or pretrained is True:
        pretrained = None  # PaddleClas's True means "download", which cannot happen here
    return ModelSpec(str(entry["name"]), class_num, pretrained, key)


def _distillation_models(cfg: dict) -> dict[str, tuple[Any, str]]:
    models = get(cfg, "Arch.models")
    if not isinstance(models, list):
        raise ConfigError("Arch.models: expected a list of {Teacher: ...}, {Student: ...}")
    found: dict[str, tuple[Any, str]] = {}
    for i, item in enumerate(models):
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f"Arch.models.{i}: expected a one-key mapping like {{Teacher: ...}}")
        ((role, entry),) = item.items()
        found[role] = (entry, f"Arch.models.{i}.{role}")
    return found


def teacher_spec(cfg: dict) -> ModelSpec:
    """The teacher: the DistillationModel's Teacher entry, or a plain Arch (a teacher config)."""
    arch = get(cfg, "Arch")
    if arch.get("name") == DISTILLATION_ARCH:
        models = _distillation_models(cfg)
        if "Teacher" not in models:
            raise ConfigError("Arch.models: no Teacher entry")
        spec = _model_entry(*models["Teacher"])
    else:
        spec = _model_entry(arch, "Arch")
    weights = cfg["Offline"].get("teacher_weights") or spec.pretrained
    return ModelSpec(spec.name, spec.class_num, weights, spec.key)


def student_spec(cfg: dict) -> ModelSpec:
    """The model being trained: the Student entry, or a plain Arch (supervised training)."""
    arch = get(cfg, "Arch")
    if arch.get("name") == DISTILLATION_ARCH:
        models = _distillation_models(cfg)
        if "Student" not in models:
            raise ConfigError("Arch.models: no Student entry")
        return _model_entry(*models["Student"])
    return _model_entry(arch, "Arch")


def is_distillation(cfg: dict) -> bool:
    return get(cfg, "Arch.name", None) == DISTILLATION_ARCH


@dataclass(frozen=True)
class DataSpec:
    """One `DataLoader.<split>` section, in the shape PaddleClas's ImageNetDataset takes."""

    image_root: str
    cls_label_path: str
    transform_ops: list
    batch_size: int
    shuffle: bool
    drop_last: bool
    num_workers: int
    key: str


def data_spec(cfg: dict, split: str) -> DataSpec:
    key = f"DataLoader.{split}"
    dataset = get(cfg, f"{key}.dataset")
    name = dataset.get("name", "ImageNetDataset")
    if name != "ImageNetDataset":
        raise ConfigError(
            f"{key}.dataset.name: {name!r} is not supported; supported: ImageNetDataset"
        )
    sampler = get(cfg, f"{key}.sampler", {}) or {}
    loader = get(cfg, f"{key}.loader", {}) or {}
    batch_size = sampler.get("batch_size", 64)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{key}.sampler.batch_size: expected a positive integer")
    return DataSpec(
        image_root=str(get(cfg, f"{key}.dataset.image_root")),
        cls_label_path=str(get(cfg, f"{key}.dataset.cls_label_path")),
        transform_ops=list(get(cfg, f"{key}.dataset.transform_ops")),
        batch_size=batch_size,
        shuffle=bool(sampler.get("shuffle", split == "Train")),
        drop_last=bool(sampler.get("drop_last", False)),
        num_workers=int(loader.get("num_workers", 0)),
        key=f"{key}.dataset",
    )


def dump_yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
