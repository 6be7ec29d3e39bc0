"""Shared fixtures: a tiny image project generated on the fly (images, list, teacher weights,
PaddleClas-shaped config), so unit tests need no downloads and no real data."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

os.environ.setdefault("GLOG_minloglevel", "2")

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

    from offline_ssld.config import ModelSpec
    from offline_ssld.models import build_model, save_weights

    paddle.seed(seed)
    save_weights(build_model(ModelSpec(name, CLASSES, None, "Arch")), path)
    return path


@pytest.fixture(scope="session")
def teacher_weights(tmp_path_factory) -> Path:
    return save_random_weights(TEACHER, tmp_path_factory.mktemp("weights") / "teacher.safetensors")


@pytest.fixture
def project(tmp_path, teacher_weights):
    """A config file for a 24-image project; returns (config path, tmp dir)."""
    root = tmp_path / "images"
    entries = make_images(root, 24)
    train_list = write_list(tmp_path / "train_list.txt", entries)
    val_list = write_list(tmp_path / "val_list.txt", entries[:8])
    cfg = {
        "Global": {
            "device": "cpu",
            "epochs": 2,
            "output_dir": str(tmp_path / "output"),
            "eval_interval": 1,
            "save_interval": 1,
            "seed": 0,
        },
        "Arch": {
            "name": "DistillationModel",
            "class_num": CLASSES,
            "freeze_params_list": [True, False],
            "models": [
                {
                    "Teacher": {
                        "name": TEACHER,
                        "class_num": CLASSES,
                        "pretrained": str(teacher_weights),
                    }
                },
                {"Student": {"name": STUDENT, "class_num": CLASSES}},
            ],
            "infer_model_name": "Student",
        },
        "Loss": {
            "Train": [
                {
                    "DistillationDMLLoss": {
                        "weight": 1.0,
                        "model_name_pairs": [["Student", "Teacher"]],
                    }
                }
            ],
            "Eval": [{"CELoss": {"weight": 1.0}}],
        },
        "Optimizer": {
            "name": "Momentum",
            "momentum": 0.9,
            "lr": {"name": "Cosine", "learning_rate": 0.05, "warmup_epoch": 0},
            "regularizer": {"name": "L2", "coeff": 1e-5},
        },
        "DataLoader": {
            "Train": {
                "dataset": {
                    "name": "ImageNetDataset",
                    "image_root": str(root),
                    "cls_label_path": str(train_list),
                    "transform_ops": transform_ops(True),
                },
                "sampler": {"batch_size": 8, "shuffle": True, "drop_last": False},
                "loader": {"num_workers": 0},
            },
            "Eval": {
                "dataset": {
                    "name": "ImageNetDataset",
                    "image_root": str(root),
                    "cls_label_path": str(val_list),
                    "transform_ops": transform_ops(False),
                },
                "sampler": {"batch_size": 8, "shuffle": False},
                "loader": {"num_workers": 0},
            },
        },
        "Offline": {
            "cache_dir": str(tmp_path / "cache"),
            "views": 3,
            "shard_size": 21,
            "batch_size": 5,
        },
    }
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, tmp_path
