"""Typed specs of the sections a stage reads: the teacher and student models (ModelSpec)
and the data loaders (DataSpec), in the shape PaddleClas builds them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_ssld.config.loading import get
from offline_ssld.config.offline import offline_spec
from offline_ssld.errors import ConfigError

DISTILLATION_ARCH = "DistillationModel"
# A model entry's own keys; every other key is a backbone argument, except PaddleClas settings
# that change nothing here and feature-model keys (which paddleclas.py refuses).
MODEL_KEYS = ("name", "class_num", "pretrained")
MODEL_HARMLESS = ("use_ssld",)  # use_ssld only picks the zoo download URL
# Keys PaddleClas's build_model pops from the Arch section itself, never given to a backbone.
ARCH_LEVEL_KEYS = ("use_sync_bn",)
FEATURE_MODEL_KEYS = ("return_stages", "return_patterns", "stages_pattern", "models")


@dataclass(frozen=True)
class Download:
    """Weights PaddleClas downloads for a model: `pretrained: True` (the URL the backbone's
    factory picks from its MODEL_URLS, the SSLD one with `use_ssld: True`) or
    `pretrained: <url>` (that URL as given). offline_ssld/pretrained.py fetches it."""

    key: str  # the config key it came from, e.g. Arch.models.1.Student.pretrained
    url: str | None  # None: the backbone's own model-zoo URL
    use_ssld: bool = False
    # The file is a pickle (.pdparams): the zoo's own URL is what PaddleClas itself trusts;
    # a URL a config names loads only with Offline.allow_pickle_weights.
    trusted: bool = True


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
    download: Download | None = None  # weights PaddleClas would download (pretrained.py)


PADDLECLAS_CLASS_NUM = 1000  # what a PaddleClas backbone builds when class_num is not given


def _model_entry(entry: Any, key: str, default_class_num: Any = PADDLECLAS_CLASS_NUM) -> ModelSpec:
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"{key}: expected a mapping with 'name' and 'class_num'")
    class_num = entry.get("class_num", default_class_num)
    if not isinstance(class_num, int) or isinstance(class_num, bool) or class_num < 2:
        raise ConfigError(f"{key}.class_num: expected an integer >= 2, got {class_num!r}")
    pretrained = entry.get("pretrained")
    if pretrained is False or pretrained is True or _is_url(pretrained):
        pretrained = None  # a download: the role's spec (teacher_spec, student_spec) says how
    args = tuple(
        sorted(
            (k, _frozen(v))
            for k, v in entry.items()
            if k not in (*MODEL_KEYS, *MODEL_HARMLESS, *FEATURE_MODEL_KEYS)
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


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _download(
    cfg: dict, value: Any, key: str, use_ssld: Any = False, *, zoo: bool = True
) -> Download | None:
    """The download a weights setting asks PaddleClas for: True (the backbone's model-zoo
    weights; only where PaddleClas's backbone reads it, `zoo`) or an http(s) URL."""
    if value is True and zoo:
        if not isinstance(use_ssld, bool):
            raise ConfigError(f"{key.rsplit('.', 1)[0]}.use_ssld: expected true or false")
        return Download(key, None, use_ssld)
    if _is_url(value):
        return Download(key, str(value), trusted=offline_spec(cfg).allow_pickle_weights)
    return None


def _weights_path(value: Any, key: str) -> str | None:
    """A weights setting as a file path. PaddleClas writes paths without a suffix
    (`./pretrained/ResNet50_vd_ssld`): we take `<path>.safetensors`, else `<path>.pdparams`,
    which models.load_weights loads only with Offline.allow_pickle_weights (and otherwise
    refuses, saying so). True and URLs are downloads (_download), not paths."""
    if value is None or value is True or value is False or value == "" or _is_url(value):
        return None
    path = str(value)
    if path.endswith((".safetensors", ".pdparams")):
        return path
    safe, pickled = f"{path}.safetensors", f"{path}.pdparams"
    if Path(safe).is_file() or not Path(pickled).is_file():
        return safe  # when missing, load_weights names the .safetensors file it looked for
    return pickled


def _teacher_weights_setting(cfg: dict) -> tuple[str | None, str | None, Download | None]:
    """(weights file, config key, download): Offline.teacher_weights, else
    Arch.pretrained_list at the Teacher's index, else the Teacher entry's (or plain Arch's)
    `pretrained` (with its use_ssld). As in PaddleClas, pretrained_list is loaded after the
    backbone is built, so it wins over the entry's True, and then nothing is downloaded."""
    chosen = offline_spec(cfg).teacher_weights
    if chosen is not None:
        where = "Offline.teacher_weights"
        return _weights_path(chosen, where), where, _download(cfg, chosen, where, zoo=False)
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
            download = _download(cfg, plist[index], where, zoo=False)
            return _weights_path(plist[index], where), where, download
        entry = entry if isinstance(entry, dict) else {}
        where, value, use_ssld = f"{key}.pretrained", entry.get("pretrained"), entry.get("use_ssld")
    else:
        where, value, use_ssld = "Arch.pretrained", arch.get("pretrained"), arch.get("use_ssld")
    path, download = _weights_path(value, where), _download(cfg, value, where, use_ssld or False)
    return path, (where if path or download else None), download


def teacher_weights_source(cfg: dict) -> tuple[str | None, str | None]:
    """(weights file, config key it came from); the file is None for a download."""
    path, where, _ = _teacher_weights_setting(cfg)
    return path, where


def teacher_spec(cfg: dict, fetch: bool = True) -> ModelSpec:
    """The teacher: the DistillationModel's Teacher entry, or a plain Arch (a teacher config).
    Its weights: Offline.teacher_weights > Arch.pretrained_list[Teacher] > Teacher.pretrained.
    Weights PaddleClas would download are fetched now unless `fetch` is False (overlay's dry
    run): `pretrained` is then the local safetensors file (offline_ssld/pretrained.py)."""
    arch = get(cfg, "Arch")
    if arch.get("name") == DISTILLATION_ARCH:
        models = _distillation_models(cfg)
        if "Teacher" not in models:
            raise ConfigError("Arch.models: no Teacher entry")
        spec = _model_entry(*models["Teacher"])
    else:
        spec = plain_arch(cfg)
    weights, where, download = _teacher_weights_setting(cfg)
    spec = ModelSpec(spec.name, spec.class_num, weights, spec.key, spec.args, where, download)
    if download is not None and fetch:
        from offline_ssld.pretrained import fetch_weights  # downloads: never at import time

        spec = dataclasses.replace(spec, pretrained=fetch_weights(spec))
    return spec


def plain_arch(cfg: dict) -> ModelSpec:
    """A single-model Arch; PaddleClas copies the deprecated Global.class_num into it."""
    fallback = (cfg.get("Global") or {}).get("class_num", PADDLECLAS_CLASS_NUM)
    return _model_entry(backbone_entry(get(cfg, "Arch")), "Arch", fallback)


def backbone_entry(arch: Any) -> Any:
    """A plain Arch without the keys PaddleClas's build_model reads itself (use_sync_bn)."""
    if not isinstance(arch, dict):
        return arch
    return {k: v for k, v in arch.items() if k not in ARCH_LEVEL_KEYS}


def use_sync_bn(cfg: dict) -> bool:
    """Arch.use_sync_bn, read (as PaddleClas's build_model does) from the Arch section itself,
    plain or DistillationModel; it converts every BatchNorm of the built model."""
    value = get(cfg, "Arch.use_sync_bn", False)
    if not isinstance(value, bool):
        raise ConfigError(f"Arch.use_sync_bn: expected true or false, got {value!r}")
    return value


def student_spec(cfg: dict) -> ModelSpec:
    """The model being trained: the Student entry, or a plain Arch (supervised training).
    Its `pretrained` is the file of initial weights (SSLD's fine-tuning stage starts from
    one): Arch.pretrained_list at the Student's index, else the entry's `pretrained`; True
    (with use_ssld) or a URL is PaddleClas's download, which models.build_model loads as
    PaddleClas's backbone does."""
    arch = get(cfg, "Arch")
    if arch.get("name") != DISTILLATION_ARCH:
        spec = plain_arch(cfg)
        download = _download(
            cfg, arch.get("pretrained"), "Arch.pretrained", arch.get("use_ssld", False)
        )
        key = download.key if download else None
        return dataclasses.replace(spec, weights_key=key, download=download)
    models = _distillation_models(cfg)
    if "Student" not in models:
        raise ConfigError("Arch.models: no Student entry")
    entry, key = models["Student"]
    spec = _model_entry(entry, key)
    index = int(key.split(".")[2])
    plist = arch.get("pretrained_list")
    if isinstance(plist, list) and index < len(plist) and plist[index] not in (None, ""):
        where, value = f"Arch.pretrained_list.{index}", plist[index]
        download = _download(cfg, value, where, zoo=False)
    else:
        where, value = f"{key}.pretrained", entry.get("pretrained")
        download = _download(cfg, value, where, entry.get("use_ssld", False))
    weights = _weights_path(value, where)
    return ModelSpec(spec.name, spec.class_num, weights, spec.key, spec.args, where, download)


def is_distillation(cfg: dict) -> bool:
    return get(cfg, "Arch.name", None) == DISTILLATION_ARCH


def is_multilabel(cfg: dict) -> bool:
    """Global.use_multilabel: each image has an attribute vector, not one class."""
    return bool(get(cfg, "Global.use_multilabel", False))


MULTILABEL_DATASET = "MultiLabelDataset"
DATASETS = ("ImageNetDataset", MULTILABEL_DATASET)


@dataclass(frozen=True)
class DataSpec:
    """One `DataLoader.<split>` section, in the shape PaddleClas's ImageNetDataset (or
    MultiLabelDataset: tab-separated attribute lists, optionally with label ratios) takes."""

    image_root: str
    cls_label_path: str
    transform_ops: list
    batch_size: int
    shuffle: bool
    drop_last: bool
    num_workers: int
    key: str
    delimiter: str | None = None  # list fields: whitespace, or exactly this when set
    multilabel: bool = False  # MultiLabelDataset
    label_ratio: bool = False  # MultiLabelDataset.label_ratio: labels carry the list's ratios


def data_spec(cfg: dict, split: str) -> DataSpec:
    key = f"DataLoader.{split}"
    dataset = get(cfg, f"{key}.dataset")
    name = dataset.get("name", "ImageNetDataset")
    if name not in DATASETS:
        raise ConfigError(
            f"{key}.dataset.name: {name!r} is not supported; supported: {', '.join(DATASETS)}"
        )
    multilabel = name == MULTILABEL_DATASET
    if multilabel != is_multilabel(cfg):
        raise ConfigError(
            f"{key}.dataset.name: {name} with Global.use_multilabel "
            f"{is_multilabel(cfg)}; PaddleClas reads attribute lists exactly when both say so"
        )
    delimiter = dataset.get("delimiter")
    if multilabel and delimiter not in (None, "\t"):
        raise ConfigError(f"{key}.dataset.delimiter: MultiLabelDataset lists are tab-separated")
    label_ratio = dataset.get("label_ratio", False)
    if not isinstance(label_ratio, bool) or (label_ratio and not multilabel):
        raise ConfigError(
            f"{key}.dataset.label_ratio: {label_ratio!r}; only MultiLabelDataset takes it "
            "(true or false)"
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
        )
        + _batch_ops(dataset.get("batch_transform_ops"), f"{key}.dataset.batch_transform_ops"),
        batch_size=batch_size,
        shuffle=bool(sampler.get("shuffle", split == "Train")),
        drop_last=bool(sampler.get("drop_last", False)),
        num_workers=int(loader.get("num_workers", 0)),
        key=f"{key}.dataset",
        delimiter="\t" if multilabel else delimiter,
        multilabel=multilabel,
        label_ratio=label_ratio,
    )


