"""train-student --data-only on a large cache, against the same epoch with the cache in memory.

It writes --images small PNG images (random 32x32 pictures) and their list, then a 1000-class
fp16 cache of them at the default shard size (4096 views) with --views views per image,
through `benchmarks/synthetic.py` (random logits as the teacher; each view's params drawn by
the training pipeline exactly as dump-teacher draws them, so every view replays). Then it
runs `offline_ssld.train.data_only` with `in_memory_reference=True` on the Fashion-MNIST
student config (classes set to 1000): one epoch of the training data path from the mapped
cache, then the same epoch with every cache column copied into memory, in one run.

    python benchmarks/data_only.py --images 25600 --views 32    # 200 shards
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, reproduce_command  # noqa: E402
from benchmarks.synthetic import ImageSet, write_synthetic_cache  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks/results/data_only.json"
CONFIG = ROOT / "configs/fashion_mnist/mnv3_x0_35_student.yaml"
CLASSES = 1000


def write_images(root: Path, count: int, seed: int) -> Path:
    """`count` random 32x32 PNGs under root/images and a PaddleClas list; the list's path."""
    import cv2

    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        rel = f"images/{i % 100:02d}/{i:06d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        lines.append(f"{rel} {i % CLASSES}")
    listing = root / "train_list.txt"
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return listing


def data_only_config(
    root: Path, listing: Path, cache: Path, batch_size: int, workers: int, views: int
) -> dict:
    """The Fashion-MNIST student config at 1000 classes, training on `listing` under `root`
    offline from `cache` (no teacher file needed: --data-only never builds it)."""
    from offline_ssld.config.loading import load_config

    overrides = [
        f"Arch.models.0.Teacher.class_num={CLASSES}",
        f"Arch.models.1.Student.class_num={CLASSES}",
        f"Arch.models.0.Teacher.pretrained={root / 'no-teacher-file'}",
        f"DataLoader.Train.dataset.image_root={root}",
        f"DataLoader.Train.dataset.cls_label_path={listing}",
        f"DataLoader.Train.sampler.batch_size={batch_size}",
        f"DataLoader.Train.loader.num_workers={workers}",
        f"Offline.cache_dir={cache}",
        f"Offline.views={views}",
        f"Global.output_dir={cache.parent / 'output'}",
    ]
    return load_config([str(CONFIG)], overrides)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--images", type=click.IntRange(min=1), default=25600, show_default=True)
@click.option("--views", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True
)
@click.option("--tmp-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
def main(images, views, workers, batch_size, out, tmp_dir) -> None:
    """Time train-student --data-only on a 1000-class fp16 cache, mapped and in memory.

    \b
    Example:
      python benchmarks/data_only.py --images 25600 --views 32
    """
    from offline_ssld.cache.format import load_manifest
    from offline_ssld.data.lists import read_list
    from offline_ssld.data.views import ImageSource
    from offline_ssld.io import content_key
    from offline_ssld.train import data_only

    command = reproduce_command()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="data_only-", dir=tmp_dir) as tmp:
        root = Path(tmp)
        listing = write_images(root, images, 0)
        cache = root / "cache"
        cfg = data_only_config(root, listing, cache, batch_size, workers, views)
        source = ImageSource(root, listing, read_list(listing, CLASSES))
        keys = [content_key(source.read(i)) for i in range(len(source.samples))]
        ops = cfg["DataLoader"]["Train"]["dataset"]["transform_ops"]
        built = write_synthetic_cache(
            cache, "fp16", CLASSES, images, views, "arrow",
            images=ImageSet(source, keys, ops), teacher_name="ResNet18",
        )  # fmt: skip
        shards = len(load_manifest(cache).shards)
        r = data_only(cfg, progress=False, in_memory_reference=True)
    report = {
        "benchmark": "data_only",
        "command": command,
        "options": {"images": images, "views": views, "workers": workers, "batch": batch_size},
        "machine": machine_info(),
        "load_average_before_after": [load_before, os.getloadavg()],
        "cache": {
            "rows": images * views,
            "shards": shards,
            "bytes": built.disk_bytes,
            "build_seconds": built.seconds,
        },
        "images_per_s": r.images_per_second,
        "in_memory_images_per_s": r.in_memory_images_per_second,
        "ratio": r.images_per_second / r.in_memory_images_per_second,
        "startup_seconds": r.startup_seconds,
        "stage_us_per_image": {k: v * 1e6 for k, v in r.stages.items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    click.echo(json.dumps({k: report[k] for k in ("cache", "images_per_s", "ratio")}, indent=1))


if __name__ == "__main__":
    main()
