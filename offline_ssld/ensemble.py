"""Teacher ensembles from caches: several caches of the same images, one per teacher,
combined row by row into one target.

The caches must line up view by view: the view parameters of (seed, content key, view) are
the same in every member only when seed, transforms, view count and parameter names agree.
`Ensemble` refuses members that differ in any of these, naming the field and both caches;
it also checks, on every row it reads, that the members stored the same view parameters.
The members may hold different images (one was extended, say): train-student needs every
image of its list in every member (data/listed.py names the first one a member lacks).

Combination rules (`Offline.ensemble`), with weights w_i normalised to sum 1:

- `mean_probs`:  q = sum_i w_i p_i, the mixture of the teachers' distributions;
- `mean_logits`: q = softmax(sum_i w_i log p_i / T), the weighted mean of the members'
  log-probabilities (which are their logits up to a per-row constant), tempered by T
  (`Offline.ensemble_temperature`) and renormalised.

What the student sees is at best as exact as the least exact member (losses.check_pairing):
an ensemble with a `topk` member combines its dense decode, whose rest is spread evenly
(target "spread": approximate for losses that accept it); `sampled` members (unbiased counts)
combine only under `mean_probs`, which is linear, and not with `topk` members.

Only the reader's public API is used here: open a cache, look up (key, view), read a row's
view parameters and codec payload, decode it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import paddle

from offline_ssld.cache.fingerprint import (
    cache_fingerprint,
    canonical_hash,
    ensemble_fingerprint,
)
from offline_ssld.cache.reader import CacheReader
from offline_ssld.config.offline import ENSEMBLE_RULES, CacheMember
from offline_ssld.data.listed import ListedImages
from offline_ssld.data.transforms import Pipeline
from offline_ssld.data.views import ImageSource
from offline_ssld.errors import CacheError, ConfigError

# Manifest fields every member must share, so view v of an image is the same crop in each.
ALIGNMENT_FIELDS = (
    "fingerprints.transforms",
    "seed",
    "views",
    "param_names",
    "num_classes",
)
# How exact a decoded target is (Codec.target), least exact last.
_EXACTNESS = ("exact", "topk", "sampled")
# log(0) guard for mean_logits: the smallest positive float32 probability a decode can give.
_LOG_FLOOR = 1e-45


def _field(reader: CacheReader, dotted: str) -> Any:
    value: Any = reader.manifest.to_json()
    for part in dotted.split("."):
        value = value[part]
    return value


def combine(probs: np.ndarray, weights: np.ndarray, rule: str, temperature: float) -> np.ndarray:
    """Combine member probabilities `probs` (M, ..., C) with `weights` (M,), summing to 1,
    into float64 probabilities (..., C) whose rows sum to 1."""
    p = np.asarray(probs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).reshape((-1,) + (1,) * (p.ndim - 1))
    if rule == "mean_probs":
        q = (w * p).sum(axis=0)
        return q / q.sum(axis=-1, keepdims=True)
    if rule == "mean_logits":
        z = (w * np.log(np.maximum(p, _LOG_FLOOR))).sum(axis=0) / temperature
        z -= z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)
    raise ConfigError(f"Offline.ensemble: {rule!r}; supported: {', '.join(ENSEMBLE_RULES)}")


@dataclass
class Member:
    path: str
    weight: float  # normalised: the weights of an ensemble sum to 1
    given_weight: float  # as configured
    reader: CacheReader

    @property
    def teacher_fingerprint(self) -> str:
        return str(_field(self.reader, "fingerprints.teacher"))

    @property
    def target(self) -> str:
        return self.reader.codec.target

    @property
    def is_merged(self) -> bool:
        return bool(_field(self.reader, "teacher").get("ensemble"))


class Ensemble:
    """Open and check the member caches; look up the combined target of (key, view)."""

    def __init__(
        self,
        members: Sequence[CacheMember],
        rule: str = "mean_probs",
        temperature: float = 1.0,
    ) -> None:
        if rule not in ENSEMBLE_RULES:
            raise ConfigError(f"Offline.ensemble: {rule!r}; supported: {', '.join(ENSEMBLE_RULES)}")
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not temperature > 0
        ):
            raise ConfigError(
                f"Offline.ensemble_temperature: expected a positive number, got {temperature!r}"
            )
        if not members:
            raise ConfigError("Offline.cache_dir: an ensemble needs at least one cache")
        paths = [m.path for m in members]
        dupes = sorted({p for p in paths if paths.count(p) > 1})
        if dupes:
            raise ConfigError(f"Offline.cache_dir: {dupes[0]} is listed twice; give it a weight")
        total = sum(m.weight for m in members)
        self.rule, self.temperature = rule, float(temperature)
        self.members = [
            Member(m.path, m.weight / total, m.weight, CacheReader(m.path, True)) for m in members
        ]
        self._check_alignment()
        self.target = self._target_kind()
        self.weights = np.array([m.weight for m in self.members])
        self.fingerprint = ensemble_fingerprint(
            [
                (m.teacher_fingerprint, canonical_hash(m.reader.manifest.codec), m.weight)
                for m in self.members
            ],
            self.rule,
            self.temperature,
        )

    # ------------------------------------------------------------------ checks

    def _check_alignment(self) -> None:
        first = self.members[0]
        for other in self.members[1:]:
            for dotted in ALIGNMENT_FIELDS:
                a, b = _field(first.reader, dotted), _field(other.reader, dotted)
                if a != b:
                    raise CacheError(
                        f"ensemble members differ in {dotted}: {first.path} has {_short(a)}, "
                        f"{other.path} has {_short(b)}; the caches must be dumps of the same "
                        "images with the same transforms, seed and views"
                    )

    def _target_kind(self) -> str:
        kinds = {m.target for m in self.members}
        if {"topk", "sampled"} <= kinds:
            raise ConfigError(
                "Offline.cache_dir: an ensemble cannot mix topk and sampled caches (the result "
                "would be neither exact on k classes nor unbiased); dump them with codec fp16"
            )
        if "sampled" in kinds and self.rule == "mean_logits":
            bad = next(m.path for m in self.members if m.target == "sampled")
            raise ConfigError(
                f"Offline.ensemble: mean_logits takes logs of {bad}'s sampled counts, which is "
                "biased (and -inf on unsampled classes); use mean_probs or an fp16 cache"
            )
        kind = max(kinds, key=_EXACTNESS.index)
        # combined densely (decode), so a top-k member's rest is spread, never bucketed
        return "spread" if kind == "topk" else kind

    @property
    def codec_name(self) -> str:
        """For check_pairing's messages: the members' codecs."""
        names = [str(m.reader.manifest.codec["name"]) for m in self.members]
        return "ensemble of " + "+".join(names)

    # ------------------------------------------------------------------ data

    @property
    def views(self) -> int:
        return self.members[0].reader.views

    @property
    def num_classes(self) -> int:
        return int(self.members[0].reader.manifest.num_classes)

    def index(self) -> None:
        """Build every member's key index (once, before loader workers fork)."""
        for m in self.members:
            m.reader.index()

    def lookup(self, key: bytes, view: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(view params, combined probabilities float64 (C,)) of (key, view), or None when
        the image is in no member; an image missing from only some members is an error."""
        hits = [m.reader.lookup(key) for m in self.members]
        if all(hit is None for hit in hits):
            return None
        for m, hit in zip(self.members, hits, strict=True):
            if hit is None:
                raise CacheError(f"{m.path}: image {key.hex()} is missing from this member")
        return self.read([hit for hit in hits if hit is not None], view, f"image {key.hex()}")

    def read(
        self, rows: Sequence[tuple[int, int]], view: int, what: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(view params, combined probabilities) of `view` of the image at `rows` (its
        (shard number, image) in each member); `what` names it in errors."""
        params_of, probs = [], []
        for m, (number, image) in zip(self.members, rows, strict=True):
            params, payload = m.reader.read_view(int(number), int(image), view)
            params_of.append(np.asarray(params))
            probs.append(m.reader.decode([payload])[0].astype(np.float64))
        for m, params in zip(self.members[1:], params_of[1:], strict=True):
            if not np.array_equal(params, params_of[0]):
                raise CacheError(
                    f"ensemble members differ in the view parameters of {what} "
                    f"view {view}: {self.members[0].path} has {params_of[0].tolist()}, "
                    f"{m.path} has {params.tolist()}"
                )
        return params_of[0], combine(np.stack(probs), self.weights, self.rule, self.temperature)

    def provenance(self) -> dict:
        """What checkpoints and metrics.jsonl record: members, weights and rule."""
        return {
            "kind": "ensemble",
            "fingerprint": self.fingerprint,
            "rule": self.rule,
            "temperature": self.temperature if self.rule == "mean_logits" else None,
            "members": [
                {
                    "path": m.path,
                    "fingerprint": cache_fingerprint(m.reader.manifest),
                    "teacher": m.teacher_fingerprint,
                    "codec": m.reader.manifest.codec,
                    "weight": m.given_weight,
                    "normalised_weight": round(m.weight, 6),
                }
                for m in self.members
            ],
        }


class EnsembleReplayDataset(paddle.io.Dataset):
    """train-student from an ensemble: image -> (its stored view, replayed; the combined
    target; label). Like ReplayDataset, with the target combined over the members' rows
    that `listed` found."""

    def __init__(
        self, source: ImageSource, pipeline: Pipeline, ensemble: Ensemble, listed: ListedImages
    ):
        self.source, self.pipeline, self.ensemble = source, pipeline, ensemble
        self.listed = listed
        self.views = np.zeros(len(source.samples), dtype=np.int64)

    def set_epoch_views(self, views: np.ndarray) -> None:
        self.views = views

    def __len__(self) -> int:
        return len(self.source.samples)

    def __getitem__(self, index: int):
        data = self.source.read(index)
        self.listed.check(index, data)
        rows = [tuple(r) for r in self.listed.rows[:, index]]
        params, target = self.ensemble.read(rows, int(self.views[index]), self.source.where(index))
        x = self.pipeline.replay(data, params)
        return x, target.astype(np.float32), self.source.label(index)


def _short(value: Any) -> str:
    text = str(value)
    return text[:16] if len(text) == 64 else text
