"""The `Offline` section: its keys and defaults, parsed and checked once into an OfflineSpec.

Every stage reads its Offline settings from the OfflineSpec its entry point parses, never from
the raw mapping, so each key is checked here, in one place, with an error naming it. The
names of the cache's codecs and backends, and each codec's Offline keys, are plain data here
(config is the bottom layer: parsing a config imports no storage code); cache/codecs.py and
cache/backends.py build their registries over exactly these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_ssld.errors import ConfigError

# Shard formats `Offline.format` accepts: the entries of cache/backends.py BACKENDS.
BACKEND_NAMES = ("arrow", "hdf5")
# Codecs `Offline.codec` accepts (cache/codecs.py), each with its settings and the Offline key
# that sets each; the key's default in OFFLINE_DEFAULTS is the codec constructor's default.
CODEC_OFFLINE_KEYS: dict[str, dict[str, str]] = {
    "fp16": {},
    "topk": {"k": "topk"},
    "sampled": {"samples": "samples"},
}

# One place for every Offline key, its default and why it exists.
OFFLINE_DEFAULTS: dict[str, Any] = {
    # where dump-teacher writes and train-student reads; for train-student also a list of
    # caches of the same images by several teachers (an ensemble): [a, {path: b, weight: 2}]
    "cache_dir": "cache/offline_ssld",
    "ensemble": "mean_probs",  # ensemble rule: mean_probs or mean_logits (tempered log-probs)
    "ensemble_temperature": 1.0,  # temperature of mean_logits (ignored by mean_probs)
    "teacher_weights": None,  # .safetensors of the teacher (Arch Teacher `pretrained` also works)
    "views": 4,  # dump: views stored per image; train: use the first `views` of the cache
    "format": "arrow",  # shard backend, one of BACKEND_NAMES
    "codec": "fp16",  # how logits are stored: one of CODEC_OFFLINE_KEYS
    "topk": 5,  # topk codec: classes kept per view (the rest is one bucket)
    "samples": 12,  # sampled codec: class ids drawn per view from the teacher's softmax
    "shard_size": 4096,  # rows per shard, rounded down to whole images (all views of an image)
    "seed": 0,  # seeds view parameters; with the content hash it fixes every view
    "batch_size": 128,  # teacher inference batch in dump-teacher
    "num_workers": None,  # loader workers for dump; None takes DataLoader.Train.loader
    "skip_bad": False,  # record unreadable images in the manifest instead of failing
    "allow_pickle_weights": False,  # load .pdparams (pickle) teacher weights you trust
    "online_teacher_bn": "train",  # online baseline: teacher BatchNorm mode (PaddleClas: train)
    # online baseline: fresh views per epoch (PaddleClas) or the cache's views, replayed
    "online_views": "fresh",
    "view_policy": "cycle",  # each epoch one view per image, without replacement, cycled
    "precise_bn_batches": 100,  # before each eval, BN statistics = mean over this many batches
}

ENSEMBLE_RULES = ("mean_probs", "mean_logits")
ONLINE_VIEWS = ("fresh", "replay")


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


@dataclass(frozen=True)
class OfflineSpec:
    """The checked `Offline` section (keys in OFFLINE_DEFAULTS, meanings in the overlay)."""

    caches: tuple[CacheMember, ...]  # cache_dir: one cache, or an ensemble's members
    is_ensemble: bool  # cache_dir was given as a list
    ensemble: str  # rule combining an ensemble's members, one of ENSEMBLE_RULES
    ensemble_temperature: float
    teacher_weights: str | None
    views: int
    backend: str  # the `format` key
    codec: str
    codec_settings: tuple[tuple[str, Any], ...]  # (setting, value) of the keys `codec` declares
    shard_size: int
    seed: int
    batch_size: int
    num_workers: int | None  # None: DataLoader.Train.loader.num_workers
    skip_bad: bool
    allow_pickle_weights: bool
    online_teacher_bn: str
    online_views: str  # one of ONLINE_VIEWS
    view_policy: str
    precise_bn_batches: int

    def single_cache(self, what: str) -> str:
        """The one cache a stage writes or reads; an ensemble list is refused by name."""
        if self.is_ensemble:
            raise ConfigError(
                f"Offline.cache_dir: {what} needs one cache directory, got a list of "
                f"{len(self.caches)} (an ensemble is only for train-student, report and merge)"
            )
        return self.caches[0].path


def _int(section: dict, key: str, least: int, what: str) -> int:
    value = section[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ConfigError(f"Offline.{key}: expected {what}, got {value!r}")
    return value


def _bool(section: dict, key: str) -> bool:
    value = section[key]
    if not isinstance(value, bool):
        raise ConfigError(f"Offline.{key}: expected true or false, got {value!r}")
    return value


def _choice(section: dict, key: str, supported: tuple[str, ...]) -> str:
    value = section[key]
    if value not in supported:
        raise ConfigError(f"Offline.{key}: {value!r}; supported: {', '.join(supported)}")
    return value


def offline_section(given: Any) -> dict:
    """The Offline mapping as written, unknown keys refused, defaults filled in."""
    given = given or {}
    if not isinstance(given, dict):
        raise ConfigError("Offline: must be a mapping")
    for key in given:
        if key not in OFFLINE_DEFAULTS:
            raise ConfigError(
                f"Offline.{key}: unknown key; known: {', '.join(sorted(OFFLINE_DEFAULTS))}"
            )
    return {**OFFLINE_DEFAULTS, **given}


def offline_spec(cfg: dict) -> OfflineSpec:
    """Parse and check cfg's Offline section: the one reader of it for every stage."""
    section = offline_section(cfg.get("Offline"))
    codec = section["codec"]
    if not isinstance(codec, str) or codec not in CODEC_OFFLINE_KEYS:
        raise ConfigError(
            f"Offline.codec: unknown codec {codec!r}; expected one of "
            f"{', '.join(CODEC_OFFLINE_KEYS)}"
        )
    codec_keys = CODEC_OFFLINE_KEYS[codec]
    temperature = section["ensemble_temperature"]
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not (temperature > 0)
    ):
        raise ConfigError(
            f"Offline.ensemble_temperature: expected a positive number, got {temperature!r}"
        )
    weights = section["teacher_weights"]
    if weights is not None and not isinstance(weights, str):
        raise ConfigError(f"Offline.teacher_weights: expected a file path, got {weights!r}")
    workers = section["num_workers"]
    if workers is not None:
        workers = _int(section, "num_workers", 0, "null or a non-negative integer")
    if section["online_teacher_bn"] not in ("train", "eval"):
        raise ConfigError("Offline.online_teacher_bn: expected train or eval")
    if section["view_policy"] != "cycle":
        raise ConfigError(
            f"Offline.view_policy: {section['view_policy']!r} is not supported; supported: cycle"
        )
    return OfflineSpec(
        caches=tuple(cache_members(section["cache_dir"])),
        is_ensemble=isinstance(section["cache_dir"], list),
        ensemble=_choice(section, "ensemble", ENSEMBLE_RULES),
        ensemble_temperature=float(temperature),
        teacher_weights=weights or None,
        views=_int(section, "views", 1, "a positive integer"),
        backend=_choice(section, "format", BACKEND_NAMES),
        codec=codec,
        codec_settings=tuple((setting, section[key]) for setting, key in codec_keys.items()),
        shard_size=_int(section, "shard_size", 1, "a positive integer"),
        seed=_int(section, "seed", 0, "a non-negative integer"),
        batch_size=_int(section, "batch_size", 1, "a positive integer"),
        num_workers=workers,
        skip_bad=_bool(section, "skip_bad"),
        allow_pickle_weights=_bool(section, "allow_pickle_weights"),
        online_teacher_bn=section["online_teacher_bn"],
        online_views=_choice(section, "online_views", ONLINE_VIEWS),
        view_policy=section["view_policy"],
        precise_bn_batches=_int(section, "precise_bn_batches", 0, "a non-negative integer"),
    )
