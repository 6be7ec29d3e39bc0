"""Which shard backend should be the default: Arrow or HDF5, measured.

For each backend and each payload (fp16 at 10 and 1000 classes, topk k=5 at 1000 classes)
it writes --rows synthetic rows (random keys, paths, labels, view params and teacher logits,
encoded by the codec) as shards of --shard-rows rows through the cache writer
(`write_shard`: temp file, fsync, rename, checksum), then measures with the cache reader:

* write seconds (shard writes only; the synthetic columns are built beforehand),
* bytes on disk per row,
* index build: `CacheReader.index()` on a new reader (loads and checksums every shard),
* random reads: --lookups random (key, view) pairs through `lookup` + `read_row` on a new
  reader each repeat, after its index is built; the reader keeps --shards-in-memory decoded
  shards (the training default, Offline.prefetch_shards), so a cache with more shards than
  that reloads shards as training does. The OS page cache is warm (the files were just
  written).

Medians over --repeats. The recommended default is the backend with the higher geometric
mean of random-read rows/s over the payloads (the path every training epoch takes); when
the two are within READ_TIE (10%, below run-to-run noise on a shared machine) reads are a
tie and the higher geometric mean of write rows/s decides.

    python benchmarks/cache_formats.py
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
READ_TIE = 0.10
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks/results/cache_formats.json"
BACKENDS = ("arrow", "hdf5")
# (label, codec name, num_classes, codec settings)
CASES = (
    ("fp16/10", "fp16", 10, {}),
    ("fp16/1000", "fp16", 1000, {}),
    ("topk5/1000", "topk", 1000, {"k": 5}),
)
# The view params of the Fashion-MNIST configs: RandCropImage x, y, w, h and RandFlipImage.
PARAM_NAMES = [
    "RandCropImage.x",
    "RandCropImage.y",
    "RandCropImage.w",
    "RandCropImage.h",
    "RandFlipImage.flip",
]


class Synthetic:
    """Shard columns of a synthetic cache, built once and written by every backend."""

    def __init__(self, codec, rows: int, views: int, shard_rows: int, seed: int):
        rng = np.random.default_rng(seed)
        self.views = views
        self.num_images = max(1, rows // views)
        self.rows = self.num_images * views
        self.images_per_shard = max(1, shard_rows // views)
        keys = rng.integers(0, 256, (self.num_images, 16), dtype=np.uint8)
        while len(np.unique(keys, axis=0)) != len(keys):  # 2**-128 per pair: never in practice
            keys = rng.integers(0, 256, (self.num_images, 16), dtype=np.uint8)
        self.keys = keys
        self.key_bytes = [k.tobytes() for k in keys]
        labels = rng.integers(0, codec.num_classes, self.num_images).astype(np.int32)
        self.shards: list[tuple[dict[str, np.ndarray], int]] = []
        for start in range(0, self.num_images, self.images_per_shard):
            images = np.arange(start, min(start + self.images_per_shard, self.num_images))
            per_row = np.repeat(images, views)
            logits = rng.normal(0.0, 3.0, (len(per_row), codec.num_classes)).astype(np.float32)
            columns = {
                "key": keys[per_row],
                "path": np.array([f"images/train/{i:06d}.png" for i in per_row], dtype=object),
                "label": labels[per_row][:, None],
                "view": np.tile(np.arange(views, dtype=np.int32), len(images))[:, None],
                "params": rng.integers(0, 32, (len(per_row), len(PARAM_NAMES))).astype(np.int32),
            }
            columns.update(codec.encode(logits, rng))
            self.shards.append((columns, len(images)))

    def params_of(self, image: int, view: int) -> np.ndarray:
        number, first = divmod(image, self.images_per_shard)
        return self.shards[number][0]["params"][first * self.views + view]


def manifest_for(backend: str, codec, data: Synthetic):
    """A manifest with the fields plan_dump fills, describing the synthetic cache."""
    from offline_ssld.cache.fingerprint import (
        canonical_hash,
        dataset_fingerprint,
        order_fingerprint,
        teacher_fingerprint,
    )
    from offline_ssld.cache.format import Manifest

    teacher = {"name": "synthetic", "class_num": codec.num_classes, "weights_sha256": None}
    return Manifest(
        backend=backend,
        views=data.views,
        seed=0,
        num_classes=codec.num_classes,
        images_per_shard=data.images_per_shard,
        param_names=list(PARAM_NAMES),
        codec=codec.settings(),
        fingerprints={
            "teacher": teacher_fingerprint(teacher),
            "transforms": canonical_hash(PARAM_NAMES),  # stands in for a pipeline's specs
            "dataset": dataset_fingerprint(data.key_bytes),
            "order": order_fingerprint(data.key_bytes),
        },
        teacher=teacher,
        num_images=data.num_images,
        source={
            "image_root": "synthetic",
            "cls_label_path": "synthetic/train_list.txt",
            "transform_ops": [],
            "teacher_weights": "synthetic.safetensors",
        },
    )


def write_cache(cache_dir: Path, backend: str, codec, data: Synthetic) -> tuple[float, int]:
    """Write the synthetic cache; (seconds spent in write_shard, bytes of the shards)."""
    from offline_ssld.cache.writer import open_cache, write_shard

    manifest = open_cache(cache_dir, manifest_for(backend, codec, data), overwrite=True)
    infos = []
    start = time.perf_counter()
    for index, (columns, images) in enumerate(data.shards):
        infos.append(write_shard(cache_dir, backend, index, columns, images))
    seconds = time.perf_counter() - start
    manifest.shards = infos
    manifest.complete = len(infos) == manifest.num_shards
    manifest.save(cache_dir)
    return seconds, sum(i.bytes for i in infos)


def read_cache(
    cache_dir: Path, data: Synthetic, images: np.ndarray, views: np.ndarray, in_memory: int
) -> tuple[float, float]:
    """(index seconds, random-read seconds) on a new reader."""
    from offline_ssld.cache.reader import CacheReader

    reader = CacheReader(cache_dir, max_shards_in_memory=in_memory)
    start = time.perf_counter()
    reader.index()
    index_s = time.perf_counter() - start
    keys = data.key_bytes
    start = time.perf_counter()
    for image, view in zip(images.tolist(), views.tolist(), strict=True):
        hit = reader.lookup(keys[image], view)
        if hit is None:
            raise RuntimeError(f"{cache_dir}: image {image} not found")
        reader.read_row(*hit)
    read_s = time.perf_counter() - start
    for image, view in zip(images[:16].tolist(), views[:16].tolist(), strict=True):
        params, _payload = reader.read_row(*reader.lookup(keys[image], view))
        if not np.array_equal(params, data.params_of(image, view)):
            raise RuntimeError(f"{cache_dir}: image {image} view {view} reads wrong params")
    return index_s, read_s


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--rows", type=click.IntRange(min=1), default=50_000, show_default=True)
@click.option("--lookups", type=click.IntRange(min=1), default=20_000, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--views", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--shard-rows", type=click.IntRange(min=1), default=4096, show_default=True, help="Rows/shard."
)
@click.option(
    "--shards-in-memory",
    type=click.IntRange(min=1),
    default=None,
    help="Reader LRU size (default: Offline.prefetch_shards).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="Results JSON.",
)
@click.option(
    "--tmp-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the caches are written (default: the system's temp dir).",
)
def main(rows, lookups, repeats, views, shard_rows, shards_in_memory, seed, out, tmp_dir) -> None:
    """Measure Arrow vs HDF5 shards (write time, bytes/row, index build, random reads) for fp16
    and topk payloads and recommend the default backend; results go to --out.

    \b
    Example:
      python benchmarks/cache_formats.py --rows 50000 --repeats 3
    """
    from offline_ssld.cache.codecs import build_codec
    from offline_ssld.config import OFFLINE_DEFAULTS

    command = shlex.join([sys.executable, *sys.argv])
    in_memory = shards_in_memory or OFFLINE_DEFAULTS["prefetch_shards"]
    results = []
    with tempfile.TemporaryDirectory(prefix="cache_formats-", dir=tmp_dir) as tmp:
        for label, name, num_classes, settings in CASES:
            codec = build_codec(name, num_classes, **settings)
            data = Synthetic(codec, rows, views, shard_rows, seed)
            pick = np.random.default_rng([seed, 1])
            images = pick.integers(0, data.num_images, lookups)
            picked_views = pick.integers(0, views, lookups)
            if not results:  # untimed warm-up: the first write of a backend sets up its library
                for backend in BACKENDS:
                    write_cache(Path(tmp) / f"warm-up-{backend}", backend, codec, data)
                    shutil.rmtree(Path(tmp) / f"warm-up-{backend}")
            for backend in BACKENDS:
                cache_dir = Path(tmp) / f"{name}-{num_classes}-{backend}"
                write_s, index_s, read_s = [], [], []
                size = 0
                for _ in range(repeats):
                    shutil.rmtree(cache_dir, ignore_errors=True)
                    seconds, size = write_cache(cache_dir, backend, codec, data)
                    write_s.append(seconds)
                for _ in range(repeats):
                    i_s, r_s = read_cache(cache_dir, data, images, picked_views, in_memory)
                    index_s.append(i_s)
                    read_s.append(r_s)
                shutil.rmtree(cache_dir)
                w, i, r = (statistics.median(v) for v in (write_s, index_s, read_s))
                results.append(
                    {
                        "payload": label,
                        "codec": codec.settings(),
                        "backend": backend,
                        "rows": data.rows,
                        "shards": len(data.shards),
                        "write_seconds": w,
                        "write_rows_per_s": data.rows / w,
                        "bytes_per_row": size / data.rows,
                        "payload_bytes_per_row": codec.bytes_per_row(),
                        "index_seconds": i,
                        "index_rows_per_s": data.rows / i,
                        "read_seconds": r,
                        "read_rows_per_s": lookups / r,
                        "samples": {"write": write_s, "index": index_s, "read": read_s},
                    }
                )
                click.echo(
                    f"{label:<11} {backend:<5} write {w:7.3f}s  index {i:7.3f}s  "
                    f"read {lookups / r:10.0f} rows/s",
                    err=True,
                )

    def mean_of(key: str) -> dict[str, float]:
        return {b: geomean([x[key] for x in results if x["backend"] == b]) for b in BACKENDS}

    score, writes = mean_of("read_rows_per_s"), mean_of("write_rows_per_s")
    tie = max(score.values()) / min(score.values()) <= 1 + READ_TIE
    best = max(BACKENDS, key=lambda b: writes[b] if tie else score[b])
    other = next(b for b in BACKENDS if b != best)
    recommendation = {
        "default": best,
        "criterion": "geometric mean of random-read rows/s over the payloads; within "
        f"{READ_TIE:.0%} a tie, decided by the geometric mean of write rows/s",
        "reads_tied": tie,
        "read_rows_per_s_geomean": score,
        "write_rows_per_s_geomean": writes,
        "read_speedup_over_" + other: score[best] / score[other],
        "write_speedup_over_" + other: writes[best] / writes[other],
        "current_default": OFFLINE_DEFAULTS["format"],
        "agrees_with_current_default": best == OFFLINE_DEFAULTS["format"],
    }
    report = {
        "benchmark": "cache_formats",
        "command": command,
        "options": {
            "rows": rows,
            "lookups": lookups,
            "repeats": repeats,
            "views": views,
            "shard_rows": shard_rows,
            "shards_in_memory": in_memory,
            "seed": seed,
        },
        "machine": machine_info(),
        "results": results,
        "recommendation": recommendation,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")

    header = (
        f"{'payload':<11} {'backend':<7} {'write s':>8} {'write rows/s':>13} {'B/row':>8} "
        f"{'index s':>8} {'read rows/s':>12}"
    )
    lines = [header, "-" * len(header)]
    for x in results:
        lines.append(
            f"{x['payload']:<11} {x['backend']:<7} {x['write_seconds']:8.3f} "
            f"{x['write_rows_per_s']:13.0f} {x['bytes_per_row']:8.1f} {x['index_seconds']:8.3f} "
            f"{x['read_rows_per_s']:12.0f}"
        )
    click.echo("\n".join(lines))
    click.echo(
        f"{rows} rows, {lookups} lookups, shards of {shard_rows} rows, reader keeps {in_memory} "
        f"shards, median of {repeats}\n"
        f"recommended default: {best} (random reads {score[best] / score[other]:.2f}x, writes "
        f"{writes[best] / writes[other]:.2f}x {other}{'; reads tied' if tie else ''}; "
        f"current default: {OFFLINE_DEFAULTS['format']})\nwrote {out}"
    )


if __name__ == "__main__":
    main()
