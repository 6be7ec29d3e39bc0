"""Shared test helpers: a tiny image project generated on the fly (images, list files,
transform ops, random and lively teacher weights), so unit tests need no downloads and no real data.
Imported by test modules and by conftest.py; pytest fixtures live in conftest.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

TEACHER = "PPLCNet_x0_25"
STUDENT = "MobileNetV3_small_x0_35"
CLASSES = 4


def make_images(root: Path, count: int, seed: int = 0, size: int = 20) -> list[tuple[str, int]]:
    """Class-dependent coloured squares with noise, as PNG and JPEG; returns (relpath, label)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        label = i % CLASSES
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        if label < 3:  # red, green, blue, grey: separable by colour alone
            img[:, :, label] += np.uint8(150)
        else:
            img += np.uint8(100)
        ext = ".png" if i % 2 == 0 else ".jpg"
        rel = f"class{label}/img{i:03d}{ext}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(ext, img)
        assert ok
        (root / rel).write_bytes(buf.tobytes())
        out.append((rel, label))
    return out


def write_list(path: Path, entries, labeled: bool = True) -> Path:
    path.write_text("".join(f"{p} {lab}\n" if labeled else f"{p}\n" for p, lab in entries))
    return path


def transform_ops(random: bool = True) -> list:
    ops: list = [{"DecodeImage": {"to_rgb": True, "channel_first": False}}]
    if random:
        ops += [
            {"RandCropImage": {"size": 16, "scale": [0.5, 1.0]}},
            {"RandFlipImage": {"flip_code": 1}},
        ]
    else:
        ops += [{"ResizeImage": {"size": 16}}]
    ops += [
        {
            "NormalizeImage": {
                "scale": "1.0/255.0",
                "mean": [0.5, 0.5, 0.5],
                "std": [0.25, 0.25, 0.25],
                "order": "",
            }
        },
        {"ToCHWImage": None},
    ]
    return ops


def save_random_weights(name: str, path: Path, seed: int = 0) -> Path:
    import paddle

    from offline_ssld.config.specs import ModelSpec
    from offline_ssld.models import build_model, save_weights

    paddle.seed(seed)
    save_weights(build_model(ModelSpec(name, CLASSES, None, "Arch")), path)
    return path


def lively_teacher(path: Path, image_root: Path, train_list: Path, seed: int = 0) -> Path:
    """A random TEACHER that tells the images of `train_list` apart in eval mode, saved to
    `path`. Untouched, its BatchNorm running statistics (mean 0, variance 1) shrink every
    eval-mode logit to ~1e-10: uniform outputs that any view, image or teacher would match,
    so a test comparing teacher targets could not fail. Its BatchNorm statistics are
    recalibrated on the training views (transform_ops(True)) and the classifier scaled to
    logits of standard deviation 3."""
    import paddle

    from offline_ssld.config.specs import ModelSpec
    from offline_ssld.data.loader import BatchLoader
    from offline_ssld.data.samplers import EpochBatches
    from offline_ssld.data.views import AugmentDataset
    from offline_ssld.models import build_model, save_weights
    from offline_ssld.train import _source, recalibrate_batch_norm

    paddle.seed(seed)
    teacher = build_model(ModelSpec(TEACHER, CLASSES, None, "Arch"))
    dataset = {
        "image_root": str(image_root),
        "cls_label_path": str(train_list),
        "transform_ops": transform_ops(True),
    }
    source, pipeline, _ = _source({"DataLoader": {"Train": {"dataset": dataset}}}, "Train", CLASSES)
    sampler = EpochBatches(len(source.samples), 8, False, False, seed)
    loader = BatchLoader(AugmentDataset(source, pipeline, seed), sampler)
    recalibrate_batch_norm(teacher, loader, len(sampler))
    teacher.eval()
    with paddle.no_grad():
        scale = 3.0 / float(paddle.concat([teacher(x) for x, _ in loader]).std())
    for param in (teacher.fc.weight, teacher.fc.bias):
        param.set_value(param * scale)
    save_weights(teacher, path)
    return path


def plan_cache(config: Path, *overrides: str):
    """The dump plan (keys, codec, manifest) of a project config, without running a teacher."""
    from offline_ssld.config.loading import load_config
    from offline_ssld.dump import plan_dump

    return plan_dump(load_config([str(config)], list(overrides)))


def shard_items(manifest, shard: int) -> np.ndarray:
    """Item numbers (image * views + view) of one shard, in storage order."""
    start, stop = manifest.shard_span(shard)
    return np.arange(start * manifest.views, stop * manifest.views)


def fake_params(manifest, items: np.ndarray) -> np.ndarray:
    """View parameters within their declared ranges; the wide ones differ for every item, so
    a row read back identifies its item."""
    width = len(manifest.param_names)
    raw = items[:, None] * 100 + np.arange(width)
    lo = np.array([r[0] for r in manifest.param_ranges], dtype=np.int64)
    hi = np.array([r[1] for r in manifest.param_ranges], dtype=np.int64)
    return (lo + raw % (hi - lo + 1)).astype(np.int32)


