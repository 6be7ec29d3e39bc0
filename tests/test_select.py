"""offline-ssld select: the top-k-per-class rule against a brute force over the decoded
cache, for every codec; planted exact and near copies of an exclude list are refused and
named, no distinct pool image is (on a Fashion-MNIST sample, few are); bad input is one
line naming the file and line."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

from offline_ssld.cache.reader import CacheReader
from offline_ssld.cache.writer import BackgroundWriter, open_cache
from offline_ssld.cli import main
from offline_ssld.data.lists import Sample
from offline_ssld.dump import shard_columns
from offline_ssld.io import content_key
from offline_ssld.near_duplicates import crop_variants, decode_gray, fingerprint
from offline_ssld.tools.select import Excluded, find_duplicates, with_resampled_variants
from pipelines import fashion_mnist
from tests.helpers import (
    CLASSES,
    encode,
    fake_logits,
    fake_params,
    near_copies,
    plan_cache,
    scene,
    shard_items,
)

K = 2
DISTINCT = 14  # pool scenes unrelated to the excluded ones
CODECS = {
    "fp16": [],
    "topk": ["Offline.codec=topk", "Offline.topk=2"],
    "sampled": ["Offline.codec=sampled", "Offline.samples=12"],
}


def make_pool(tmp):
    """Pool and eval images: the pool holds DISTINCT scenes, an exact copy of eval image 0
    and near copies of eval images 1-3. Returns (pool list, eval list, {pool path: (kind,
    eval path)} of the planted copies)."""
    rng = np.random.default_rng(3)
    root = tmp / "images"
    (root / "pool").mkdir(parents=True)
    (root / "val").mkdir()
    evals = [scene(rng) for _ in range(4)]
    for i, img in enumerate(evals):
        (root / f"val/eval{i}.png").write_bytes(encode(img))
    planted = {"pool/copy_exact.png": ("exact", "val/eval0.png")}
    (root / "pool/copy_exact.png").write_bytes((root / "val/eval0.png").read_bytes())
    for i, name in ((1, "jpeg_q60"), (2, "resized_0.6"), (3, "crop5_corner"), (1, "crop4_centre")):
        path = f"pool/copy_{name}_{i}.jpg"
        (root / path).write_bytes(near_copies(evals[i])[name])
        planted[path] = ("near", f"val/eval{i}.png")
    distinct = []
    for i in range(DISTINCT):
        distinct.append(f"pool/scene{i:02d}.png")
        (root / distinct[-1]).write_bytes(encode(scene(rng)))
    pool = tmp / "pool_list.txt"
    paths = sorted([*distinct, *planted])
    pool.write_text("".join(f"{p}\n" for p in paths))  # unlabeled, as a pool is
    val = tmp / "eval_list.txt"
    val.write_text("".join(f"val/eval{i}.png {i % CLASSES}\n" for i in range(4)))
    return pool, val, planted


def build_cache(config, cache_dir, overrides, planted_rows):
    """Cache of the pool with fake logits; the planted copies get a large logit on one
    class each, so without the exclusion they would head their class's top-k."""
    plan = plan_cache(config, *overrides)
    cache = open_cache(cache_dir, plan.manifest, keys=plan.keys)
    writer = BackgroundWriter(cache_dir, cache)
    for shard in range(cache.num_shards):
        items = shard_items(cache, shard)
        logits = fake_logits(cache, items)
        for row, item in enumerate(items):
            image = int(item) // cache.views
            if image in planted_rows:
                logits[row, image % CLASSES] += 20.0
        columns = shard_columns(plan, shard, items, fake_params(cache, items), logits)
        writer.submit(shard, columns, len(items) // cache.views)
    writer.close()


def brute_force(cache_dir):
    """{path: (class, score)} from every decoded row of the cache, read shard by shard."""
    reader = CacheReader(cache_dir)
    names = [c.name for c in reader.codec.columns()]
    rows: dict[str, list[np.ndarray]] = {}
    for n in range(len(reader.manifest.shards)):
        shard = reader.load_shard(n)
        probs = reader.codec.decode({name: shard[name] for name in names})
        for path, p in zip(shard["path"], probs, strict=True):
            rows.setdefault(str(path), []).append(p.astype(np.float64))
    out = {}
    for path, views in rows.items():
        assert len(views) == reader.views
        mean = np.mean(views, axis=0)
        out[path] = (int(mean.argmax()), float(mean.max()))
    return out


@pytest.fixture
def pool_project(project):
    config, tmp = project
    pool, val, planted = make_pool(tmp)
    overrides = [
        f"DataLoader.Train.dataset.image_root={tmp / 'images'}",
        f"DataLoader.Train.dataset.cls_label_path={pool}",
    ]
    return config, tmp, pool, val, planted, overrides


def invoke(config, overrides, *args):
    cmd = ["select", "-c", str(config)]
    for o in overrides:
        cmd += ["-o", o]
    return CliRunner().invoke(main, [*cmd, *map(str, args)])


@pytest.mark.parametrize("codec", list(CODECS))
def test_top_k_per_class_excludes_planted_copies(pool_project, codec):
    config, tmp, pool, val, planted, overrides = pool_project
    overrides = overrides + CODECS[codec]
    paths = pool.read_text().split()
    build_cache(config, tmp / "cache", overrides, {paths.index(p) for p in planted})
    out = tmp / "selected.txt"
    result = invoke(config, overrides, "--per-class", K, "--exclude", val, "--out", out)
    assert result.exit_code == 0, result.output

    summary = json.loads(out.with_suffix(".summary.json").read_text())
    refused = {d["pool_path"]: (d["kind"], d["excluded_path"]) for d in summary["duplicates"]}
    assert refused == planted  # every planted copy, matched to its original; nothing else
    near = [d for d in summary["duplicates"] if d["kind"] == "near"]
    assert all(0 <= d["score"] <= summary["match_score"] for d in near)
    truth = brute_force(tmp / "cache")
    assert set(truth) == set(paths)
    expected = []
    for c in range(CLASSES):
        ranked = sorted(
            (p for p, (cls, _) in truth.items() if cls == c and p not in planted),
            key=lambda p: (-truth[p][1], paths.index(p)),
        )
        expected += ranked[:K]
    lines = out.read_text().splitlines()
    assert lines == [f"{p} 0" for p in expected]
    # The planted copies would have led their classes: the exclusion changed the result.
    for p in planted:
        cls, score = truth[p]
        assert score > min(truth[q][1] for q in expected if truth[q][0] == cls)
    counts = {row["class"]: row["selected"] for row in summary["classes"]}
    assert sum(counts.values()) == len(expected) == summary["selected"]
    assert summary["short_of_k"] == [c for c in range(CLASSES) if counts[c] < K]
    assert out.with_suffix(".scores.png").stat().st_size > 0
    text = out.with_suffix(".summary.md").read_text()
    assert "pool/copy_exact.png" in text and "val/eval3.png" in text


def test_outputs_kept_and_bad_input_named(pool_project):
    config, tmp, pool, val, planted, overrides = pool_project
    build_cache(config, tmp / "cache", overrides, set())
    out = tmp / "selected.txt"
    args = ["--per-class", 1, "--out", out, "--labels", "teacher"]
    first = invoke(config, overrides, *args)
    assert first.exit_code == 0, first.output
    classes = brute_force(tmp / "cache")
    for line in out.read_text().splitlines():  # the teacher's class as the label
        path, label = line.split()
        assert int(label) == classes[path][0]
    before = out.read_text()
    again = invoke(config, overrides, *args)
    assert again.exit_code == 2 and "already exists" in again.output
    assert str(out) in again.output and out.read_text() == before
    assert invoke(config, overrides, *args, "--overwrite").exit_code == 0

    missing = invoke(config, overrides, *args, "--overwrite", "--exclude", tmp / "nope.txt")
    assert missing.exit_code == 2
    assert missing.output.strip() == f"error: {tmp / 'nope.txt'}: cannot read list file " + (
        "(No such file or directory)"
    )
    bad = tmp / "bad_list.txt"
    bad.write_text("val/eval0.png 0\nval/eval1.png 1 extra\n")
    malformed = invoke(config, overrides, *args, "--overwrite", "--exclude", bad)
    assert malformed.exit_code == 2 and f"{bad}:2:" in malformed.output
    assert len(malformed.output.strip().splitlines()) == 1
    gone = tmp / "gone_list.txt"
    gone.write_text("val/eval0.png 0\nval/missing.png 1\n")
    unreadable = invoke(config, overrides, *args, "--overwrite", "--exclude", gone)
    assert unreadable.exit_code == 2 and f"{gone}:2:" in unreadable.output


def test_select_help_has_example():
    result = CliRunner().invoke(main, ["select", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "offline-ssld select" in result.output


FASHION = fashion_mnist.IDX_DIR / "t10k-images-idx3-ubyte.gz"


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is absent")
def test_find_duplicates_on_fashion_mnist():
    """Real 28x28 images: every planted copy (each kind of near_copies, and an exact one)
    refused and matched to its original; of 150 distinct train images at most 3% refused
    (near_duplicates.MATCH_SCORE states the measured rate)."""
    test = fashion_mnist.read_idx(FASHION)
    train = fashion_mnist.read_idx(fashion_mnist.IDX_DIR / "train-images-idx3-ubyte.gz")
    originals = [encode(img) for img in test[:40]]
    excluded = [
        Excluded("eval.txt", Sample(f"eval{i}.png", 0, i + 1), content_key(data), *prints(data))
        for i, data in enumerate(originals)
    ]
    pool_bytes = [encode(img) for img in train[:150]]
    planted = {len(pool_bytes): 0}
    pool_bytes.append(originals[0])
    for source, kind in enumerate(sorted(near_copies(test[0])), start=1):
        planted[len(pool_bytes)] = source  # one kind of copy per excluded image 1, 2, ...
        pool_bytes.append(near_copies(test[source])[kind])
    pool = [Sample(f"pool{i}.png", -1, i + 1) for i in range(len(pool_bytes))]
    fingerprints = [fingerprint(decode_gray(data)) for data in pool_bytes]
    sizes = Counter(decode_gray(data).shape for data in pool_bytes)
    excluded = with_resampled_variants(excluded, sizes, lambda e: decode_gray(originals[e]))
    found = find_duplicates(
        pool,
        [content_key(data) for data in pool_bytes],
        np.array([f[0] for f in fingerprints], dtype=np.uint64),
        np.stack([f[1] for f in fingerprints]),
        excluded,
        lambda p: decode_gray(pool_bytes[p]),
        lambda e: decode_gray(originals[e]),
    )
    matched = {p: d.excluded_path for p, d in found.items() if p in planted}
    assert matched == {p: f"eval{i}.png" for p, i in planted.items()}
    assert found[150].kind == "exact" and found[150].score == 0.0
    false = [p for p in found if p not in planted]
    assert len(false) <= 0.03 * 150, [(found[p].pool_path, found[p].excluded_path) for p in false]


def prints(data: bytes) -> tuple[list[int], np.ndarray, tuple[int, int]]:
    """An excluded image's crop variants, coarse thumbnail and size, as read_excluded keeps
    them."""
    gray = decode_gray(data)
    return crop_variants(gray), fingerprint(gray)[1], (gray.shape[0], gray.shape[1])
