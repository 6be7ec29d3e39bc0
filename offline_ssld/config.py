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
    # where dump-teacher writes and train-student reads; for train-student also a list of
    # caches of the same images by several teachers (an ensemble): [a, {path: b, weight: 2}]
    "cache_dir": "cache/offline_ssld",
    "ensemble": "mean_probs",  # ensemble rule: mean_probs or mean_logits (tempered log-probs)
    "ensemble_temperature": 1.0,  # temperature of mean_logits (ignored by mean_probs)
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
    "precise_bn_batches": 100,  # before each eval, BN statistics = mean over this many batches
}

# One place for every DataFree key (`offline-ssld synthesize`, DAFL data-free distillation).
DATAFREE_DEFAULTS: dict[str, Any] = {
    "output_dir": "output/datafree",  # generator checkpoint, images/, list.txt, preview.png
    "images": 6000,  # PNGs written after training (the list dump-teacher reads)
    "image_size": 32,  # generated height = width; must equal the teacher's view size
    "channels": 3,  # 3 (colour) or 1 (grey PNGs, decoded to 3 equal channels)
    "latent_dim": 100,  # generator input noise dimension (DAFL: 100)
    "generator_channels": 128,  # generator width (DAFL: 128)
    "steps": 1500,  # generator updates (Adam)
    "batch_size": 256,  # generated images per update (DAFL MNIST: 512)
    "lr": 0.01,  # Adam; DAFL MNIST uses 0.2, which saturates a tanh pixel output (measured)
    "oh_weight": 1.0,  # one-hot loss weight (DAFL: 1)
    "activation_weight": 0.1,  # activation loss weight (DAFL MNIST: alpha = 0.1)
    "ie_weight": 5.0,  # information-entropy loss weight (DAFL: beta = 5)
    "save_every": 100,  # checkpoint every this many steps (and at the end)
    "seed": 0,  # fixes generator initialisation, every latent batch and so every image
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
    "DataFree",
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
    if "DataFree" in cfg:  # filled only when given, so other stages' configs stay as written
        datafree = cfg["DataFree"] or {}
        if not isinstance(datafree, dict):
            raise ConfigError("DataFree: must be a mapping")
        for key in datafree:
            if key not in DATAFREE_DEFAULTS:
                raise ConfigError(
                    f"DataFree.{key}: unknown key; known: {', '.join(sorted(DATAFREE_DEFAULTS))}"
                )
        cfg["DataFree"] = {**DATAFREE_DEFAULTS, **datafree}
    cache_members(cfg["Offline"]["cache_dir"])  # a malformed list fails here, naming the item
    return cfg


ENSEMBLE_RULES = ("mean_probs", "mean_logits")


@dataclass(frozen=True)
class CacheMember:
    """One cache of an ensemble (`Offline.cache_dir` as a list) and its relative weight."""

    path: str
    weight: float


def cache_members(value: Any, key: str = "Offline.cache_dir") -> list[CacheMember]:
    """`Offline.cache_dir` as members: a string is one cache of weight 1; a list holds paths
    or `{path: P, weight: W}` mappings (weight > 0, default 1)."""
    if isinstance(value, (str, Path)):
        return [CacheMember(str(value), 1.0)]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: expected a path or a non-empty list of caches, got {value!r}")
    members = []
    for i, item in enumerate(value):
        where = f"{key}.{i}"
        path: Any
        weight: Any
        if isinstance(item, (str, Path)):
            path, weight = str(item), 1.0
        elif isinstance(item, dict):
            extra = set(item) - {"path", "weight"}
            if extra:
                raise ConfigError(f"{where}.{sorted(extra)[0]}: unknown key; known: path, weight")
            path, weight = item.get("path"), item.get("weight", 1.0)
            if not isinstance(path, str) or not path:
                raise ConfigError(f"{where}.path: expected a cache directory, got {path!r}")
        else:
            raise ConfigError(f"{where}: expected a path or {{path: P, weight: W}}, got {item!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ConfigError(f"{where}.weight: expected a positive number, got {weight!r}")
        members.append(CacheMember(path, float(weight)))
    return members


def is_ensemble(cfg: dict) -> bool:
    """Offline.cache_dir given as a list: train-student combines several teachers' caches."""
    return isinstance(cfg["Offline"]["cache_dir"], list)


def single_cache_dir(cfg: dict, what: str) -> str:
    """The one cache a stage writes or reads; an ensemble list is refused by name."""
    value = cfg["Offline"]["cache_dir"]
    if isinstance(value, list):
        raise ConfigError(
            f"Offline.cache_dir: {what} needs one cache directory, got a list of {len(value)} "
            "(an ensemble is only for train-student, report and merge)"
        )
    return str(value)


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
    # Further constructor arguments of the backbone as the config gives them (dropout_prob,
    # stride_list, ...), passed through as PaddleClas's build_model does.
    args: tuple[tuple[str, Any], ...] = ()
    weights_key: str | None = None  # the config key `pretrained` was read from


PADDLECLAS_CLASS_NUM = 1000  # what a PaddleClas backbone builds when class_num is not given


def _model_entry(entry: Any, key: str, default_class_num: Any = PADDLECLAS_CLASS_NUM) -> ModelSpec:
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"{key}: expected a mapping with 'name' and 'class_num'")
    class_num = entry.get("class_num", default_class_num)
    if not isinstance(class_num, int) or isinstance(class_num, bool) or class_num < 2:
        raise ConfigError(f"{key}.class_num: expected an integer >= 2, got {class_num!r}")
    pretrained = entry.get("pretrained")
    if pretrained is False or pretrained is True:
        pretrained = None  # PaddleClas's True means "download", which cannot happen here
    args = tuple(
        sorted(
            (k, _frozen(v))
            for k, v in entry.items()
            if k not in (*_MODEL_KEYS, *_MODEL_HARMLESS, *_FEATURE_MODEL_KEYS)
        )
    )
    return ModelSpec(str(entry["name"]), class_num, pretrained, key, args)


def _frozen(value: Any) -> Any:
    """Lists as tuples, so a spec stays hashable; the backbone takes either."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


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


def _weights_path(value: Any, key: str) -> str | None:
    """A weights setting as a file path. PaddleClas writes paths without a suffix
    (`./pretrained/ResNet50_vd_ssld`): we take `<path>.safetensors`, else `<path>.pdparams`,
    which models.load_weights loads only with Offline.allow_pickle_weights (and otherwise
    refuses, saying so)."""
    if value is None or value is True or value is False or value == "":
        return None  # True is PaddleClas's "download the zoo weights", impossible here
    path = str(value)
    if path.startswith(("http://", "https://")):
        raise ConfigError(f"{key}: {path} is a URL; download the weights and give the local path")
    if path.endswith((".safetensors", ".pdparams")):
        return path
    safe, pickled = f"{path}.safetensors", f"{path}.pdparams"
    if Path(safe).is_file() or not Path(pickled).is_file():
        return safe  # when missing, load_weights names the .safetensors file it looked for
    return pickled


def teacher_weights_source(cfg: dict) -> tuple[str | None, str | None]:
    """(weights file, config key it came from): Offline.teacher_weights, else
    Arch.pretrained_list at the Teacher's index, else the Teacher entry's (or plain Arch's)
    `pretrained`."""
    chosen = (cfg.get("Offline") or {}).get("teacher_weights")
    if chosen not in (None, ""):
        return _weights_path(chosen, "Offline.teacher_weights"), "Offline.teacher_weights"
    arch = get(cfg, "Arch")
    if arch.get("name") == DISTILLATION_ARCH:
        models = _distillation_models(cfg)
        if "Teacher" not in models:
            raise ConfigError("Arch.models: no Teacher entry")
        entry, key = models["Teacher"]
        index = int(key.split(".")[2])
        plist = arch.get("pretrained_list")
        if isinstance(plist, list) and index < len(plist) and plist[index] not in (None, ""):
            where = f"Arch.pretrained_list.{index}"
            return _weights_path(plist[index], where), where
        where = f"{key}.pretrained"
        value = entry.get("pretrained") if isinstance(entry, dict) else None
    else:
        where, value = "Arch.pretrained", arch.get("pretrained")
    path = _weights_path(value, where)
    return path, (where if path else None)


def teacher_spec(cfg: dict) -> ModelSpec:
    """The teacher: the DistillationModel's Teacher entry, or a plain Arch (a teacher config).
    Its weights: Offline.teacher_weights > Arch.pretrained_list[Teacher] > Teacher.pretrained."""
    arch = get(cfg, "Arch")
    if arch.get("name") == DISTILLATION_ARCH:
        models = _distillation_models(cfg)
        if "Teacher" not in models:
            raise ConfigError("Arch.models: no Teacher entry")
        spec = _model_entry(*models["Teacher"])
    else:
        spec = _plain_arch(cfg)
    weights, _ = teacher_weights_source(cfg)
    return ModelSpec(spec.name, spec.class_num, weights, spec.key, spec.args)


def _plain_arch(cfg: dict) -> ModelSpec:
    """A single-model Arch; PaddleClas copies the deprecated Global.class_num into it."""
    fallback = (cfg.get("Global") or {}).get("class_num", PADDLECLAS_CLASS_NUM)
    return _model_entry(get(cfg, "Arch"), "Arch", fallback)


def student_spec(cfg: dict) -> ModelSpec:
    """The model being trained: the Student entry, or a plain Arch (supervised training).
    Its `pretrained` is the file of initial weights (SSLD's fine-tuning stage starts from
    one): Arch.pretrained_list at the Student's index, else the entry's `pretrained`."""
    arch = get(cfg, "Arch")
    if arch.get("name") != DISTILLATION_ARCH:
        return _plain_arch(cfg)
    models = _distillation_models(cfg)
    if "Student" not in models:
        raise ConfigError("Arch.models: no Student entry")
    entry, key = models["Student"]
    spec = _model_entry(entry, key)
    index = int(key.split(".")[2])
    plist = arch.get("pretrained_list")
    if isinstance(plist, list) and index < len(plist) and plist[index] not in (None, ""):
        where, value = f"Arch.pretrained_list.{index}", plist[index]
    else:
        where, value = f"{key}.pretrained", entry.get("pretrained")
    if value is True:
        raise ConfigError(
            f"{where}: True asks PaddleClas to download the model zoo's weights, which cannot "
            "happen here; download them and set this key to the file's path"
        )
    weights = _weights_path(value, where)
    return ModelSpec(spec.name, spec.class_num, weights, spec.key, spec.args, where)


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
    delimiter: str | None = None  # list fields: whitespace, or exactly this when set


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
        transform_ops=_chw_output(
            get(cfg, f"{key}.dataset.transform_ops"), f"{key}.dataset.transform_ops"
        ),
        batch_size=batch_size,
        shuffle=bool(sampler.get("shuffle", split == "Train")),
        drop_last=bool(sampler.get("drop_last", False)),
        num_workers=int(loader.get("num_workers", 0)),
        key=f"{key}.dataset",
        delimiter=dataset.get("delimiter"),
    )


def _chw_output(transform_ops: Any, key: str) -> list:
    """PaddleClas's ImageNetDataset transposes the ops' HWC output to CHW itself, so its
    configs end with NormalizeImage; here the op list must produce CHW, so append ToCHWImage
    exactly when the list ends in HWC (lists that already end in CHW are unchanged)."""
    from offline_ssld.data.transforms import HWC, build_ops

    layout = HWC
    for op in build_ops(transform_ops, key):
        layout = op.out_layout(layout)
    ops = list(transform_ops)
    return [*ops, {"ToCHWImage": None}] if layout == HWC else ops


def dump_yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)


# --------------------------------------------------------------------------- check_supported

# Keys read by a stage. Everything else must be listed as harmless below or is an error, so a
# PaddleClas config never trains something other than what it says without telling you.
_GLOBAL_HONOURED = (
    "device",
    "epochs",
    "output_dir",
    "eval_interval",
    "save_interval",
    "seed",
    "pretrained_model",
    "use_visualdl",
    "start_eval_epoch",
)
_GLOBAL_HARMLESS = (
    "print_batch_step",  # logging cadence; the progress bar and metrics.jsonl replace it
    "save_inference_dir",  # export only
    "image_shape",  # export only
    "to_static",  # static-graph speed-up; same maths
    "eval_during_train",  # we evaluate every eval_interval epochs
    "class_num",  # deprecated alias PaddleClas copies into a plain Arch; so do we
    "distributed",  # set by PaddleClas's engine at run time
)
# key -> (allowed value, hint); any other value is an error
_GLOBAL_FIXED: dict[str, tuple[Any, str]] = {
    "use_dali": (False, "DALI loaders are not supported; set Global.use_dali: False"),
    "checkpoints": (None, "resume with `train-student --resume` (output_dir/latest)"),
    "eval_mode": ("classification", "only classification is supported"),
    "use_multilabel": (False, "multi-label training is not supported"),
    "update_freq": (1, "gradient accumulation is not supported"),
}
_ARCH_DISTILL_KEYS = ("name", "models", "pretrained_list", "freeze_params_list")
_ARCH_HARMLESS = ("class_num", "infer_model_name", "use_sync_bn")  # distillation Arch level
_MODEL_KEYS = ("name", "class_num", "pretrained")
_MODEL_HARMLESS = ("use_ssld", "use_sync_bn")  # use_ssld only picks the zoo download URL
_FEATURE_MODEL_KEYS = ("return_stages", "return_patterns", "stages_pattern", "models")
ROLES = ("Teacher", "Student")
_DATASET_KEYS = ("name", "image_root", "cls_label_path", "transform_ops")
_SAMPLER_KEYS = ("name", "batch_size", "shuffle", "drop_last")
_SAMPLERS = ("DistributedBatchSampler", "BatchSampler")
_LOADER_KEYS = ("num_workers",)
_LOADER_HARMLESS = ("use_shared_memory",)
_EVAL_LOSSES = ("CELoss", "DistillationGTCELoss", "DistillationCELoss")
_METRICS = ("TopkAcc", "DistillationTopkAcc")
_METRIC_ARGS = ("topk", "model_key")
_AMP_HARMLESS = (
    "use_amp",
    "use_fp16_test",
    "scale_loss",
    "use_dynamic_loss_scaling",
    "use_promote",
)
_DML_NAMES = ("DistillationDMLLoss", "DMLLoss")


def as_mapping(node: Any, key: str) -> dict:
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise ConfigError(f"{key}: expected a mapping, got {node!r}")
    return node


def only_keys(
    node: dict, key: str, supported: tuple[str, ...], harmless: tuple[str, ...] = ()
) -> None:
    """Every key of `node` is supported or harmless; the error names the first other one."""
    for name in node:
        if name not in supported and name not in harmless:
            listed = ", ".join([*supported, *harmless])
            raise ConfigError(f"{key}.{name}: not supported offline; supported keys: {listed}")


def _check_global(cfg: dict) -> None:
    glob = as_mapping(cfg.get("Global"), "Global")
    only_keys(glob, "Global", (*_GLOBAL_HONOURED, *_GLOBAL_FIXED), _GLOBAL_HARMLESS)
    for name, (allowed, hint) in _GLOBAL_FIXED.items():
        value = glob.get(name, allowed)
        if value != allowed and not (allowed in (False, None) and not value):
            raise ConfigError(f"Global.{name}: {glob[name]!r} is not supported; {hint}")


def _check_model_entry(entry: Any, key: str) -> None:
    entry = as_mapping(entry, key)
    for name in entry:
        if name in _FEATURE_MODEL_KEYS:
            raise ConfigError(
                f"{key}.{name}: models that return intermediate features (for feature losses) "
                "are not supported; offline distillation caches the teacher's logits only"
            )
    extra = [k for k in entry if k not in (*_MODEL_KEYS, *_MODEL_HARMLESS)]
    if extra and isinstance(entry.get("name"), str):
        from offline_ssld.models import backbone_arguments

        honoured = backbone_arguments(entry["name"])
        for name in extra:
            if name not in honoured:
                raise ConfigError(
                    f"{key}.{name}: {entry['name']} takes no argument {name!r}; it takes: "
                    f"{', '.join(sorted(honoured)) or 'none'}"
                )


def _check_arch(cfg: dict) -> None:
    arch = as_mapping(get(cfg, "Arch"), "Arch")
    if arch.get("name") != DISTILLATION_ARCH:  # one model: a teacher config, or supervised
        _check_model_entry(arch, "Arch")
        _plain_arch(cfg)
        return
    only_keys(arch, "Arch", _ARCH_DISTILL_KEYS, _ARCH_HARMLESS)
    models = get(cfg, "Arch.models")
    if not isinstance(models, list):
        raise ConfigError("Arch.models: expected a list of {Teacher: ...}, {Student: ...}")
    roles: list[str] = []
    for i, item in enumerate(models):
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f"Arch.models.{i}: expected a one-key mapping like {{Teacher: ...}}")
        ((role, entry),) = item.items()
        if role not in ROLES or role in roles:
            what = "a second" if role in roles else "model"
            raise ConfigError(
                f"Arch.models.{i}.{role}: {what} {role!r} entry; offline distillation takes "
                "exactly one Teacher and one Student (supported: Teacher, Student)"
            )
        roles.append(role)
        _check_model_entry(entry, f"Arch.models.{i}.{role}")
    for role in ROLES:
        if role not in roles:
            raise ConfigError(f"Arch.models: no {role} entry")
    for list_key in ("pretrained_list", "freeze_params_list"):
        values = arch.get(list_key)
        if values is not None and (not isinstance(values, list) or len(values) != len(models)):
            raise ConfigError(
                f"Arch.{list_key}: expected null or a list of {len(models)} entries (one per "
                f"model), got {values!r}"
            )
    teacher, student = roles.index("Teacher"), roles.index("Student")
    freeze = arch.get("freeze_params_list")
    if freeze is not None:
        if not freeze[teacher]:
            raise ConfigError(
                f"Arch.freeze_params_list.{teacher}: the Teacher must be frozen (True); "
                "offline distillation uses a fixed teacher, so mutual learning (DML with "
                "[False, False]) cannot run offline"
            )
        if freeze[student]:
            raise ConfigError(f"Arch.freeze_params_list.{student}: a frozen Student cannot train")
    teacher_spec(cfg)
    student_spec(cfg)


def _check_data(cfg: dict) -> None:
    loaders = as_mapping(cfg.get("DataLoader"), "DataLoader")
    only_keys(loaders, "DataLoader", ("Train", "Eval"))
    for split in loaders:
        key = f"DataLoader.{split}"
        section = as_mapping(loaders[split], key)
        only_keys(section, key, ("dataset", "sampler", "loader"))
        dataset = as_mapping(section.get("dataset"), f"{key}.dataset")
        if "batch_transform_ops" in dataset:
            raise ConfigError(
                f"{key}.dataset.batch_transform_ops: batch-level mixing (Mixup, Cutmix, ...) is "
                "not supported offline; remove it"
            )
        only_keys(dataset, f"{key}.dataset", _DATASET_KEYS, ("delimiter", "relabel"))
        if not isinstance(dataset.get("delimiter", " "), str) or dataset.get("delimiter") == "":
            raise ConfigError(f"{key}.dataset.delimiter: expected a non-empty string")
        if dataset.get("relabel"):
            raise ConfigError(f"{key}.dataset.relabel: True is not supported")
        sampler = as_mapping(section.get("sampler"), f"{key}.sampler")
        only_keys(sampler, f"{key}.sampler", _SAMPLER_KEYS)
        if sampler.get("name", _SAMPLERS[0]) not in _SAMPLERS:
            raise ConfigError(
                f"{key}.sampler.name: {sampler['name']!r} is not supported; supported: "
                f"{', '.join(_SAMPLERS)}"
            )
        only_keys(
            as_mapping(section.get("loader"), f"{key}.loader"),
            f"{key}.loader",
            _LOADER_KEYS,
            _LOADER_HARMLESS,
        )
        data_spec(cfg, split)  # dataset name, required keys, batch size and transform ops


def _check_loss(cfg: dict) -> None:
    loss = as_mapping(cfg.get("Loss"), "Loss")
    only_keys(loss, "Loss", ("Train", "Eval"))
    if "Train" in loss:
        from offline_ssld.losses import build_loss

        build_loss(loss["Train"])  # names, arguments, feature losses: errors name the key
        if is_distillation(cfg):
            for i, entry in enumerate(loss["Train"]):
                ((name, args),) = entry.items()
                _check_loss_models(name, args or {}, f"Loss.Train.{i}.{name}")
    eval_losses = loss.get("Eval")
    if eval_losses is not None:
        if not isinstance(eval_losses, list):
            raise ConfigError("Loss.Eval: expected a list of one-key loss entries")
        for i, entry in enumerate(eval_losses):
            name = next(iter(entry)) if isinstance(entry, dict) and len(entry) == 1 else None
            if name not in _EVAL_LOSSES:
                raise ConfigError(
                    f"Loss.Eval.{i}: {name or entry!r} is not supported; supported: "
                    f"{', '.join(_EVAL_LOSSES)} (only reported by PaddleClas; we report top-1)"
                )


def _check_loss_models(name: str, args: dict, key: str) -> None:
    """The only pair offline is (Student, Teacher): the teacher is a cached constant."""
    pairs = args.get("model_name_pairs")
    if pairs is not None:
        ok = [["Student", "Teacher"]]
        if pairs != ok and not (name in _DML_NAMES and pairs == [["Teacher", "Student"]]):
            raise ConfigError(
                f"{key}.model_name_pairs: {pairs!r} is not supported; offline the only pair is "
                "[[Student, Teacher]] (the Teacher is the cached output)"
            )
    names = args.get("model_names")
    if names is not None and names != ["Student"]:
        raise ConfigError(
            f"{key}.model_names: {names!r} is not supported; only [Student] trains offline"
        )


def _check_metric(cfg: dict) -> None:
    metric = as_mapping(cfg.get("Metric"), "Metric")
    only_keys(metric, "Metric", ("Train", "Eval"))
    for split, entries in metric.items():
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise ConfigError(
                f"Metric.{split}: expected a list like [{{TopkAcc: {{topk: [1, 5]}}}}]"
            )
        for i, entry in enumerate(entries):
            name = next(iter(entry)) if isinstance(entry, dict) and len(entry) == 1 else None
            key = f"Metric.{split}.{i}"
            if name not in _METRICS:
                raise ConfigError(
                    f"{key}: {name or entry!r} is not supported; supported: {', '.join(_METRICS)}"
                )
            args = as_mapping(entry[name], f"{key}.{name}")
            only_keys(args, f"{key}.{name}", _METRIC_ARGS)
            if args.get("model_key", "Student") != "Student":
                raise ConfigError(
                    f"{key}.{name}.model_key: {args['model_key']!r}; we report the Student's top-1"
                )


def _check_amp(cfg: dict) -> None:
    amp = as_mapping(cfg.get("AMP"), "AMP")
    only_keys(amp, "AMP", ("level",), _AMP_HARMLESS)
    if amp.get("level", "O1") != "O1":
        raise ConfigError(
            f"AMP.level: {amp['level']!r} is not supported; training uses O1 mixed precision "
            "on GPU (fp32 on CPU)"
        )


def check_supported(cfg: dict) -> None:
    """Refuse any key a stage would not honour, naming its path and what is supported.

    Called at the start of each stage (dump.plan_dump, train.train, train.evaluate_config)
    and by `offline-ssld overlay`, not by load_config: partial configs stay loadable.
    Known-harmless keys (export settings, logging cadence, ...) are accepted; `Infer` is
    PaddleClas's predict settings and is not read. Offline is checked by load_config.
    """
    from offline_ssld.optim import check_optimizer  # optim imports this module

    _check_global(cfg)
    _check_arch(cfg)
    _check_data(cfg)
    check_optimizer(cfg)
    _check_loss(cfg)
    _check_metric(cfg)
    _check_amp(cfg)
    policy = (cfg.get("Offline") or {}).get("view_policy", OFFLINE_DEFAULTS["view_policy"])
    if policy != "cycle":
        raise ConfigError(f"Offline.view_policy: {policy!r} is not supported; supported: cycle")
