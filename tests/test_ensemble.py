"""Teacher ensembles from caches: alignment refusals naming the field, targets equal to the
hand-computed weighted combination, a 2-member training run that records its members, and a
merged cache that trains to the live ensemble's targets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from offline_ssld.cache.reader import CacheReader
from offline_ssld.cache.writer import BackgroundWriter, open_cache
from offline_ssld.cli import main
from offline_ssld.config.loading import load_config
from offline_ssld.config.offline import CacheMember, cache_members
from offline_ssld.config.specs import data_spec
from offline_ssld.dump import run_dump, shard_columns
from offline_ssld.ensemble import Ensemble, combine
from offline_ssld.errors import CacheError, ConfigError
from offline_ssld.tools.audit import verify_cache
from offline_ssld.tools.merge import merge_caches
from offline_ssld.train import train
from tests.helpers import (
    TEACHER,
    fake_logits,
    fake_params,
    plan_cache,
    save_random_weights,
    shard_items,
)


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _fake_cache(config, cache_dir, shift: int, *overrides):
    """A cache of the project's images whose logits depend on `shift` (another teacher)."""
    plan = plan_cache(config, *overrides)
    manifest = open_cache(cache_dir, plan.manifest, keys=plan.keys)
    writer = BackgroundWriter(cache_dir, manifest)
    for shard in range(manifest.num_shards):
        items = shard_items(manifest, shard)
        logits = fake_logits(manifest, items + shift)
        columns = shard_columns(plan, shard, items, fake_params(manifest, items), logits)
        writer.submit(shard, columns, len(items) // manifest.views)
    writer.close()
    return plan


@pytest.fixture
def two_fake(project):
    path, tmp = project
    other = save_random_weights(TEACHER, tmp / "t2.safetensors", seed=3)
    plan_a = _fake_cache(path, tmp / "a", 0)
    _fake_cache(path, tmp / "b", 10_000, f"Arch.models.0.Teacher.pretrained={other}")
    return path, tmp, plan_a


def test_cache_dir_list_shapes():
    members = cache_members(["a", {"path": "b", "weight": 2}])
    assert members == [CacheMember("a", 1.0), CacheMember("b", 2.0)]
    with pytest.raises(ConfigError, match=r"Offline.cache_dir.1.weight"):
        cache_members(["a", {"path": "b", "weight": 0}])
    with pytest.raises(ConfigError, match=r"Offline.cache_dir.0.pth"):
        cache_members([{"pth": "a"}])


@pytest.mark.parametrize("rule,temperature", [("mean_probs", 1.0), ("mean_logits", 2.0)])
def test_targets_equal_hand_computed_weighted_combination(two_fake, rule, temperature):
    _, tmp, plan = two_fake
    ens = Ensemble(
        [CacheMember(str(tmp / "a"), 1.0), CacheMember(str(tmp / "b"), 3.0)], rule, temperature
    )
    m = plan.manifest
    for image, view in [(0, 0), (5, 2), (23, 1)]:
        item = np.array([image * m.views + view])
        pa = _softmax(fake_logits(m, item).astype(np.float16).astype(np.float64))[0]
        pb = _softmax(fake_logits(m, item + 10_000).astype(np.float16).astype(np.float64))[0]
        if rule == "mean_probs":
            want = 0.25 * pa + 0.75 * pb
        else:
            want = _softmax((0.25 * np.log(pa) + 0.75 * np.log(pb)) / temperature)
        params, got = ens.lookup(plan.keys[image], view)
        assert np.array_equal(params, fake_params(m, item)[0])
        np.testing.assert_allclose(got, want, atol=1e-6)
        np.testing.assert_allclose(
            combine(np.stack([pa, pb]), [0.25, 0.75], rule, temperature), want
        )


def test_fingerprint_is_canonical_and_covers_weights_and_rule(two_fake):
    _, tmp, _ = two_fake
    a, b = str(tmp / "a"), str(tmp / "b")

    def fp(members, rule="mean_probs", t=1.0):
        return Ensemble([CacheMember(p, w) for p, w in members], rule, t).fingerprint

    assert fp([(a, 1), (b, 2)]) == fp([(b, 4), (a, 2)])
    assert fp([(a, 1), (b, 2)]) != fp([(a, 1), (b, 1)])
    assert fp([(a, 1), (b, 1)]) != fp([(a, 1), (b, 1)], "mean_logits")
    assert fp([(a, 1), (b, 1)], "mean_logits", 1.0) != fp([(a, 1), (b, 1)], "mean_logits", 2.0)


@pytest.mark.parametrize(
    "override,field",
    [
        ("Offline.seed=1", "seed"),
        ("Offline.views=2", "views"),
        (
            "DataLoader.Train.dataset.transform_ops.1.RandCropImage.size=12",
            "fingerprints.transforms",
        ),
    ],
)
def test_refuses_members_that_do_not_line_up(project, override, field):
    path, tmp = project
    _fake_cache(path, tmp / "a", 0)
    _fake_cache(path, tmp / "c", 5, override)
    with pytest.raises(CacheError, match=rf"differ in {field}: .*/a has .*, .*/c has "):
        Ensemble([CacheMember(str(tmp / "a"), 1), CacheMember(str(tmp / "c"), 1)])


def _write_config(path, tmp, **offline):
    cfg = yaml.safe_load(path.read_text())
    cfg["Offline"].update(offline)
    cfg["Global"]["epochs"] = 1
    out = tmp / "ens.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


@pytest.fixture
def two_dumped(project):
    """Two real dumps (two teachers) of the project's images."""
    path, tmp = project
    other = save_random_weights(TEACHER, tmp / "t2.safetensors", seed=3)
    run_dump(load_config([str(path)], [f"Offline.cache_dir={tmp / 'a'}"]), progress=False)
    run_dump(
        load_config(
            [str(path)],
            [f"Offline.cache_dir={tmp / 'b'}", f"Arch.models.0.Teacher.pretrained={other}"],
        ),
        progress=False,
    )
    return path, tmp


def test_two_member_ensemble_trains_and_records_members(two_dumped):
    path, tmp = two_dumped
    members = [str(tmp / "a"), {"path": str(tmp / "b"), "weight": 2}]
    cfg = load_config([str(_write_config(path, tmp, cache_dir=members))])
    result = train(cfg, "ensemble", progress=False)
    assert np.isfinite(result.last_top1)
    line = json.loads((result.output_dir / "metrics.jsonl").read_text().splitlines()[0])
    ckpt = json.loads((result.output_dir / "latest.json").read_text())
    for record in (line["targets"], ckpt["targets"]):
        assert record["kind"] == "ensemble" and record["rule"] == "mean_probs"
        assert [m["path"] for m in record["members"]] == [str(tmp / "a"), str(tmp / "b")]
        assert [m["weight"] for m in record["members"]] == [1.0, 2.0]
        assert all(len(m["teacher"]) == 64 for m in record["members"])
    # A list cache_dir is refused by dump-teacher, naming the key.
    with pytest.raises(ConfigError, match="Offline.cache_dir: dump-teacher needs one cache"):
        run_dump(cfg, progress=False)


def test_merged_cache_trains_to_the_live_ensemble_targets(two_dumped):
    path, tmp = two_dumped
    members = [CacheMember(str(tmp / "a"), 1.0), CacheMember(str(tmp / "b"), 2.0)]
    merge_caches(members, tmp / "merged", "mean_logits", 2.0)
    # The same image list and views through both sources give the same pixels and targets.
    from offline_ssld.config.specs import student_spec
    from offline_ssld.targets import EnsembleCache, OfflineCache
    from offline_ssld.train import _source

    live_cfg = load_config(
        [
            str(
                _write_config(
                    path,
                    tmp,
                    cache_dir=[str(tmp / "a"), {"path": str(tmp / "b"), "weight": 2}],
                    ensemble="mean_logits",
                    ensemble_temperature=2.0,
                )
            )
        ]
    )
    merged_cfg = load_config(
        [str(path)], [f"Offline.cache_dir={tmp / 'merged'}", "Global.epochs=1"]
    )
    spec = student_spec(live_cfg)
    source, pipeline, _ = _source(live_cfg, "Train", spec.class_num)
    live = EnsembleCache(live_cfg, source, pipeline, spec, 0)
    merged = OfflineCache(merged_cfg, source, pipeline, spec, 0)
    for epoch in range(3):
        live.set_epoch(epoch)
        merged.set_epoch(epoch)
        for i in range(len(source.samples)):
            x1, t1, y1 = live.dataset[i]
            x2, t2, y2 = merged.dataset[i]
            assert np.array_equal(x1, x2) and y1 == y2
            np.testing.assert_allclose(t1, t2, atol=2e-3)
    record = merged.provenance()["ensemble"]
    assert record["members"][1]["weight"] == 2.0 and record["rule"] == "mean_logits"
    result = train(merged_cfg, "offline", progress=False)
    assert np.isfinite(result.last_top1)
    # Merging a merged cache, or into a non-empty directory without overwrite, is refused.
    with pytest.raises(CacheError, match="is itself a merged ensemble"):
        merge_caches([CacheMember(str(tmp / "merged"), 1.0), members[0]], tmp / "again")
    with pytest.raises(CacheError, match="not empty; pass --overwrite"):
        merge_caches(members, tmp / "merged")
    result = CliRunner().invoke(
        main,
        ["merge", str(tmp / "a"), str(tmp / "b"), "--weights", "1,2", "--out", str(tmp / "merged")],
    )
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = CliRunner().invoke(
        main,
        [*("merge", str(tmp / "a"), str(tmp / "b"), "--weights", "1,2"), "--quiet"]
        + ["--out", str(tmp / "merged"), "--overwrite"],
    )
    assert result.exit_code == 0, result.output
    assert verify_cache(tmp / "merged", 0, 0).ok  # checksums, rows and columns of a real cache


def test_ensemble_is_as_exact_as_its_least_exact_member(project):
    path, tmp = project
    _fake_cache(path, tmp / "a", 0)
    _fake_cache(path, tmp / "k", 1, "Offline.codec=topk", "Offline.topk=2")
    _fake_cache(path, tmp / "s", 2, "Offline.codec=sampled")
    a, k, s = (CacheMember(str(tmp / n), 1.0) for n in "aks")
    assert Ensemble([a, k]).target == "spread"  # combined densely: the rest is spread
    assert Ensemble([a, s]).target == "sampled"
    with pytest.raises(ConfigError, match="mean_logits takes logs"):
        Ensemble([a, s], "mean_logits")
    with pytest.raises(ConfigError, match="cannot mix topk and sampled"):
        Ensemble([a, k, s])
    # train-student applies the codec x loss rule to the ensemble: KL at T=4 needs exact.
    cfg = load_config(
        [str(_write_config(path, tmp, cache_dir=[str(tmp / "a"), str(tmp / "k")]))],
        ["Loss.Train.0={'DistillationKLDivLoss': {'weight': 1.0, 'temperature': 4.0}}"],
    )
    with pytest.raises(ConfigError, match="ensemble of fp16\\+topk"):
        train(cfg, "ensemble", progress=False)


def test_one_cache_transcoded_to_topk_keeps_its_views_and_top_classes(two_fake):
    """merge of one cache with --codec topk: the same view parameters, the same top-k
    classes and probabilities as the source's decode, and a verifiable cache."""
    _, tmp, plan = two_fake
    result = CliRunner().invoke(
        main,
        ["merge", str(tmp / "a"), "--codec", "topk", "--codec-option", "k=3", "--quiet"]
        + ["--out", str(tmp / "a_top3")],
    )
    assert result.exit_code == 0, result.output
    assert verify_cache(tmp / "a_top3", 0, 0).ok
    src, out = (
        Ensemble([CacheMember(str(tmp / "a"), 1.0)]),
        Ensemble([CacheMember(str(tmp / "a_top3"), 1.0)]),
    )
    classes = plan.manifest.num_classes
    assert out.members[0].reader.manifest.codec == {"name": "topk", "num_classes": classes, "k": 3}
    src.index()
    out.index()
    for key in plan.keys[:5]:
        for view in range(src.views):
            hit_src, hit_out = src.lookup(key, view), out.lookup(key, view)
            assert hit_src is not None and hit_out is not None
            assert np.array_equal(hit_src[0], hit_out[0])
            top = np.argsort(-hit_src[1])[:3]
            np.testing.assert_allclose(hit_out[1][top], hit_src[1][top], rtol=2e-3)
    bad = CliRunner().invoke(
        main, ["merge", str(tmp / "a"), "--codec", "topk", "--codec-option", "k", "--out", "x"]
    )
    assert bad.exit_code == 2 and "NAME=INTEGER" in bad.output


def test_merge_without_config_reads_nothing_outside_the_caches(two_fake):
    """Without -c, merge takes paths, labels and keys from the first member's shards: the list
    and image_root its manifest records name files outside the cache and are never opened
    (here they are gone), and the merged cache holds the same images."""
    config, tmp, plan = two_fake
    spec = data_spec(load_config([str(config)]), "Train")
    keys = sorted(plan.keys)  # a plan hashes its images when asked: before they are gone
    shutil.rmtree(spec.image_root)
    Path(spec.cls_label_path).unlink()
    result = merge_caches([CacheMember(str(tmp / "a"), 1.0)], tmp / "alone")
    assert result.images == plan.manifest.num_images
    merged = CacheReader(tmp / "alone")
    assert sorted(merged.stored_keys(len(merged.manifest.shards))) == keys
    assert verify_cache(tmp / "alone", 0, 0).ok
