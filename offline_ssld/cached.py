"""Config plus list -> the cache's rows: the config's training list read against its cache (or
ensemble of caches), image by image, refused when a cache holds other views than this config's
pipeline makes. Written once for every tool that reads a cache by image (report, select)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from offline_ssld.cache.fingerprint import first_difference, transforms_fingerprint
from offline_ssld.config import specs
from offline_ssld.config.offline import offline_spec
from offline_ssld.data.lists import Sample, hash_images, read_list
from offline_ssld.data.transforms import Pipeline, build_ops
from offline_ssld.ensemble import Ensemble
from offline_ssld.errors import CacheError, DataError


@dataclass
class CachedImages:
    """The config's training list against its cache (or ensemble), read image by image, so
    a reader of a large pool keeps only what it reduces each image to."""

    ensemble: Ensemble
    spec: specs.DataSpec
    pipeline: Pipeline
    samples: list[Sample]  # the whole list
    keys: list[bytes | DataError]  # content key of each sample, or why it could not be read

    @property
    def describe(self) -> str:
        """What the targets are: one cache, or the ensemble with its weights."""
        members = self.ensemble.members
        if len(members) == 1:
            return f"cache `{members[0].path}`"
        parts = ", ".join(f"`{m.path}` (weight {m.given_weight:g})" for m in members)
        return f"ensemble ({self.ensemble.rule}) of {parts}"

    def __iter__(self) -> Iterator[tuple[Sample, bytes, np.ndarray, np.ndarray]]:
        """(sample, key, view params (V, P), probabilities (V, C) float64) of every listed
        image the cache holds, in list order: every stored view, decoded by its codec (and
        combined over an ensemble's members)."""
        views = self.ensemble.views
        for sample, key in zip(self.samples, self.keys, strict=True):
            if isinstance(key, DataError):
                continue
            first = self.ensemble.lookup(key, 0)
            if first is None:
                continue
            found = [first] + [self.ensemble.lookup(key, v) for v in range(1, views)]
            yield (
                sample,
                key,
                np.stack([f[0] for f in found if f is not None]),
                np.stack([f[1] for f in found if f is not None]),
            )


def open_cached(cfg: dict) -> CachedImages:
    """The config's training list and its cache(s), refused when a cache was dumped with
    other transforms (its views would not be this config's); every image is hashed."""
    offline = offline_spec(cfg)
    ensemble = Ensemble(offline.caches, offline.ensemble, offline.ensemble_temperature)
    spec = specs.data_spec(cfg, "Train")
    pipeline = Pipeline(build_ops(spec.transform_ops, f"{spec.key}.transform_ops"))
    expected = {"fingerprints.transforms": transforms_fingerprint(pipeline)}
    for member in ensemble.members:  # the student replays these views with this pipeline
        diff = first_difference(member.reader.manifest, expected)
        if diff is not None:
            raise CacheError(f"{member.path}: cache holds {diff}; use its own config")
    samples = read_list(spec.cls_label_path, ensemble.num_classes, spec.delimiter)
    keys = hash_images(spec.image_root, samples, spec.cls_label_path)
    return CachedImages(ensemble, spec, pipeline, samples, keys)
