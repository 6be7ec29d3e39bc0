"""Every fingerprint of a cache, and the one answer to "does this cache match?".

Like Hugging Face datasets' fingerprint.py, one hasher hashes the exact inputs of a
computation, so equal inputs always give the same fingerprint and any change gives another:

- `teacher`:    backbone name, class_num and the SHA-256 of the weights file;
- `transforms`: the canonical op specs of the pipeline (and the transforms version);
- `dataset`:    the sorted content keys of every image the cache holds (a set: a reordered
                list matches, and a cache extended by a part holds what a fresh dump of the
                union list holds, so both get the same value);
- `order`:      the content keys in storage order (an extension appends its part's keys);
- `list`:       written by dump-teacher: the (path, label) of every image of the part being
                dumped, in storage order. The keys are computed as the dump reads the
                images, so `dataset` and `order` cover the whole parts only (none while a
                first dump runs, every part once the cache is complete), and a dump resumes
                only when its list gives the same part, so along the same shard cuts.

`first_difference` is the single comparison that dump (resuming, extending), train (opening
a cache) and audit (verifying one) call; each caller words what a difference means for it.
The teacher, transforms, codec and views compare exactly. The dataset compares exactly
against a fingerprint (audit: do the shards hold what the manifest says), or as membership
against a list (`ListedKeys`: train-student accepts any list whose images are all in the
cache, in any order). The values computed here are stored in manifests: changing how one is
computed orphans every existing cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # type hints only: keep this module free of paddle and cv2
    from offline_ssld.cache.format import Manifest
    from offline_ssld.config.specs import ModelSpec
    from offline_ssld.data.transforms import Pipeline


def canonical_hash(obj: Any) -> str:
    """SHA-256 of canonical JSON: the same plain data always gives the same fingerprint."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a weights file, the digest users already know from model hubs."""
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def teacher_identity(spec: ModelSpec, weights: str | Path | None) -> dict:
    """What makes teacher outputs what they are: backbone, classes and the exact weights."""
    digest = file_sha256(Path(weights)) if weights else None
    identity: dict = {"name": spec.name, "class_num": spec.class_num, "weights_sha256": digest}
    if spec.args:  # only when given, so caches of plain backbones keep their fingerprint
        identity["args"] = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.args}
    return identity


def teacher_fingerprint(identity: Mapping[str, Any]) -> str:
    return canonical_hash(identity)


def transforms_fingerprint(pipeline: Pipeline) -> str:
    """Caches made with another pipeline are refused: views would not replay the same."""
    return canonical_hash(pipeline.spec())


def dataset_fingerprint(keys: Iterable[bytes]) -> str:
    return canonical_hash(sorted({k.hex() for k in keys}))


def order_fingerprint(keys: Iterable[bytes]) -> str:
    return canonical_hash([k.hex() for k in keys])


def list_fingerprint(samples: Iterable[Any]) -> str:
    """What fixes a dump part's layout before any image is read: its list samples (path,
    label, attributes) in storage order."""
    return canonical_hash([[s.path, s.label, list(s.attributes)] for s in samples])


def cache_fingerprint(manifest: Manifest) -> str:
    """What a cache holds, whatever its directory is called: its fingerprints (teacher,
    transforms, images and their storage order), codec, views and seed. Checkpoints and
    metrics record it next to the cache path."""
    return canonical_hash(
        {
            "fingerprints": manifest.fingerprints,
            "codec": manifest.codec,
            "views": manifest.views,
            "seed": manifest.seed,
        }
    )


class ListedKeys(Protocol):
    """A list's images as `first_difference` checks them against a cache: found lazily, so
    the identity fields are compared (and refused) before any image is looked up."""

    def first_missing(self) -> str | None:
        """`list:line: path` of the first listed image the cache lacks, or None."""


def expected_identity(teacher: ModelSpec, pipeline: Pipeline) -> dict[str, Any]:
    """The identity fields a teacher and a pipeline fix, for `first_difference`. The teacher
    fingerprint needs its weights file; without one, name and class count still must match."""
    expected: dict[str, Any] = {
        "teacher.name": teacher.name,
        "teacher.class_num": teacher.class_num,
        "fingerprints.transforms": transforms_fingerprint(pipeline),
    }
    if teacher.pretrained and Path(teacher.pretrained).is_file():
        identity = teacher_identity(teacher, teacher.pretrained)
        expected["fingerprints.teacher"] = teacher_fingerprint(identity)
    return expected