def _batch_ops(batch_ops: Any, key: str) -> list:
    """PaddleClas's batch_transform_ops run after the per-image ops; here the one batch op is
    the pipeline's last op (data/batchops.py), which mixes each view with a partner's."""
    if batch_ops is None:
        return []
    if not isinstance(batch_ops, list) or len(batch_ops) != 1:
        raise ConfigError(
            f"{key}: expected a list of one batch op (MixupOperator, CutmixOperator or "
            f"OpSampler), got {batch_ops!r}"
        )
    from offline_ssld.data.batchops import MixOp
    from offline_ssld.data.transforms import registered_ops

    entry = batch_ops[0]
    name, kwargs = (
        next(iter(entry.items())) if isinstance(entry, dict) and len(entry) == 1 else ("", 0)
    )
    cls = registered_ops().get(name) if isinstance(name, str) else None
    if cls is None or not issubclass(cls, MixOp) or not isinstance(kwargs, (dict, type(None))):
        raise ConfigError(
            f"{key}.0: {entry!r} is not supported; supported: "
            "{MixupOperator: {alpha}}, {CutmixOperator: {alpha}}, {OpSampler: {...}}"
        )
    for arg in kwargs or {}:
        if arg not in cls.args:
            raise ConfigError(
                f"{key}.0.{name}.{arg}: unknown argument; supported: {', '.join(cls.args)}"
            )
    cls(f"{key}.0.{name}", **(kwargs or {}))  # its arguments' errors name this key
    return list(batch_ops)


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


