"""Synthetic caches written through the dump's own column builder, codecs and shard writer.

Only the teacher is replaced: logits are random normals (scale 3), keys random, view params
uniform over the crop boxes of a 500x375 image plus a flip bit (the ranges the real
RandCropImage/RandFlipImage declare), paths ImageNet-like
(`train/n01440764/n01440764_17.JPEG`, one WordNet-style folder per class) in class order,
as ImageNet's train_list.txt is. Shards and manifest are written by
`dump.shard_columns` and `cache.writer.BackgroundWriter`, exactly as dump-teacher writes them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offline_ssld.data.views import ImageSource

TRANSFORM_OPS = [
    {"DecodeImage": {"to_rgb": True, "channel_first": False}},
    {"RandCropImage": {"size": 224}},
    {"RandFlipImage": {"flip_code": 1}},
    {"NormalizeImage": {"scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406],
                        "std": [0.229, 0.224, 0.225], "order": ""}},
]  # fmt: skip
IMAGE_W, IMAGE_H = 500, 375


@dataclass
class SyntheticCache:
    cache_dir: Path
    keys: np.ndarray  # (images, 16) uint8, in cache order
    labels: np.ndarray
    seconds: float  # building: synthesizing + encoding + writing (what a dump adds to inference)
    disk_bytes: int  # every file of the cache directory (shards and manifest)


def _paths(labels: np.ndarray) -> list[str]:
    return [f"train/n{1440764 + c:08d}/n{1440764 + c:08d}_{i}.JPEG" for i, c in enumerate(labels)]


def _params(rng: np.random.Generator, rows: int) -> np.ndarray:
    w = rng.integers(8, IMAGE_W + 1, rows)
    h = rng.integers(8, IMAGE_H + 1, rows)
    x = (rng.random(rows) * (IMAGE_W - w + 1)).astype(np.int64)
    y = (rng.random(rows) * (IMAGE_H - h + 1)).astype(np.int64)
    flip = rng.integers(0, 2, rows)
    return np.stack([x, y, w, h, flip], axis=1)


@dataclass
class ImageSet:
    """Real images for a synthetic cache: their list, content keys and training transforms."""

    source: ImageSource
    keys: list[bytes]
    transform_ops: list


def _drawn(images: ImageSet, pipeline, seed: int, items: np.ndarray, views: int) -> np.ndarray:
    """Each view's params as dump-teacher draws them: seeded by (seed, key, view)."""
    from offline_ssld.data.views import view_rng

    out = []
    for item in items.tolist():
        image, view = divmod(item, views)
        data = images.source.read(image)
        out.append(pipeline.draw(data, view_rng(seed, images.keys[image], view))[1])
    return np.stack(out)


def write_synthetic_cache(
    cache_dir: Path,
    codec_name: str,
    num_classes: int,
    num_images: int,
    views: int,
    backend: str = "arrow",
    shard_size: int = 4096,
    seed: int = 0,
    codec_settings: dict | None = None,
    images: ImageSet | None = None,
    teacher_name: str = "synthetic",
) -> SyntheticCache:
    """Write a complete cache of `num_images` x `views` random views; return what was built.

    With `images`, keys, paths and labels are those real images' and each view's params are
    drawn by their pipeline exactly as dump-teacher draws them, so the cache replays."""
    from offline_ssld.cache.codecs import build_codec
    from offline_ssld.cache.fingerprint import canonical_hash, transforms_fingerprint
    from offline_ssld.cache.format import Manifest
    from offline_ssld.cache.writer import BackgroundWriter, open_cache
    from offline_ssld.data.lists import Sample
    from offline_ssld.data.transforms import Pipeline, build_ops
    from offline_ssld.dump import DumpPlan, shard_columns

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    codec = build_codec(codec_name, num_classes, **(codec_settings or {}))
    ops = images.transform_ops if images else TRANSFORM_OPS
    pipeline = Pipeline(build_ops(ops, "synthetic"))
    if images is None:
        keys = rng.integers(0, 256, (num_images, 16), dtype=np.uint8)
        labels = np.sort(rng.integers(0, num_classes, num_images))
        paths = _paths(labels)
        samples = [Sample(paths[i], int(c), i + 1) for i, c in enumerate(labels)]
    else:
        samples = images.source.samples[:num_images]
        keys = np.stack([np.frombuffer(k, np.uint8) for k in images.keys[:num_images]])
        labels = np.array([s.label for s in samples])
    key_bytes = [k.tobytes() for k in keys]
    teacher = {"name": teacher_name, "class_num": num_classes, "weights_sha256": None}
    hexes = [k.hex() for k in key_bytes]
    manifest = Manifest(
        backend=backend,
        views=views,
        seed=seed,
        num_classes=num_classes,
        images_per_shard=max(1, shard_size // views),
        param_names=list(pipeline.param_names),
        param_ranges=[list(r) for r in pipeline.param_ranges],
        codec=codec.settings(),
        fingerprints={
            "teacher": canonical_hash(teacher),
            "transforms": transforms_fingerprint(pipeline),
            "dataset": canonical_hash(sorted(hexes)),
            "order": canonical_hash(hexes),
        },
        teacher=teacher,
        num_images=num_images,
        source={
            "image_root": str(images.source.image_root) if images else "synthetic",
            "cls_label_path": str(images.source.list_path) if images else "synthetic/list.txt",
            "transform_ops": ops,
            "teacher_weights": "synthetic.safetensors",
        },
    )
    manifest = open_cache(cache_dir, manifest, overwrite=True)
    source = images.source if images else ImageSource("synthetic", "synthetic/list.txt", samples)
    plan = DumpPlan(source, key_bytes, pipeline, codec, manifest)
    writer = BackgroundWriter(cache_dir, manifest)
    ips = manifest.images_per_shard
    try:
        for shard in range(manifest.num_shards):
            first, last = shard * ips, min((shard + 1) * ips, num_images)
            items = np.arange(first * views, last * views)
            logits = rng.standard_normal((len(items), num_classes), dtype=np.float32) * 3
            params = _drawn(images, pipeline, seed, items, views) if images else None
            params = _params(rng, len(items)) if params is None else params
            columns = shard_columns(plan, shard, items, params, logits)
            writer.submit(shard, columns, last - first)
    finally:
        manifest = writer.close()
    seconds = time.perf_counter() - start
    disk = sum(p.stat().st_size for p in cache_dir.iterdir() if p.is_file())
    return SyntheticCache(cache_dir, keys, labels, seconds, disk)