# Manifest fields that identify what a cache holds, in the order they are compared, with what
# each means for a user.
IDENTITY_FIELDS: dict[str, str] = {
    "teacher.name": "teacher",
    "teacher.class_num": "teacher",
    "fingerprints.teacher": "teacher",
    "fingerprints.dataset": "dataset",
    "fingerprints.transforms": "transforms",
    "fingerprints.order": "list order",
    "fingerprints.list": "list",
    "codec": "codec",
    "views": "views",
    "seed": "seed",
    "backend": "format",
    "images_per_shard": "shard size",
}
# What a dump must agree on to add shards to an existing cache.
RESUME_FIELDS = (
    "fingerprints.teacher",
    "fingerprints.dataset",
    "fingerprints.transforms",
    "fingerprints.order",
    "fingerprints.list",
    "codec",
    "views",
    "seed",
    "backend",
    "images_per_shard",
)


def manifest_field(manifest: Manifest, dotted: str) -> Any:
    """A manifest field by dotted name; None for a fingerprint the manifest lacks (`list` is
    written by dump-teacher only)."""
    value: Any = manifest.to_json()
    for part in dotted.split("."):
        value = value.get(part)
    return value


@dataclass(frozen=True)
class Difference:
    """One identity field in which a cache differs from what the caller expects."""

    field: str  # dotted manifest field, e.g. fingerprints.transforms
    cached: Any
    expected: Any
    missing: str | None = None  # a listed image the cache lacks: `list:line: path`

    def __str__(self) -> str:
        if self.missing is not None:
            return f"no row for {self.missing} ({self.field}: every listed image must be in it)"
        return (
            f"another {IDENTITY_FIELDS[self.field]} ({self.field}: cache has "
            f"{_short(self.cached)}, config gives {_short(self.expected)})"
        )

    def message(self, cache_dir: str | Path) -> str:
        """The one-line error train-student gives for this difference."""
        if self.missing is not None:
            return (
                f"{self.missing}: image is not in the cache {cache_dir} (new, or another "
                "cache's list); dump-teacher on this list adds the missing images"
            )
        return f"{cache_dir}: cache holds {self}; dump it for this config"


def first_difference(cached: Manifest, expected: Manifest | Mapping[str, Any]) -> Difference | None:
    """The first identity field where `cached` differs from `expected`, or None.

    `expected` holds the fields the caller can compute (a training config knows its teacher
    and transforms, not the dump's list order); a Manifest stands for the RESUME_FIELDS of
    the dump it describes (but `dataset` and `order` when it has a `list` fingerprint). A
    `ListedKeys` as `fingerprints.dataset` asks for membership instead, checked after every
    exact field."""
    if not isinstance(expected, Mapping):
        # A dump's list fixes its rows; their keys are fingerprinted once they are written.
        lazy = (
            ("fingerprints.dataset", "fingerprints.order")
            if expected.fingerprints.get("list")
            else ()
        )
        expected = {f: manifest_field(expected, f) for f in RESUME_FIELDS if f not in lazy}
    unknown = set(expected) - set(IDENTITY_FIELDS)
    if unknown:
        raise ValueError(f"not an identity field: {sorted(unknown)[0]}")
    listed = expected.get("fingerprints.dataset")
    for dotted in IDENTITY_FIELDS:
        if dotted in expected and not (dotted == "fingerprints.dataset" and not _exact(listed)):
            have = manifest_field(cached, dotted)
            if have != expected[dotted]:
                return Difference(dotted, have, expected[dotted])
    if listed is not None and not _exact(listed):
        missing = listed.first_missing()
        if missing is not None:
            return Difference("fingerprints.dataset", cached.fingerprints["dataset"], None, missing)
    return None


def _exact(value: Any) -> bool:
    return not hasattr(value, "first_missing")


def _short(value: Any) -> str:
    text = str(value)
    return text[:16] if len(text) == 64 else text


def ensemble_fingerprint(
    members: Iterable[tuple[str, str, float]], rule: str, temperature: float | None
) -> str:
    """An ensemble's teacher fingerprint: its members' (teacher fingerprint, codec settings
    hash, weight), weights normalised to sum 1 and members sorted, so [a, b] and [b, a], or
    weights (1, 2) and (2, 4), give one fingerprint; plus the rule (and its temperature)."""
    listed = list(members)
    total = sum(w for _, _, w in listed)
    canon = sorted((t, c, round(w / total, 12)) for t, c, w in listed)
    return canonical_hash(
        {
            "members": [{"teacher": t, "codec": c, "weight": w} for t, c, w in canon],
            "rule": rule,
            "temperature": temperature if rule == "mean_logits" else None,
        }
    )
