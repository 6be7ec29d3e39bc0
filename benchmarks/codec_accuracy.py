"""Accuracy against bytes per row for each codec, in ONE run, over seeds.

Two parts:

- **1000 classes, the math.** A synthetic teacher (1000 classes, Gaussian logits with a few
  boosted classes per row) and a random student: for each codec setting, bytes per row and
  the cosine between the student's DML gradient under the codec's target and under the
  exact (float64) teacher distribution.
- **Fashion-MNIST, accuracy.** One teacher (ResNet18), dumped once as fp16; every other
  codec setting is the same cache transcoded by `offline-ssld merge --codec` (same views,
  no second teacher run). The same student (MobileNetV3_small_x0_35, DML, same epochs)
  trains from each, seeds interleaved. `topk ... spread` is the same top-k cache read as a
  one-member ensemble, which spreads the rest mass evenly over the other classes: the
  target every top-k cache gave before the rest bucket (losses.pairing, "buckets").

- **100 classes, accuracy** (`--task pairs`): the same on real images with a long teacher
  tail, two Fashion-MNIST garments side by side labelled by the pair
  (pipelines.fashion_mnist.prepare_pairs); the 10-class task cannot show what a top-k cache
  drops.

Writes benchmarks/results/codec_accuracy.json (codec_accuracy_pairs.json) and a PNG;
`benchmarks/report.py` renders the README tables.

    python benchmarks/codec_accuracy.py --images 4000 --epochs 3 --seeds 0,1,2
    python benchmarks/codec_accuracy.py --task pairs --settings 'fp16,topk k=5,topk k=10'
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, mean_ci, recipe, reproduce_command  # noqa: E402
from pipelines.fashion_mnist import (  # noqa: E402
    PAIR_CLASSES,
    STUDENT_CFG,
    TEACHER_CFG,
    Preset,
    overrides,
    pair_overrides,
    prepare,
    prepare_pairs,
)


@dataclass(frozen=True)
class Task:
    """A dataset the codecs are compared on, and how the shipped 10-class configs run on it."""

    classes: int
    suffix: str  # of the data directory, work directory and results file
    prepare: Callable[[Path, Preset], None]
    overrides: Callable[[bool], list[str]]  # config keys, given whether it is the student's
    math: bool  # whether its results file carries the 1000-class gradient check


TASKS = {
    "fmnist": Task(10, "", prepare, lambda distillation: [], math=True),
    "pairs": Task(
        PAIR_CLASSES,
        "_pairs",
        lambda data, p: prepare_pairs(data, p.train_images, p.val_images),
        pair_overrides,
        math=False,
    ),
}

# name -> (codec, settings, read as spread)
SETTINGS: dict[str, tuple[str, dict[str, int], bool]] = {
    "fp16": ("fp16", {}, False),
    "topk k=1": ("topk", {"k": 1}, False),
    "topk k=2": ("topk", {"k": 2}, False),
    "topk k=3": ("topk", {"k": 3}, False),
    "topk k=3 spread": ("topk", {"k": 3}, True),
    "topk k=5": ("topk", {"k": 5}, False),
    "topk k=10": ("topk", {"k": 10}, False),
    "topk k=10 spread": ("topk", {"k": 10}, True),
}
MATH_SETTINGS: dict[str, tuple[str, dict[str, int], bool]] = {
    "fp16": ("fp16", {}, False),
    **{f"topk k={k}": ("topk", {"k": k}, False) for k in (5, 10, 20, 50)},
    **{f"topk k={k} spread": ("topk", {"k": k}, True) for k in (5, 10, 20, 50)},
    **{f"sampled N={n}": ("sampled", {"samples": n}, False) for n in (12, 50)},
}


def math_part(classes: int = 1000, rows: int = 256, seed: int = 0) -> dict:
    """Bytes per row and DML-gradient cosine to the exact target, per codec setting."""
    import paddle

    from offline_ssld.cache.codecs import build_codec
    from offline_ssld.losses import build_loss

    rng = np.random.default_rng(seed)
    teacher = rng.normal(0, 2, (rows, classes))
    boosted = rng.integers(0, classes, (rows, 5))
    np.put_along_axis(teacher, boosted, rng.normal(8, 2, (rows, 5)), axis=1)
    exact = np.exp(teacher - teacher.max(axis=1, keepdims=True))
    exact /= exact.sum(axis=1, keepdims=True)
    # an untrained student, and one that has nearly learned the teacher
    students = {
        "random": rng.normal(0, 2, (rows, classes)),
        "near": teacher + rng.normal(0, 0.5, (rows, classes)),
    }
    loss = build_loss([{"DistillationDMLLoss": {}}])

    def grad(student: np.ndarray, target: np.ndarray) -> np.ndarray:
        z = paddle.to_tensor(student.astype(np.float32), stop_gradient=False)
        value, _ = loss(z, paddle.to_tensor(target.astype(np.float32)), paddle.full([rows], -1))
        value.backward()
        return z.grad.numpy().astype(np.float64)

    out: dict[str, dict] = {}
    for name, (codec_name, settings, spread) in MATH_SETTINGS.items():
        codec = build_codec(codec_name, classes, **settings)
        payload = codec.encode(teacher, np.random.default_rng(seed))
        target = codec.decode(payload) if spread else codec.decode_target(payload)
        out[name] = {"bytes_per_row": codec.bytes_per_row()}
        for kind, student in students.items():
            g, reference = grad(student, target), grad(student, exact)
            cos = (g * reference).sum(axis=1) / (
                np.linalg.norm(g, axis=1) * np.linalg.norm(reference, axis=1)
            )
            out[name][f"cosine_{kind}_student"] = round(float(cos.mean()), 5)
    return {"classes": classes, "rows": rows, "settings": out}


def dropped_mass(cache: Path, ks: list[int]) -> dict[int, float]:
    """The teacher probability a top-k cache drops into its rest bucket, for each k: the mean
    mass outside the k largest classes over every view of the fp16 cache (why a k suits a
    task). The cache is read and sorted once for all k."""
    from offline_ssld.cache.reader import CacheReader

    reader = CacheReader(cache)
    probs = np.concatenate(
        [
            reader.codec.decode({"logits": reader.load_shard(n)["logits"]})
            for n in range(len(reader.manifest.shards))
        ]
    )
    ranked = np.sort(probs, axis=1)
    return {k: float(1.0 - ranked[:, -k:].sum(axis=1).mean()) for k in ks}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, v in results["accuracy"].items():
        ci = v["ci95"] or 0.0
        ax.errorbar(v["bytes_per_row"], 100 * v["mean"], yerr=100 * ci, fmt="o", capsize=3)
        ax.annotate(
            name,
            (v["bytes_per_row"], 100 * v["mean"]),
            fontsize=7,
            xytext=(4, 2),
            textcoords="offset points",
        )
    ax.set_xlabel(f"bytes per stored view ({results['settings'].get('classes', 10)} classes)")
    ax.set_ylabel("student top-1 (%), mean ± 95% CI")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@click.command()
@click.option(
    "--task",
    type=click.Choice(sorted(TASKS)),
    default="fmnist",
    show_default=True,
    help="fmnist: Fashion-MNIST's 10 classes at 32x32; pairs: 100 classes, two garments "
    "side by side at 64x32 (pipelines.fashion_mnist.prepare_pairs).",
)
@click.option("--images", type=int, default=4000, show_default=True, help="Train images.")
@click.option("--val-images", type=int, default=1000, show_default=True)
@click.option("--teacher-epochs", type=int, default=3, show_default=True)
@click.option("--epochs", type=int, default=3, show_default=True, help="Student epochs.")
@click.option("--views", type=int, default=4, show_default=True)
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Training batch of teacher and students (default: each config's own, its lr tuned to it).",
)
@click.option(
    "--settings",
    "only",
    default=",".join(SETTINGS),
    show_default=True,
    help="Codec settings to train, comma-separated.",
)
@click.option("--workdir", type=click.Path(path_type=Path), default=None)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option("--out", type=click.Path(path_type=Path), default=None)
@click.option("--quiet", is_flag=True)
def main(
    task,
    images,
    val_images,
    teacher_epochs,
    epochs,
    views,
    seeds,
    batch_size,
    only,
    workdir,
    data_dir,
    out,
    quiet,
) -> None:
    """Student accuracy against bytes per row for each codec on Fashion-MNIST, and the
    1000-class gradient check, over interleaved seeds.

    \b
    Example:
      python benchmarks/codec_accuracy.py --images 4000 --epochs 3 --seeds 0,1,2
    """
    from offline_ssld.cache.codecs import build_codec
    from offline_ssld.config.loading import load_config
    from offline_ssld.config.offline import CacheMember
    from offline_ssld.dump import run_dump
    from offline_ssld.tools.merge import merge_caches
    from offline_ssld.train import train

    names = [n.strip() for n in only.split(",")]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise click.BadParameter(f"{unknown[0]!r}; known: {', '.join(SETTINGS)}")
    preset = Preset(images, val_images, teacher_epochs, epochs, views, batch_size)
    spec = TASKS[task]
    data_dir = (
        data_dir or ROOT / "data" / "fashion_mnist" / f"codecs{spec.suffix}-{images}-{val_images}"
    ).resolve()
    workdir = (
        workdir or ROOT / "output" / "bench" / f"codec_accuracy{spec.suffix}-{images}"
    ).resolve()
    out = out or ROOT / "benchmarks" / "results" / f"codec_accuracy{spec.suffix}.json"
    progress = not quiet
    spec.prepare(data_dir, preset)
    common = overrides(data_dir, workdir, preset)
    teacher_common = [*common, *spec.overrides(False)]
    student_common = [*common, *spec.overrides(True)]
    teacher_cfg = load_config(
        [str(TEACHER_CFG)],
        [
            *teacher_common,
            f"Global.epochs={teacher_epochs}",
            f"Global.output_dir={workdir / 'teacher'}",
        ],
    )
    teacher = train(teacher_cfg, "supervised", resume=True, progress=progress)
    if not (workdir / "cache" / "manifest.json").exists():
        run_dump(teacher_cfg, progress=progress)
    caches: dict[str, object] = {}
    for name in names:
        codec_name, settings, spread = SETTINGS[name]
        if codec_name == "fp16":
            path = workdir / "cache"
        else:
            path = workdir / (
                "cache_" + "_".join([codec_name, *(f"{k}{v}" for k, v in settings.items())])
            )
            if not (path / "manifest.json").exists():
                merge_caches(
                    [CacheMember(str(workdir / "cache"), 1.0)],
                    path,
                    overwrite=True,
                    codec=codec_name,
                    codec_settings=settings,
                )
        caches[name] = [str(path)] if spread else str(path)  # a list: a one-member ensemble

    seed_list = [int(s) for s in seeds.split(",")]
    runs: dict[str, dict[str, dict]] = {}
    for seed in seed_list:
        runs[str(seed)] = {}
        for name in names:
            run_dir = workdir / f"s{seed}_{name.replace(' ', '_')}"
            cfg = load_config(
                [str(STUDENT_CFG)],
                [
                    *student_common,
                    f"Offline.cache_dir={caches[name]!r}",
                    f"Global.epochs={epochs}",
                    f"Global.seed={seed}",
                    f"Global.output_dir={run_dir}",
                    "Arch.models.0.Teacher.pretrained="
                    f"{workdir / 'teacher' / 'best_model.safetensors'}",
                ],
            )
            tick = time.perf_counter()
            mode = "ensemble" if isinstance(caches[name], list) else "offline"
            res = train(cfg, mode, resume=True, progress=progress)
            runs[str(seed)][name] = {
                "top1": round(res.last_top1, 5),
                "seconds": round(time.perf_counter() - tick, 1),
            }

    top_ks = sorted({SETTINGS[n][1]["k"] for n in names if SETTINGS[n][0] == "topk"})
    dropped = dropped_mass(workdir / "cache", top_ks) if top_ks else {}
    accuracy = {}
    for name in names:
        codec_name, settings, _ = SETTINGS[name]
        accuracy[name] = {
            **mean_ci([runs[str(s)][name]["top1"] for s in seed_list]),
            "bytes_per_row": build_codec(codec_name, spec.classes, **settings).bytes_per_row(),
            "dropped_mass": round(dropped[settings["k"]], 5) if codec_name == "topk" else None,
            "minus_fp16": (
                mean_ci(
                    [runs[str(s)][name]["top1"] - runs[str(s)]["fp16"]["top1"] for s in seed_list]
                )
                if "fp16" in names
                else None
            ),
        }
    results = {
        "benchmark": "codec_accuracy",
        "command": reproduce_command(),
        "machine": machine_info(),
        "settings": {
            "task": task,
            "classes": spec.classes,
            "train_images": images,
            "val_images": val_images,
            "teacher_epochs": teacher_epochs,
            "student_epochs": epochs,
            "views": views,
            "batch_size": batch_size,
            "seeds": seed_list,
            "teacher_recipe": recipe(teacher_cfg),
            "student_recipe": recipe(load_config([str(STUDENT_CFG)], student_common)),
        },
        "teacher_top1": round(teacher.best_top1, 5),
        "runs": runs,
        "accuracy": accuracy,
        "math_1000_classes": math_part() if spec.math else None,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out.with_suffix(".png"))
    click.echo(json.dumps(accuracy, indent=1))


if __name__ == "__main__":
    main()
