"""Batch ops (MixupOperator, CutmixOperator, OpSampler; issue 11 item 3): the mix each view
stores, replayed bit for bit by train-student from both images' views, PaddleClas's mixing
arithmetic, determinism and resume, training on a subset of the cache, and the refusals."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import paddle
import pytest
import yaml

from benchmarks.paddleclas_configs import shipped, survey_one
from offline_ssld.cache.codecs import FP16Codec
from offline_ssld.cache.reader import CacheReader
from offline_ssld.config.loading import load_config
from offline_ssld.config.paddleclas import check_supported, overlay_summary
from offline_ssld.config.specs import ModelSpec, data_spec
from offline_ssld.data import batchops
from offline_ssld.data.batchops import CUTMIX, LAMBDA_STEPS, MIXUP, cutmix_box
from offline_ssld.data.lists import probe_key, read_list
from offline_ssld.data.transforms import Pipeline, build_ops
from offline_ssld.data.views import DumpDataset, ImageSource, ReplayDataset
from offline_ssld.errors import ConfigError, DataError
from offline_ssld.models import build_model, load_weights
from offline_ssld.train import train
from tests.helpers import CLASSES, TEACHER, open_for_training
from tests.test_dump import all_shards, assert_same_rows, dump

SAMPLER = {"OpSampler": {MIXUP: {"alpha": 0.8, "prob": 0.4}, CUTMIX: {"alpha": 1.0, "prob": 0.4}}}


# ------------------------------------------------------- PaddleClas's code, restated
# ppcls/data/preprocess/batch_ops/batch_operators.py (PaddleClas 2.6): the wheel does not
# ship ppcls.data, so its arithmetic is restated here with the random draws passed in.


def paddleclas_mixup(imgs: np.ndarray, idx: np.ndarray, lam: float) -> np.ndarray:
    return lam * imgs + (1 - lam) * imgs[idx]


def paddleclas_rand_bbox(size: tuple[int, ...], lam: float, cx: int, cy: int) -> tuple:
    w = size[2]
    h = size[3]
    cut_rat = np.sqrt(1.0 - lam)
    cut_w = int(w * cut_rat)
    cut_h = int(h * cut_rat)
    bbx1 = np.clip(cx - cut_w // 2, 0, w)
    bby1 = np.clip(cy - cut_h // 2, 0, h)
    bbx2 = np.clip(cx + cut_w // 2, 0, w)
    bby2 = np.clip(cy + cut_h // 2, 0, h)
    return bbx1, bby1, bbx2, bby2


def paddleclas_cutmix(imgs: np.ndarray, idx: np.ndarray, box: tuple) -> np.ndarray:
    bbx1, bby1, bbx2, bby2 = box
    imgs = imgs.copy()
    imgs[:, :, bbx1:bbx2, bby1:bby2] = imgs[idx, :, bbx1:bbx2, bby1:bby2]
    return imgs


class Replayed:
    """A generator stand-in giving PaddleClas's randint draws (cx, then cy) in order."""

    def __init__(self, *values: int) -> None:
        self.values = list(values)

    def integers(self, high: int) -> int:
        value = self.values.pop(0)
        assert 0 <= value < high
        return value


def test_mixing_equals_paddleclas_operators_given_the_same_draws():
    rng = np.random.default_rng(0)
    for shape in [(6, 3, 16, 16), (5, 3, 17, 23), (4, 4, 9, 31)]:
        imgs = rng.normal(size=shape).astype(np.float32)
        idx = rng.permutation(shape[0])
        lam = round(float(rng.beta(0.4, 0.4)) * LAMBDA_STEPS) / LAMBDA_STEPS  # as stored
        mixed = paddleclas_mixup(imgs, idx, lam)
        ours = np.stack([batchops.mixup(imgs[i], imgs[idx[i]], lam) for i in range(shape[0])])
        assert ours.dtype == mixed.dtype and np.array_equal(ours, mixed)
        for _ in range(50):
            lam = float(rng.beta(0.2, 0.2))
            cx, cy = int(rng.integers(shape[2])), int(rng.integers(shape[3]))
            box = paddleclas_rand_bbox(shape, lam, cx, cy)
            top, left, bottom, right = cutmix_box(shape[2], shape[3], lam, Replayed(cx, cy))
            assert (top, left, bottom, right) == tuple(int(v) for v in box)
            mixed = paddleclas_cutmix(imgs, idx, box)
            ours = np.stack(
                [batchops.cutmix(imgs[i], imgs[idx[i]], (top, left, bottom, right)) for i in idx]
            )
            assert np.array_equal(ours, mixed[idx])


