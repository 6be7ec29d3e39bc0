"""Shared fixtures: teacher weights and a PaddleClas-shaped project on tiny generated
images (helpers in tests/helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    CLASSES,
    STUDENT,
    TEACHER,
    lively_teacher,
    make_images,
    transform_ops,
    write_list,
)

os.environ.setdefault("GLOG_minloglevel", "2")


PROJECT_IMAGES = 24  # the `project` fixture's images: make_images(root, 24), seed 0


@pytest.fixture(scope="session")
def teacher_weights(tmp_path_factory) -> Path:
    """The `project` teacher: random, made informative on the project's own images (their
    content depends only on make_images' seed), so cached targets tell views apart."""
    tmp = tmp_path_factory.mktemp("weights")
    entries = make_images(tmp / "images", PROJECT_IMAGES)
    train_list = write_list(tmp / "train_list.txt", entries)
    return lively_teacher(tmp / "teacher.safetensors", tmp / "images", train_list)


@pytest.fixture
def project(tmp_path, teacher_weights):
    """A config file for a 24-image project; returns (config path, tmp dir)."""
    root = tmp_path / "images"
    entries = make_images(root, PROJECT_IMAGES)
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
