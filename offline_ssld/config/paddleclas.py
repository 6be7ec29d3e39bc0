"""PaddleClas compatibility: refuse any key a stage would not honour, and say what each
stage takes from a config (the `overlay` summary)."""

from __future__ import annotations

import os
from typing import Any

from offline_ssld.config.loading import as_mapping, get, only_keys
from offline_ssld.config.offline import BACKEND_NAMES, OfflineSpec, offline_spec
from offline_ssld.config.specs import (
    AMP_KEYS,
    ARCH_LEVEL_KEYS,
    DISTILLATION_ARCH,
    FEATURE_MODEL_KEYS,
    MODEL_HARMLESS,
    MODEL_KEYS,
    AmpSpec,
    amp_spec,
    backbone_entry,
    data_spec,
    is_distillation,
    is_multilabel,
    plain_arch,
    student_spec,
    teacher_spec,
    teacher_weights_source,
    use_sync_bn,
)
from offline_ssld.errors import ConfigError
from offline_ssld.losses import LOSSES, NAME_MAP, DistillLoss, build_loss
from offline_ssld.optim import check_optimizer, describe_optimizer

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
    "use_multilabel",
    "checkpoints",  # resume from ours (no pickle) or PaddleClas's files (on trust)
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
    "eval_mode": ("classification", "only classification is supported"),
    "update_freq": (1, "gradient accumulation is not supported"),
}
_ARCH_DISTILL_KEYS = (
    "name",
    "models",
    "pretrained_list",
    "freeze_params_list",
    "infer_add_softmax",  # read by `export`, as PaddleClas's ExportModel
    *ARCH_LEVEL_KEYS,
)
# Distillation Arch level; PaddleClas's DistillationModel takes use_ssld in **kargs, unread.
_ARCH_HARMLESS = ("class_num", "infer_model_name", "use_ssld")
ROLES = ("Teacher", "Student")
_DATASET_KEYS = ("name", "image_root", "cls_label_path", "transform_ops")
_SAMPLER_KEYS = ("name", "batch_size", "shuffle", "drop_last")
_SAMPLERS = ("DistributedBatchSampler", "BatchSampler")
_LOADER_KEYS = ("num_workers",)
_LOADER_HARMLESS = ("use_shared_memory",)
_EVAL_LOSSES = tuple(name for entry in LOSSES.values() for name in entry.eval_names)


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
        if name in FEATURE_MODEL_KEYS:
            raise ConfigError(
                f"{key}.{name}: models that return intermediate features (for feature losses) "
                "are not supported; offline distillation caches the teacher's logits only"
            )
    extra = [k for k in entry if k not in (*MODEL_KEYS, *MODEL_HARMLESS)]
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
    use_sync_bn(cfg)
    if arch.get("name") != DISTILLATION_ARCH:  # one model: a teacher config, or supervised
        _check_model_entry(backbone_entry(arch), "Arch")
        plain_arch(cfg)
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
    teacher_spec(cfg, fetch=False)  # a download happens where the weights are loaded
    student_spec(cfg)


def _check_data(cfg: dict) -> None:
    loaders = as_mapping(cfg.get("DataLoader"), "DataLoader")
    only_keys(loaders, "DataLoader", ("Train", "Eval"))
    for split in loaders:
        key = f"DataLoader.{split}"
        section = as_mapping(loaders[split], key)
        only_keys(section, key, ("dataset", "sampler", "loader"))
        dataset = as_mapping(section.get("dataset"), f"{key}.dataset")
        if "batch_transform_ops" in dataset and split != "Train":
            raise ConfigError(
                f"{key}.dataset.batch_transform_ops: batch ops mix training views only; remove it"
            )
        only_keys(
            dataset,
            f"{key}.dataset",
            _DATASET_KEYS,
            ("delimiter", "relabel", "label_ratio", "batch_transform_ops"),
        )
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
        built = build_loss(loss["Train"])  # names, arguments, feature losses: errors name the key
        _check_loss_labels(cfg, built, loss["Train"])
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
                    f"{', '.join(_EVAL_LOSSES)} (only reported by PaddleClas; we report "
                    "Metric.Eval)"
                )