AMP_KEYS = (
    "use_amp",
    "level",
    "scale_loss",
    "use_dynamic_loss_scaling",
    "use_promote",
    "use_fp16_test",
)


@dataclass(frozen=True)
class AmpSpec:
    """The AMP section as PaddleClas's Engine._init_amp reads it (ppcls/engine/engine.py):
    a non-empty section turns mixed precision on unless `use_amp` is false; the loss scaler
    is GradScaler(init_loss_scaling=scale_loss, use_dynamic_loss_scaling=...) with
    PaddleClas's defaults 1.0 and False; evaluation runs in fp16 only with use_fp16_test."""

    enabled: bool
    level: str = "O1"
    scale_loss: float = 1.0
    use_dynamic_loss_scaling: bool = False
    use_promote: bool = False
    use_fp16_test: bool = False


def _amp_bool(amp: dict, name: str, default: bool) -> bool:
    value = amp.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"AMP.{name}: expected true or false, got {value!r}")
    return value


def amp_spec(cfg: dict) -> AmpSpec:
    """The AMP section's settings. Only level O1 is implemented: O2 (PaddleClas casts the
    model itself to fp16 with paddle.amp.decorate) is refused by name when AMP is on, where
    PaddleClas would fall back to O1 for an unknown level with a warning."""
    amp = cfg.get("AMP")
    if amp is not None and not isinstance(amp, dict):
        raise ConfigError(f"AMP: expected a mapping, got {amp!r}")
    amp = amp or {}
    scale_loss = amp.get("scale_loss", 1.0)
    if (
        isinstance(scale_loss, bool)
        or not isinstance(scale_loss, (int, float))
        or not math.isfinite(scale_loss)
        or scale_loss <= 0
    ):
        raise ConfigError(f"AMP.scale_loss: expected a positive number, got {scale_loss!r}")
    spec = AmpSpec(
        enabled=bool(amp) and _amp_bool(amp, "use_amp", True),
        level=str(amp.get("level", "O1")),
        scale_loss=float(scale_loss),
        use_dynamic_loss_scaling=_amp_bool(amp, "use_dynamic_loss_scaling", False),
        use_promote=_amp_bool(amp, "use_promote", False),
        use_fp16_test=_amp_bool(amp, "use_fp16_test", False),
    )
    if spec.enabled and spec.level != "O1":
        raise ConfigError(
            f"AMP.level: {amp['level']!r} is not supported; only O1 (mixed precision) is "
            "implemented: set AMP.level: O1, or AMP.use_amp: false"
        )
    return spec
