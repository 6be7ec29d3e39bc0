"""Where a training batch's target comes from: one class per way of computing it.

In the spirit of timm's task classes, each source builds the dataset it needs, moves it to
the next epoch and turns the student's logits for a batch into the loss; the training loop
calls only that interface, so it never asks which mode it runs:

- offline:    teacher probabilities decoded from the cache, on the replayed cached view;
- online:     the teacher runs on the same augmented batch (PaddleClas DistillationModel),
              on fresh views or on the cache's views replayed (Offline.online_views);
- supervised: ground-truth labels only (how the pipelines train their teachers).

- ensemble:   several teachers' caches of the same images combined row by row (ensemble.py).

A new source is one subclass registered in TARGET_SOURCES. `provenance()` says where the
targets came from; checkpoints and metrics.jsonl record it.
Every batch a dataset yields starts with the image tensor and ends with the labels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import paddle
import paddle.nn.functional as F

from offline_ssld.cache.codecs import codec_from_settings
from offline_ssld.cache.fingerprint import (
    cache_fingerprint,
    expected_identity,
    first_difference,
    transforms_fingerprint,
)
from offline_ssld.cache.reader import CacheReader
from offline_ssld.config import loading, specs
from offline_ssld.config.offline import OfflineSpec, offline_spec
from offline_ssld.config.specs import ModelSpec
from offline_ssld.data.listed import ListedImages
from offline_ssld.data.samplers import epoch_views
from offline_ssld.data.transforms import Pipeline
from offline_ssld.data.views import AugmentDataset, ImageSource, ReplayDataset
from offline_ssld.errors import CacheError, ConfigError
from offline_ssld.losses import DistillLoss, build_loss, check_pairing, gt_ce_loss
from offline_ssld.models import load_teacher


class TargetSource(ABC):
    """A dataset of training items and the loss of a batch of them."""

    mode: ClassVar[str]  # the `train(cfg, mode)` name of this source

    def __init__(
        self, cfg: dict, source: ImageSource, pipeline: Pipeline, student: ModelSpec, seed: int
    ) -> None:
        self.seed = seed
        self.dataset: paddle.io.Dataset = self._build(
            cfg, offline_spec(cfg), source, pipeline, student
        )

    @abstractmethod
    def _build(
        self,
        cfg: dict,
        offline: OfflineSpec,
        source: ImageSource,
        pipeline: Pipeline,
        student: ModelSpec,
    ) -> paddle.io.Dataset:
        """Check the config for this source and return the training dataset."""

    @abstractmethod
    def set_epoch(self, epoch: int) -> None:
        """Select the views (or augmentations) of `epoch`: a pure function of seed and epoch,
        so a resumed run sees the same items."""

    @abstractmethod
    def loss(self, logits: paddle.Tensor, batch: Sequence[paddle.Tensor]) -> paddle.Tensor:
        """The scalar loss of the student's `logits` for `batch`."""

    def provenance(self) -> dict:
        """Where the targets come from (caches, teachers, weights), for checkpoints and
        metrics.jsonl; empty when there is nothing to name beyond the config."""
        return {}


class SupervisedLabels(TargetSource):
    """Cross-entropy with the list labels: teachers and the student-only baseline."""

    mode = "supervised"

    def _build(
        self,
        cfg: dict,
        offline: OfflineSpec,
        source: ImageSource,
        pipeline: Pipeline,
        student: ModelSpec,
    ) -> paddle.io.Dataset:
        return AugmentDataset(source, pipeline, self.seed)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def loss(self, logits: paddle.Tensor, batch: Sequence[paddle.Tensor]) -> paddle.Tensor:
        return gt_ce_loss(logits, batch[-1])