# ------------------------------------------------------------------- the project


def _with_batch_ops(config: Path, tmp: Path, batch_ops: dict, name: str = "mixed.yaml") -> Path:
    cfg = yaml.safe_load(config.read_text())
    cfg["DataLoader"]["Train"]["dataset"]["batch_transform_ops"] = [batch_ops]
    cfg["Offline"]["cache_dir"] = str(tmp / "mixcache")
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def mixed(project):
    """The project dumped with an OpSampler of Mixup and Cutmix (and 20% no mix)."""
    config, tmp = project
    path = _with_batch_ops(config, tmp, SAMPLER)
    result = dump(path)
    assert result.exit_code == 0, result.output
    return path, tmp, tmp / "mixcache"


def _dump_dataset(cfg: dict, reader: CacheReader, items: list[int]) -> DumpDataset:
    data = data_spec(cfg, "Train")
    samples = read_list(data.cls_label_path, CLASSES)
    source = ImageSource(data.image_root, data.cls_label_path, samples)
    probes = [probe_key(source.read(i)) for i in range(len(samples))]
    pipeline = Pipeline(build_ops(data.transform_ops, "ops"))
    return DumpDataset(source, probes, pipeline, reader.manifest.seed, reader.views, items)


def test_mixed_views_replay_bit_for_bit_and_the_logits_are_the_teachers(mixed):
    config, tmp, cache = mixed
    cfg = load_config([str(config)], [])
    reader, listed = open_for_training(cfg)
    m = reader.manifest
    assert m.param_names[-7:] == [
        f"OpSampler.{n}" for n in ("op", "partner", "lam", "top", "left", "bottom", "right")
    ]
    shards = all_shards(cache)
    rows = np.concatenate([c["params"] for c in shards])
    assert set(rows[:, m.param_names.index("OpSampler.op")].tolist()) == {0, 1, 2}
    data = data_spec(cfg, "Train")
    source = ImageSource(data.image_root, data.cls_label_path, read_list(data.cls_label_path))
    pipeline = Pipeline(build_ops(data.transform_ops, "ops"))
    replay = ReplayDataset(source, pipeline, reader, listed)
    fresh = _dump_dataset(cfg, reader, list(range(m.num_images * m.views)))
    # the list is the cache in storage order: list index == image number
    assert [list(reader.locate(i)) for i in range(m.num_images)] == listed.rows[0].tolist()
    replayed = np.zeros((m.num_images * m.views, *fresh[0][0].shape), np.float32)
    for view in range(m.views):
        replay.set_epoch_views(np.full(m.num_images, view))
        for image in range(m.num_images):
            x = replay.get_batch([image])[0][0]
            drawn_x, drawn_params, _, key = fresh[image * m.views + view]
            assert key.tobytes() == reader.key_at(*reader.locate(image))  # hashed on read
            stored, _ = reader.read_view(*reader.locate(image), view)
            assert np.array_equal(drawn_params, stored)
            assert x.dtype == drawn_x.dtype and np.array_equal(x, drawn_x)
            replayed[image * m.views + view] = x
    teacher = build_model(ModelSpec(TEACHER, CLASSES, None, "Arch"))
    load_weights(teacher, cfg["Arch"]["models"][0]["Teacher"]["pretrained"], "w")
    teacher.eval()
    batch, start = cfg["Offline"]["batch_size"], 0
    for cols in shards:  # the dump's batches: a batch never crosses a shard
        stop = start + len(cols["key"])
        with paddle.no_grad():
            logits = np.concatenate(
                [
                    teacher(paddle.to_tensor(replayed[i : min(i + batch, stop)])).numpy()
                    for i in range(start, stop, batch)
                ]
            )
        assert FP16Codec(CLASSES).compare({"logits": cols["logits"]}, logits) <= 1e-4
        start = stop


