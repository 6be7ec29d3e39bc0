"""Start-up and total time of dump-teacher, and start-up of train-student (issue 10 item 2).

Start-up is the time from the call to the first batch: for the dump, the teacher's first
forward; for training, the first loss. The script uses only entry points that older
versions have too (run_dump, dump.load_teacher, train, OfflineCache.loss), so the same
command measures another checkout by pointing PYTHONPATH at it:

    python benchmarks/startup.py --images 3000 --work /tmp/startup    # this checkout
    PYTHONPATH=/work/main python benchmarks/startup.py --images 3000 --work /tmp/startup

Prints one JSON line: dump start-up, dump total, train start-up (seconds). --side sets the
image size (noise, so about 3 * side**2 bytes a PNG): start-up that grows with the bytes
shows there, start-up that grows with the list does not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

TEACHER, STUDENT, CLASSES = "PPLCNet_x0_25", "MobileNetV3_small_x0_35", 4


class FirstBatch(Exception):
    """Raised at the first training loss: start-up is over."""


def make_project(work: Path, images: int, side: int) -> Path:
    """`images` side x side PNG/JPEG files of noise, a list, random teacher weights and a
    config (once). Noise barely compresses, so `side` sets the bytes per image."""
    config = work / f"config_{images}_{side}.yaml"
    if config.exists():
        return config
    import paddle

    from offline_ssld.config.specs import ModelSpec
    from offline_ssld.models import build_model, save_weights

    root = work / f"images_{images}_{side}"
    rng = np.random.default_rng(0)
    lines = []
    for i in range(images):
        label = i % CLASSES
        img = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        ext = ".png" if i % 2 else ".jpg"
        rel = f"c{label}/{i:06d}{ext}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(cv2.imencode(ext, img)[1].tobytes())
        lines.append(f"{rel} {label}\n")
    listing = work / f"list_{images}_{side}.txt"
    listing.write_text("".join(lines))
    paddle.seed(0)
    weights = work / "teacher.safetensors"
    save_weights(build_model(ModelSpec(TEACHER, CLASSES, None, "Arch")), weights)
    norm = {"scale": "1.0/255.0", "mean": [0.5] * 3, "std": [0.25] * 3, "order": ""}
    ops = [
        {"DecodeImage": {"to_rgb": True, "channel_first": False}},
        {"RandCropImage": {"size": 32, "scale": [0.5, 1.0]}},
        {"RandFlipImage": {"flip_code": 1}},
        {"NormalizeImage": norm},
        {"ToCHWImage": None},
    ]
    dataset = {"name": "ImageNetDataset", "image_root": str(root), "cls_label_path": str(listing)}
    cfg = {
        "Global": {"device": "cpu", "epochs": 1, "output_dir": str(work / "out"), "seed": 0},
        "Arch": {
            "name": "DistillationModel",
            "class_num": CLASSES,
            "models": [
                {"Teacher": {"name": TEACHER, "class_num": CLASSES, "pretrained": str(weights)}},
                {"Student": {"name": STUDENT, "class_num": CLASSES}},
            ],
        },
        "Loss": {
            "Train": [{"DistillationDMLLoss": {"model_name_pairs": [["Student", "Teacher"]]}}]
        },
        "Optimizer": {"name": "Momentum", "momentum": 0.9, "lr": {"learning_rate": 0.01}},
        "DataLoader": {
            "Train": {
                "dataset": {**dataset, "transform_ops": ops},
                "sampler": {"batch_size": 64, "shuffle": True},
                "loader": {"num_workers": 0},
            },
            "Eval": {
                "dataset": {**dataset, "transform_ops": [ops[0], {"ResizeImage": {"size": 32}}]},
                "sampler": {"batch_size": 64},
                "loader": {"num_workers": 0},
            },
        },
        "Offline": {"cache_dir": str(work / "cache"), "views": 2, "batch_size": 64},
    }
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def measure(config: Path) -> dict[str, float]:
    from offline_ssld import dump as dump_module
    from offline_ssld import targets
    from offline_ssld.config.loading import load_config
    from offline_ssld.train import train

    cfg = load_config([str(config)], [])
    shutil.rmtree(cfg["Offline"]["cache_dir"], ignore_errors=True)
    first: list[float] = []
    load_teacher = dump_module.load_teacher

    def timed_teacher(cfg_: dict):
        model = load_teacher(cfg_)
        model.register_forward_pre_hook(lambda *_: first.append(time.perf_counter()) or None)
        return model

    dump_module.load_teacher = timed_teacher
    start = time.perf_counter()
    dump_module.run_dump(cfg, progress=False)
    total = time.perf_counter() - start
    dump_module.load_teacher = load_teacher

    def stop(self, logits, batch):
        first.append(time.perf_counter())
        raise FirstBatch

    targets.OfflineCache.loss = stop  # type: ignore[method-assign]
    train_start = time.perf_counter()
    with contextlib.suppress(FirstBatch):
        train(load_config([str(config)], []), "offline", progress=False)
    return {
        "dump_startup_s": round(first[0] - start, 3),
        "dump_total_s": round(total, 3),
        "train_startup_s": round(first[-1] - train_start, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--side", type=int, default=40, help="image side in pixels")
    parser.add_argument("--work", type=Path, default=Path("/tmp/offline_ssld_startup"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    import offline_ssld

    result = measure(make_project(args.work, args.images, args.side))
    print(json.dumps({"code": str(Path(offline_ssld.__file__).parent.parent), **result}))


if __name__ == "__main__":
    main()
