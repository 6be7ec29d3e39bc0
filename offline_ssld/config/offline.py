"""The `Offline` section: its keys and defaults, and the caches `cache_dir` names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