class OnlineTeacher(TargetSource):
    """The teacher's softmax on the very batch the student sees (the online baseline).

    Offline.online_views says where that batch's views come from:
    - fresh (default): a new augmentation per image and epoch, drawn from Global.seed
      (AugmentDataset), as PaddleClas's online SSLD does;
    - replay: the views stored in Offline.cache_dir, one per image and epoch chosen exactly
      as offline training chooses it (ReplayDataset, epoch_views), so the student sees the
      offline run's pixels and only the teacher's output is live instead of stored (the
      cached outputs are read but unused). This isolates what storing the outputs changes
      from what a finite set of views changes."""

    mode = "online"

    def _build(
        self,
        cfg: dict,
        offline: OfflineSpec,
        source: ImageSource,
        pipeline: Pipeline,
        student: ModelSpec,
    ) -> paddle.io.Dataset:
        self.loss_fn = build_loss(loading.get(cfg, "Loss.Train"))
        self.reader: CacheReader | None = None
        dataset: paddle.io.Dataset
        if offline.online_views == "replay":
            # the targets are live: any codec goes with any loss, so no pairing check
            self.reader, listed = open_matching_cache(cfg, offline, pipeline, source)
            self.reader.verify_all()
            self.views = _check_views(offline.views, self.reader.views)
            dataset = ReplayDataset(source, pipeline, self.reader, listed)
        else:
            dataset = AugmentDataset(source, pipeline, self.seed)
        self.teacher = load_teacher(cfg)
        self.teacher.train() if offline.online_teacher_bn == "train" else self.teacher.eval()
        return dataset

    def set_epoch(self, epoch: int) -> None:
        if self.reader is None:
            self.dataset.set_epoch(epoch)
        else:
            self.dataset.set_epoch_views(
                epoch_views(self.seed, epoch, len(self.dataset), self.views)
            )

    def loss(self, logits: paddle.Tensor, batch: Sequence[paddle.Tensor]) -> paddle.Tensor:
        x, labels = batch[0], batch[-1]
        with paddle.no_grad():
            target = F.softmax(self.teacher(x).astype("float32"), axis=-1)
        return self.loss_fn(logits.astype("float32"), target, labels)[0]

    def provenance(self) -> dict:
        if self.reader is None:
            return {}
        return {
            "kind": "online_replay",
            "views_from": str(self.reader.cache_dir),
            "fingerprint": cache_fingerprint(self.reader.manifest),
        }


class OfflineCache(TargetSource):
    """Teacher probabilities decoded from the cache, for the cached view replayed exactly."""

    mode = "offline"

    def _build(
        self,
        cfg: dict,
        offline: OfflineSpec,
        source: ImageSource,
        pipeline: Pipeline,
        student: ModelSpec,
    ) -> paddle.io.Dataset:
        self.loss_fn = build_loss(loading.get(cfg, "Loss.Train"))
        reader, self.listed = open_verified_cache(
            cfg, offline, pipeline, source, student, self.loss_fn
        )
        self.views = _check_views(offline.views, reader.views)
        self.reader = reader
        return ReplayDataset(source, pipeline, reader, self.listed)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch_views(epoch_views(self.seed, epoch, len(self.dataset), self.views))

    def loss(self, logits: paddle.Tensor, batch: Sequence[paddle.Tensor]) -> paddle.Tensor:
        return self.loss_fn(logits.astype("float32"), batch[1], batch[-1])[0]

    def provenance(self) -> dict:
        teacher = self.reader.manifest.teacher
        return {
            "kind": "cache",
            "path": str(self.reader.cache_dir),
            "fingerprint": cache_fingerprint(self.reader.manifest),
            "teacher": self.reader.manifest.fingerprints["teacher"],
            "list": self.listed.provenance(),
            # a merged ensemble (offline-ssld merge): its members, weights and rule
            **(
                {"ensemble": self.reader.manifest.source["ensemble"]}
                if teacher.get("ensemble")
                else {}
            ),
        }