def fake_logits(manifest, items: np.ndarray) -> np.ndarray:
    """Teacher logits that differ for every item (seeded by the item number)."""
    return np.stack(
        [np.random.default_rng(int(i)).normal(0, 3, manifest.num_classes) for i in items]
    ).astype(np.float32)


def shard_of(plan, shard: int) -> tuple[dict[str, np.ndarray], int]:
    """(columns, images) of one shard as dump-teacher would build them from fake outputs."""
    from offline_ssld.dump import shard_columns

    manifest = plan.manifest
    items = shard_items(manifest, shard)
    columns = shard_columns(
        plan, shard, items, fake_params(manifest, items), fake_logits(manifest, items)
    )
    return columns, len(items) // manifest.views


def write_cache(plan, cache_dir: Path, shards=None):
    """Open (or resume) a cache for `plan` and commit `shards` (default: all) through the
    cache writer, with fake teacher outputs; returns the manifest after the writer closed."""
    from offline_ssld.cache.writer import BackgroundWriter, open_cache

    manifest = open_cache(cache_dir, plan.manifest, keys=plan.keys)
    writer = BackgroundWriter(cache_dir, manifest)
    for shard in range(manifest.num_shards) if shards is None else shards:
        writer.submit(shard, *shard_of(plan, shard))
    return writer.close()


def scene(rng: np.random.Generator, height: int = 72, width: int = 96) -> np.ndarray:
    """A photo-like BGR image: a smooth random field, a few filled ellipses and mild noise.
    Unlike noise squares it has the low-frequency structure a perceptual hash keys on, and
    two scenes are unrelated images."""
    img = cv2.resize(
        rng.uniform(0, 255, (4, 5, 3)).astype(np.float32),
        (width, height),
        interpolation=cv2.INTER_CUBIC,
    )
    for _ in range(4):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(5, width // 3)), int(rng.integers(5, height // 3)))
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    img += rng.normal(0, 8, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img: np.ndarray, ext: str = ".png", quality: int = 95) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, img, params)
    assert ok
    return buf.tobytes()


def near_copies(img: np.ndarray) -> dict[str, bytes]:
    """Copies a near-duplicate search must find: re-encoded, resized up and down (blockily
    too: area and nearest enlarging), cropped by
    up to 5% from one, two or all sides (at least 1 px), with and without resizing back."""
    h, w = img.shape[:2]

    def cut(n: int, share: float) -> int:
        return max(1, round(share * n))

    def resize(x: np.ndarray, scale: float, interp: int) -> np.ndarray:
        size = (max(1, round(x.shape[1] * scale)), max(1, round(x.shape[0] * scale)))
        return cv2.resize(x, size, interpolation=interp)

    dh, dw, ah, aw = cut(h, 0.05), cut(w, 0.05), cut(h, 0.04), cut(w, 0.04)
    every_side = img[ah : h - ah, aw : w - aw]
    return {
        "jpeg_q60": encode(img, ".jpg", 60),
        "resized_0.6": encode(resize(img, 0.6, cv2.INTER_AREA)),
        "resized_0.8": encode(resize(img, 0.8, cv2.INTER_LINEAR)),
        "resized_1.3": encode(resize(img, 1.3, cv2.INTER_LINEAR)),
        "resized_1.5": encode(resize(img, 1.5, cv2.INTER_CUBIC)),
        "resized_9/7_area": encode(resize(img, 9 / 7, cv2.INTER_AREA)),
        "resized_1.4_nearest": encode(resize(img, 1.4, cv2.INTER_NEAREST)),
        "crop5_side": encode(img[:, : w - dw]),
        "crop5_corner": encode(img[dh:, dw:]),
        "crop4_centre": encode(every_side),
        "crop4_centre_resized_back": encode(cv2.resize(every_side, (w, h))),
        "crop5_side_resized_back": encode(cv2.resize(img[dh:], (w, h), cv2.INTER_CUBIC)),
        "crop4_side_jpeg_resized": encode(
            resize(img[:, : w - cut(w, 0.04)], 0.8, cv2.INTER_AREA), ".jpg", 80
        ),
    }


def signed_manifest(obj: dict) -> bytes:
    """`obj` as a manifest with a consistent `integrity` (what someone rewriting a manifest can
    produce): the checks after the manifest's own checksums are then what must refuse it."""
    from offline_ssld.cache.format import INTEGRITY, field_checksums, render_json

    obj = {name: value for name, value in obj.items() if name != INTEGRITY}
    obj[INTEGRITY] = field_checksums(obj)
    return render_json(obj)


def open_for_training(cfg: dict):
    """What train-student does with its config's single cache before the first batch
    (targets.open_verified_cache), everything derived from `cfg` as train() derives it."""
    from offline_ssld.config import loading, specs
    from offline_ssld.config.offline import offline_spec
    from offline_ssld.losses import build_loss
    from offline_ssld.targets import open_verified_cache
    from offline_ssld.train import _source

    student = specs.student_spec(cfg)
    source, pipeline, _ = _source(cfg, "Train", student.class_num)
    loss = build_loss(loading.get(cfg, "Loss.Train"))
    return open_verified_cache(cfg, offline_spec(cfg), pipeline, source, student, loss)