def _check_loss_labels(cfg: dict, loss: DistillLoss, entries: list) -> None:
    """Each term gets the labels it reads: attribute vectors (with the list's ratios for
    weight_ratio) under Global.use_multilabel, one class per image otherwise."""
    multilabel = is_multilabel(cfg)
    names = [next(iter(e)) for e in entries if next(iter(e)) != "GTFusion"]
    if multilabel and loss.gt_alpha is not None:
        raise ConfigError(
            "Loss.Train: GTFusion fuses a class cross-entropy, which Global.use_multilabel "
            "has no class for; remove it"
        )
    label_ratio = data_spec(cfg, "Train").label_ratio
    if get(cfg, "DataLoader.Train.dataset.batch_transform_ops", None) is not None:
        _refuse_labels_of_mixes(loss, entries)
    for i, ((kind, _, kwargs), name) in enumerate(zip(loss.terms, names, strict=True)):
        key = f"Loss.Train.{_entry_index(entries, i)}.{name}"
        if multilabel and LOSSES[kind].reads_class_labels:
            raise ConfigError(
                f"{key}: reads one class per image, and Global.use_multilabel gives attribute "
                "vectors; use DistillationDMLLoss and DistillationMultiLabelLoss"
            )
        if kind == "multilabel" and not multilabel:
            raise ConfigError(f"{key}: needs Global.use_multilabel true and a MultiLabelDataset")
        if kwargs.get("weight_ratio") and not label_ratio:
            raise ConfigError(
                f"{key}.weight_ratio: needs DataLoader.Train.dataset.label_ratio true (the "
                "list's attribute ratios it weights by)"
            )


def _refuse_labels_of_mixes(loss: DistillLoss, entries: list) -> None:
    """Batch ops: the cached teacher output is the teacher's on the mixed view, but a loss on
    the ground-truth label would need PaddleClas's mixed one-hot targets (lam * y_a + (1 -
    lam) * y_b), which offline training does not build; such losses are refused."""
    reading = [
        _entry_index(entries, i)
        for i, (kind, _, kwargs) in enumerate(loss.terms)
        if LOSSES[kind].needs_labels(kwargs)
    ]
    if loss.gt_alpha is not None:
        reading.append(next(i for i, e in enumerate(entries) if next(iter(e)) == "GTFusion"))
    if reading:
        i = min(reading)
        raise ConfigError(
            f"Loss.Train.{i}.{next(iter(entries[i]))}: reads ground-truth labels, and with "
            "DataLoader.Train.dataset.batch_transform_ops a view mixes two images' labels "
            "(not supported offline; the cached teacher output already reflects the mix): "
            "remove one of them"
        )


def _entry_index(entries: list, term: int) -> int:
    """The Loss.Train index of the term-th loss (GTFusion entries are not terms)."""
    return [i for i, e in enumerate(entries) if next(iter(e)) != "GTFusion"][term]


def _check_loss_models(name: str, args: dict, key: str) -> None:
    """The only pair offline is (Student, Teacher): the teacher is a cached constant."""
    pairs = args.get("model_name_pairs")
    if pairs is not None:
        ok = [["Student", "Teacher"]]
        swapped = pairs == [["Teacher", "Student"]] and LOSSES[NAME_MAP[name]].symmetric
        if pairs != ok and not swapped:
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
    """Metric.Eval drives evaluation and the best checkpoint; Metric.Train (PaddleClas's
    training log) is checked the same way but not computed."""
    from offline_ssld.metrics import build_metrics

    metric = as_mapping(cfg.get("Metric"), "Metric")
    only_keys(metric, "Metric", ("Train", "Eval"))
    class_num = student_spec(cfg).class_num
    for split, entries in metric.items():
        if entries is not None:
            build_metrics(entries, class_num, is_multilabel(cfg), f"Metric.{split}")


def _check_amp(cfg: dict) -> None:
    only_keys(as_mapping(cfg.get("AMP"), "AMP"), "AMP", AMP_KEYS)
    amp_spec(cfg)


def check_supported(cfg: dict) -> OfflineSpec:
    """Refuse any key a stage would not honour, naming its path and what is supported.

    Called at the start of each stage (dump.plan_dump, train.train, train.evaluate_config)
    and by `offline-ssld overlay`, not by load_config: partial configs stay loadable.
    Known-harmless keys (export settings, logging cadence, ...) are accepted; `Infer` is
    PaddleClas's predict settings and is not read. Returns the parsed Offline section, so a
    stage checks its config and reads Offline in one call.
    """
    _check_global(cfg)
    _check_arch(cfg)
    _check_data(cfg)
    check_optimizer(cfg)
    _check_loss(cfg)
    _check_metric(cfg)
    _check_amp(cfg)
    return offline_spec(cfg)


def _ops_text(ops: list) -> str:
    parts = []
    for entry in ops:
        ((name, args),) = entry.items()
        inner = ", ".join(f"{k}={v!r}" for k, v in (args or {}).items())
        parts.append(f"{name}({inner})" if inner else name)
    return " -> ".join(parts)


def _caches_text(offline: OfflineSpec) -> str:
    if not offline.is_ensemble:
        return offline.caches[0].path
    members = ", ".join(f"{m.path} (weight {m.weight:g})" for m in offline.caches)
    return f"ensemble of {members}, {offline.ensemble}"