class EnsembleCache(OfflineCache):
    """Several teachers' caches of the same images (Offline.cache_dir as a list), combined
    per row by Offline.ensemble; each member's view is the same crop, replayed exactly."""

    mode = "ensemble"

    def _build(
        self,
        cfg: dict,
        offline: OfflineSpec,
        source: ImageSource,
        pipeline: Pipeline,
        student: ModelSpec,
    ) -> paddle.io.Dataset:
        from offline_ssld.ensemble import Ensemble, EnsembleReplayDataset

        if pipeline.mix is not None:  # each member drew its own partners
            raise ConfigError(
                f"{pipeline.mix.key}: an ensemble of caches cannot replay batch ops (each "
                "member mixed with its own partners); use one cache"
            )
        self.loss_fn = build_loss(loading.get(cfg, "Loss.Train"))
        ensemble = Ensemble(offline.caches, offline.ensemble, offline.ensemble_temperature)
        expected = {
            "fingerprints.transforms": transforms_fingerprint(pipeline),
            "teacher.class_num": student.class_num,
        }
        for member in ensemble.members:  # the teachers differ by design; transforms may not
            diff = first_difference(member.reader.manifest, expected)
            if diff is not None:
                raise CacheError(diff.message(member.path))
        # every list image in every member, each found once for all of them
        self.listed = ListedImages(source, [m.reader for m in ensemble.members])
        first = ensemble.members[0]
        diff = first_difference(first.reader.manifest, {"fingerprints.dataset": self.listed})
        if diff is not None:
            raise CacheError(diff.message(first.path))
        check_pairing(ensemble.codec_name, ensemble.target, self.loss_fn, "Loss.Train")
        self.views = _check_views(offline.views, ensemble.views)
        for member in ensemble.members:  # before the first batch; the loader workers inherit it
            member.reader.verify_all()
        self.ensemble = ensemble
        return EnsembleReplayDataset(source, pipeline, ensemble, self.listed)

    def provenance(self) -> dict:
        return {**self.ensemble.provenance(), "list": self.listed.provenance()}


def _check_views(views: int, stored: int) -> int:
    if views > stored:
        raise ConfigError(
            f"Offline.views: {views!r}; this cache holds {stored} views per image "
            "and train-student uses the first Offline.views of them"
        )
    return views


def offline_mode(offline: OfflineSpec) -> str:
    """The train() mode of train-student without --online: one cache, or an ensemble."""
    return "ensemble" if offline.is_ensemble else "offline"


def open_verified_cache(
    cfg: dict,
    offline: OfflineSpec,
    pipeline: Pipeline,
    source: ImageSource,
    student: ModelSpec,
    loss_fn: DistillLoss,
) -> tuple[CacheReader, ListedImages]:
    """Everything train-student does with a single cache before its first batch: open it
    (manifest checksums and stored specs), match it to the config and the list, check the
    codec x loss pair and verify every shard."""
    reader, listed = open_matching_cache(cfg, offline, pipeline, source)
    if reader.manifest.num_classes != student.class_num:
        raise CacheError(
            f"{reader.cache_dir}: cache has {reader.manifest.num_classes} classes, "
            f"{student.key}.class_num is {student.class_num}"
        )
    codec = codec_from_settings(reader.manifest.codec)
    check_pairing(codec.name, codec.target, loss_fn, "Loss.Train")
    reader.verify_all()  # the loader workers inherit the result
    return reader, listed


def open_matching_cache(
    cfg: dict, offline: OfflineSpec, pipeline: Pipeline, source: ImageSource
) -> tuple[CacheReader, ListedImages]:
    """The cache named by Offline.cache_dir and the rows of `source`'s images in it, refused
    if it belongs to another teacher or other transforms than this config (naming the
    differing field) or lacks a listed image (naming it and its list line). A merged
    ensemble cache (`offline-ssld merge`) is no config's Teacher: its transforms and classes
    must match."""
    cache_dir = offline.single_cache("a single-cache run")
    reader = CacheReader(cache_dir)
    expected: dict = expected_identity(specs.teacher_spec(cfg), pipeline)
    if reader.manifest.teacher.get("ensemble"):
        expected = {
            "teacher.class_num": expected["teacher.class_num"],
            "fingerprints.transforms": expected["fingerprints.transforms"],
        }
    listed = ListedImages(source, [reader])
    diff = first_difference(reader.manifest, {**expected, "fingerprints.dataset": listed})
    if diff is not None:
        raise CacheError(diff.message(cache_dir))
    return reader, listed


TARGET_SOURCES: dict[str, type[TargetSource]] = {
    cls.mode: cls for cls in (OfflineCache, EnsembleCache, OnlineTeacher, SupervisedLabels)
}