def test_dump_is_reproducible_and_each_shard_is_the_same_alone(mixed, project):
    config, tmp, cache = mixed
    again = tmp / "again"
    assert dump(config, f"Offline.cache_dir={again}").exit_code == 0
    assert_same_rows(cache, again)
    # A resume dumps the missing shards alone: a shard's views do not depend on the others.
    cfg = load_config([str(config)], [])
    reader = CacheReader(cache)
    m = reader.manifest
    items = list(range(m.num_images * m.views))
    whole = _dump_dataset(cfg, reader, items)
    tail = items[len(items) // 2 :]
    alone = _dump_dataset(cfg, reader, tail)
    for position, item in enumerate(tail):
        x, params, _, _ = alone[position]
        ref_x, ref_params, _, _ = whole[item]
        assert np.array_equal(params, ref_params) and np.array_equal(x, ref_x)


def test_unmixed_views_do_not_change_with_batch_ops(mixed, project):
    config, tmp, cache = mixed
    plain, _ = project
    assert dump(plain).exit_code == 0
    mixed_rows = np.concatenate([c["params"] for c in all_shards(cache)])
    plain_rows = np.concatenate([c["params"] for c in all_shards(tmp / "cache")])
    assert np.array_equal(mixed_rows[:, : plain_rows.shape[1]], plain_rows)


def _partner_outside(cache: Path, lines: list[str], keep: int) -> tuple[list[str], str]:
    """The first `keep` list lines and the path of a partner of theirs outside them."""
    reader = CacheReader(cache)
    m = reader.manifest
    ops = m.param_names.index("OpSampler.op")
    at = m.param_names.index("OpSampler.partner")
    for image in range(keep):
        for view in range(m.views):
            params, _ = reader.read_view(*reader.locate(image), view)
            if params[ops] and params[at] >= keep:
                return lines[:keep], reader.path_at(*reader.locate(int(params[at])))
    raise AssertionError("no partner outside the subset")


def test_training_on_a_subset_reads_partners_from_the_cache(mixed):
    config, tmp, cache = mixed
    lines = (tmp / "train_list.txt").read_text().splitlines()
    subset, partner = _partner_outside(cache, lines, 8)
    assert not any(line.startswith(partner + " ") for line in subset)
    listing = tmp / "subset.txt"
    listing.write_text("\n".join(subset) + "\n")
    cfg = load_config([str(config)], [f"DataLoader.Train.dataset.cls_label_path={listing}"])
    cfg["Global"]["epochs"] = 1
    result = train(cfg, "offline", progress=False)
    assert result.epochs == 1


def test_a_partner_missing_under_image_root_is_named(mixed):
    config, tmp, cache = mixed
    lines = (tmp / "train_list.txt").read_text().splitlines()
    subset, partner = _partner_outside(cache, lines, 8)
    listing = tmp / "subset.txt"
    listing.write_text("\n".join(subset) + "\n")
    (tmp / "images" / partner).unlink()
    cfg = load_config([str(config)], [f"DataLoader.Train.dataset.cls_label_path={listing}"])
    cfg["Global"]["epochs"] = 1
    with pytest.raises(DataError) as info:
        train(cfg, "offline", progress=False)
    message = str(info.value)
    assert message.startswith(f"partner {partner} of {listing}:") and "\n" not in message
    assert "cannot read" in message


@pytest.mark.parametrize(
    "batch_ops, loss, key",
    [
        ({"FmixOperator": {}}, None, "DataLoader.Train.dataset.batch_transform_ops.0"),
        (
            {"MixupOperator": {"alpha": 0}},
            None,
            "DataLoader.Train.dataset.batch_transform_ops.0.MixupOperator.alpha",
        ),
        (
            {"OpSampler": {"FmixOperator": {"prob": 0.5}}},
            None,
            "DataLoader.Train.dataset.batch_transform_ops.0.OpSampler.FmixOperator",
        ),
        (
            {"OpSampler": {MIXUP: {"prob": 0.8}, CUTMIX: {"prob": 0.8}}},
            None,
            "DataLoader.Train.dataset.batch_transform_ops.0.OpSampler",
        ),
        (
            {"CutmixOperator": {"alpha": 0.2}},
            [{"DistillationGTCELoss": {"weight": 1.0}}, {"DistillationDMLLoss": {"weight": 1.0}}],
            "Loss.Train.0.DistillationGTCELoss",
        ),
        (
            {"MixupOperator": {"alpha": 0.2}},
            [{"DistillationDMLLoss": {"weight": 1.0}}, {"GTFusion": {"alpha": 0.5}}],
            "Loss.Train.1.GTFusion",
        ),
        (  # SKD reads the class label where a row has one (the registry says so)
            {"MixupOperator": {"alpha": 0.2}},
            [{"DistillationDMLLoss": {"weight": 1.0}}, {"DistillationSKDLoss": {}}],
            "Loss.Train.1.DistillationSKDLoss",
        ),
    ],
)
def test_refusals_name_their_key(project, batch_ops, loss, key):
    config, tmp = project
    cfg = load_config([str(_with_batch_ops(config, tmp, batch_ops))], [])
    if loss is not None:
        cfg["Loss"]["Train"] = loss
    with pytest.raises(ConfigError) as info:
        check_supported(cfg)
    assert str(info.value).startswith(key + ":"), str(info.value)
    assert "\n" not in str(info.value)


def test_batch_ops_outside_a_single_cache_are_refused(project):
    config, tmp = project
    cfg = load_config([str(_with_batch_ops(config, tmp, SAMPLER))], [])
    with pytest.raises(ConfigError, match=r"transform_ops\.5\.OpSampler: batch ops are replayed"):
        train(cfg, "online", progress=False)
    cfg["Offline"]["cache_dir"] = [str(tmp / "a"), str(tmp / "b")]
    with pytest.raises(ConfigError, match=r"OpSampler: an ensemble of caches cannot replay"):
        train(cfg, "ensemble", progress=False)
    cfg["DataLoader"]["Eval"]["dataset"]["batch_transform_ops"] = [SAMPLER]
    with pytest.raises(ConfigError, match=r"^DataLoader\.Eval\.dataset\.batch_transform_ops:"):
        check_supported(cfg)


@pytest.mark.slow
def test_a_shipped_config_with_batch_ops_runs(tmp_path):
    """Our own config: PaddleClas's mv3 distillation config with its MobileNetV3 recipe's
    OpSampler added (no shipped distillation config uses batch ops)."""
    raw = copy.deepcopy(
        shipped()["configs"][
            "ppcls/configs/ImageNet/Distillation/mv3_large_x1_0_distill_mv3_small_x1_0.yaml"
        ]
    )
    raw["DataLoader"]["Train"]["dataset"]["batch_transform_ops"] = [SAMPLER]
    got = survey_one(raw, tmp_path)
    assert {k: got[k] for k in ("status", "reason", "message")} == {
        "status": "runs",
        "reason": "",
        "message": "",
    }


def test_overlay_lists_the_batch_op_as_the_last_transform(project):
    config, tmp = project
    cfg = load_config([str(_with_batch_ops(config, tmp, SAMPLER))], [])
    (line,) = [t for t in overlay_summary(cfg) if t.startswith("train transforms:")]
    assert "-> ToCHWImage -> OpSampler(MixupOperator=" in line
    assert "appended" not in line  # the given list already ends in CHW