def overlay_summary(cfg: dict) -> list[str]:
    """What each stage takes from a checked config, one line per item."""
    from offline_ssld.models import available_device
    from offline_ssld.pretrained import describe

    teacher = teacher_spec(cfg, fetch=False)
    weights, source = teacher_weights_source(cfg)
    student = student_spec(cfg)
    off = offline_spec(cfg)
    glob = cfg.get("Global") or {}
    if teacher.download is not None:
        weights_text = describe(teacher)
    elif weights:
        state = "found" if os.path.isfile(weights) else "MISSING"
        weights_text = f"{weights} (from {source}; {state})"
    else:
        weights_text = "none: set Offline.teacher_weights (dump-teacher needs them)"
    lines = [
        f"teacher: {teacher.name}, class_num {teacher.class_num} ({teacher.key}), frozen",
        f"teacher weights: {weights_text}",
        f"student: {student.name}, class_num {student.class_num} ({student.key})",
    ]
    if student.download is not None:
        lines.append(f"student initial weights: {describe(student)}")
    if not is_distillation(cfg):
        lines.append("note: plain Arch: dump-teacher uses it as the teacher, train trains it")
    loaders = cfg.get("DataLoader") or {}
    for split in ("Train", "Eval"):
        if split not in loaders:
            lines.append(f"{split.lower()} list: none (DataLoader.{split} not given)")
            continue
        d = data_spec(cfg, split)
        given = get(cfg, f"DataLoader.{split}.dataset.transform_ops")
        appended = " (ToCHWImage appended, as PaddleClas's dataset transposes to CHW)"
        lines += [
            f"{split.lower()} list: {d.cls_label_path} (image_root {d.image_root}), batch "
            f"{d.batch_size}, shuffle {d.shuffle}, drop_last {d.drop_last}, workers "
            f"{d.num_workers}",
            f"{split.lower()} transforms: {_ops_text(d.transform_ops)}"
            + (appended if {"ToCHWImage": None} in d.transform_ops[len(given) :] else ""),
        ]
        if split == "Train":
            from offline_ssld.data.transforms import Pipeline, build_ops

            names = Pipeline(build_ops(d.transform_ops, d.key)).param_names
            lines.append(
                f"train view params stored per view: {len(names)}"
                + (f" ({', '.join(names)})" if names else "")
            )
    lines.append(
        f"cache: {_caches_text(off)}, views {off.views}, codec {off.codec}"
        + "".join(f" ({setting} {value})" for setting, value in off.codec_settings)
        + f", format {off.backend} (of {', '.join(BACKEND_NAMES)}), shard_size {off.shard_size}, "
        f"seed {off.seed}, "
        f"teacher batch {off.batch_size}"
    )
    loss_train = (cfg.get("Loss") or {}).get("Train")
    if loss_train:
        loss = build_loss(loss_train)
        terms = iter(loss.terms)
        mapped = []
        for i, entry in enumerate(loss_train):
            ((name, _),) = entry.items()
            if name == "GTFusion":
                continue
            kind, weight, kwargs = next(terms)
            extra = "".join(
                f", {k} {v}" if isinstance(v, bool) else f", {k} {v:g}" for k, v in kwargs.items()
            )
            mapped.append(f"Loss.Train.{i}.{name} -> {kind} (weight {weight:g}{extra})")
        if loss.gt_alpha is not None:
            mapped.append(f"GTFusion alpha {loss.gt_alpha:g} with ground-truth CE")
        lines.append("losses (train-student): " + "; ".join(mapped))
    else:
        lines.append("losses (train-student): none (Loss.Train not given)")
    lines += [
        *describe_optimizer(cfg),
        f"epochs: {glob.get('epochs', 1)}, eval every {glob.get('eval_interval', 1)}, save "
        f"every {glob.get('save_interval', 1)}, output_dir {glob.get('output_dir', 'output')}, "
        f"seed {glob.get('seed', 0)}, device {glob.get('device', 'gpu')}",
        _amp_text(amp_spec(cfg), available_device(glob.get("device"))),
        _sync_bn_text(use_sync_bn(cfg)),
        "not read: Infer (PaddleClas predict settings)",
    ]
    return lines


def _amp_text(amp: AmpSpec, device: str) -> str:
    """The AMP settings a run here applies: on CPU Paddle has no fp16 kernels for training,
    so a configured AMP is reported unavailable and training stays fp32 (train warns too)."""
    if not amp.enabled:
        return "mixed precision: off (fp32; AMP absent, empty or use_amp false)"
    text = (
        f"mixed precision: AMP {amp.level}, use_promote {amp.use_promote}, GradScaler "
        f"scale_loss {amp.scale_loss:g}, dynamic loss scaling {amp.use_dynamic_loss_scaling}, "
        f"fp16 eval {amp.use_fp16_test}; scaler state kept in checkpoints"
    )
    if device != "gpu":
        text += "; requested but unavailable on cpu: trains fp32"
    return text


def _sync_bn_text(sync_bn: bool) -> str:
    if not sync_bn:
        return "BatchNorm: per process (Arch.use_sync_bn false)"
    return (
        "BatchNorm: Arch.use_sync_bn: the student's BatchNorm layers become SyncBatchNorm when "
        "launched on several GPUs; unchanged in one process or on cpu"
    )
