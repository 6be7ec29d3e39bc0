"""`offline-ssld merge`: write an ensemble's combined targets as one ordinary cache.

For people who want to ship one cache instead of several: every (image, view) row holds the
members' shared view parameters and the combined distribution's log-probabilities, encoded
by a codec (fp16 by default: softmax of them gives the combined distribution back, to fp16
rounding; topk or sampled to ship it smaller). One member with another codec is a transcode:
an fp16 cache compressed to topk without running the teacher again.
The rows go through the project's own writer (tmp, fsync, rename, checksummed manifest), so
the result verifies, inspects and trains like any cache.

The manifest's teacher is the ensemble: `teacher.name` "ensemble", `teacher.ensemble` the
ensemble fingerprint (members' teacher fingerprints, codecs, weights, rule), and
`fingerprints.teacher` the hash of that identity as for any cache; `source.ensemble` records
the members' paths and weights. train-student accepts such a cache with any Teacher entry (it is no
config's teacher) as long as transforms and classes match. A merged cache is not merged
again (its members are not known to line up with new ones), and an existing directory is
not written over without `overwrite`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from offline_ssld.cache.codecs import build_codec
from offline_ssld.cache.fingerprint import (
    dataset_fingerprint,
    order_fingerprint,
    teacher_fingerprint,
)
from offline_ssld.cache.reader import CacheReader
from offline_ssld.cache.writer import BackgroundWriter, open_cache
from offline_ssld.config.offline import CacheMember
from offline_ssld.data.lists import Sample, hash_images, read_list
from offline_ssld.data.views import ImageSource
from offline_ssld.dump import DumpPlan, shard_columns
from offline_ssld.ensemble import Ensemble
from offline_ssld.errors import CacheError, DataError

# Log-probabilities below this are stored as it: fp16 holds it, and e**-60 is 1e-26.
_MIN_LOG_PROB = -60.0


@dataclass
class MergeResult:
    out: Path
    images: int
    rows: int
    fingerprint: str


def _samples(
    ensemble: Ensemble, image_root: str | None, list_path: str | None
) -> tuple[ImageSource, list[bytes]]:
    """The images of the caches with their paths and labels: in the order of the config's
    training list when one is given (its images are read and hashed under its image_root),
    else in the first member's storage order, from the paths, labels and keys that member
    stored. A cache's recorded list and image_root are never opened: they name files
    outside it."""
    first = ensemble.members[0]
    if list_path is None or image_root is None:
        return _stored_samples(first.reader)
    samples = read_list(list_path, ensemble.num_classes)
    first.reader.index()
    wanted = first.reader.manifest.num_images
    kept: list[Sample] = []
    keys: list[bytes] = []
    seen: set[bytes] = set()
    for sample, key in zip(samples, hash_images(image_root, samples, list_path), strict=True):
        if isinstance(key, DataError) or key in seen or first.reader.lookup(key) is None:
            continue
        seen.add(key)
        kept.append(sample)
        keys.append(key)
    if len(keys) != wanted:
        raise CacheError(
            f"{list_path}: holds {len(keys)} of the {wanted} images of {first.path}; "
            "merge with the list the caches were dumped from (-c CONFIG)"
        )
    return ImageSource(Path(image_root).resolve(), Path(list_path).resolve(), kept), keys


def _stored_samples(reader: CacheReader) -> tuple[ImageSource, list[bytes]]:
    """Every image of `reader`'s cache in storage order, as it stored them (path, label,
    key); `line` is the image's position. Only the cache's own files are read."""
    samples: list[Sample] = []
    keys: list[bytes] = []
    views = reader.views
    for number in range(len(reader.manifest.shards)):
        cols = reader.load_shard(number)
        for row in range(0, len(cols["key"]), views):
            label = int(np.ravel(cols["label"][row])[0])
            samples.append(Sample(str(cols["path"][row]), label, len(samples) + 1))
            keys.append(cols["key"][row].tobytes())
    source = reader.manifest.source
    return ImageSource(source["image_root"], source["cls_label_path"], samples), keys


def merge_caches(
    members: Sequence[CacheMember],
    out: str | Path,
    rule: str = "mean_probs",
    temperature: float = 1.0,
    overwrite: bool = False,
    image_root: str | None = None,
    list_path: str | None = None,
    progress: bool = False,
    codec: str = "fp16",
    codec_settings: dict[str, Any] | None = None,
) -> MergeResult:
    """Combine `members` by `rule` and write the result to `out`, encoded by `codec`."""
    out = Path(out)
    for m in members:
        if Path(m.path).resolve() == out.resolve():
            raise CacheError(f"{out}: the output is one of the caches being merged")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CacheError(f"{out}: directory exists and is not empty; pass --overwrite")
    ensemble = Ensemble(members, rule, temperature)
    for member in ensemble.members:
        if member.is_merged:
            raise CacheError(
                f"{member.path}: is itself a merged ensemble; merge the original caches instead"
            )
    ensemble.index()
    source, keys = _samples(ensemble, image_root, list_path)
    base = ensemble.members[0].reader.manifest
    encoder = build_codec(codec, ensemble.num_classes, **(codec_settings or {}))
    # The teacher identity is path-free (the ensemble fingerprint), so fingerprints.teacher is
    # its canonical hash as for any cache (verify checks that); which caches and weights went
    # in, with their paths, is recorded in source.ensemble.
    teacher = {
        "name": "ensemble",
        "class_num": ensemble.num_classes,
        "weights_sha256": None,
        "ensemble": ensemble.fingerprint,
    }
    manifest = dataclasses.replace(
        base,
        codec=encoder.settings(),
        fingerprints={
            **base.fingerprints,
            "teacher": teacher_fingerprint(teacher),
            "dataset": dataset_fingerprint(keys),
            "order": order_fingerprint(keys),
        },
        teacher=teacher,
        num_images=len(keys),
        parts=[len(keys)],
        source={
            **base.source,
            "image_root": str(source.image_root),
            "cls_label_path": str(source.list_path),
            "teacher_weights": "",  # no single teacher: verify --teacher-check cannot re-run it
            "ensemble": ensemble.provenance(),
        },
        skipped=[],
        shards=[],
        complete=False,
    )
    plan = DumpPlan(source, keys, None, encoder, manifest)  # type: ignore[arg-type]
    manifest = open_cache(out, manifest, overwrite=overwrite, keys=keys)
    writer = BackgroundWriter(out, manifest)
    views = manifest.views
    bar = tqdm(total=len(keys) * views, unit="row", desc="merge", disable=not progress)
    try:
        for shard in range(manifest.num_shards):
            first, stop = manifest.shard_span(shard)
            items = np.arange(first * views, stop * views)
            params, logits = [], []
            for item in items:
                image, view = divmod(int(item), views)
                hit = ensemble.lookup(keys[image], view)
                assert hit is not None  # every key came from the first member's index
                params.append(hit[0])
                logits.append(np.maximum(np.log(np.maximum(hit[1], 1e-300)), _MIN_LOG_PROB))
                bar.update(1)
            columns = shard_columns(
                plan, shard, items, np.stack(params), np.stack(logits).astype(np.float32)
            )
            writer.submit(shard, columns, len(items) // views)
    finally:
        bar.close()
        manifest = writer.close()
    return MergeResult(out, len(keys), manifest.rows, ensemble.fingerprint)
