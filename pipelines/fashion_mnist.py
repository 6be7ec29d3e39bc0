"""End-to-end recipe on Fashion-MNIST (Debian's `dataset-fashion-mnist`):

    prepare -> teacher (supervised) -> dump -> student (offline SSLD)
            -> student only (the same student, labels alone: the baseline) -> eval -> report

The baseline is the same student config and seed trained without the teacher, so the report
shows what distillation added (or lost) on this preset, not just a top-1. A preset may add
SSLD's unlabeled images: the teacher and the baseline learn the labeled images, the teacher
is dumped over labeled + unlabeled, and the distilled student learns the teacher's outputs
on all of them; the report counts what each model saw. Each
stage is skipped when its output is already complete, so an interrupted run picks up where
it stopped. The teacher/student pair is ResNet18 -> MobileNetV3_small_x0_35 at 32x32:
ResNet18 leads the small student by several points within a CPU budget, so distillation
has something to transfer (see README, "Choosing the pair").

    python pipelines/fashion_mnist.py --preset quick
"""

from __future__ import annotations

import gzip
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
TEACHER_CFG = ROOT / "configs/fashion_mnist/resnet18_teacher.yaml"
STUDENT_CFG = ROOT / "configs/fashion_mnist/mnv3_x0_35_student.yaml"


@dataclass(frozen=True)
class Preset:
    train_images: int
    val_images: int
    teacher_epochs: int
    student_epochs: int
    views: int
    batch_size: int | None  # None: each config's own (its lr is tuned to it)
    # extra `-o` overrides of the teacher config alone (its own recipe, e.g. batch and lr)
    teacher_overrides: tuple[str, ...] = ()
    # evaluate and keep an epoch_N checkpoint after the last epoch only (not every epoch):
    # the pipeline reports the last epoch anyway, and each eval recalibrates BatchNorm first
    final_only: bool = False
    # SSLD's unlabeled images: the next training images after the labeled ones, listed without
    # labels. Only the distilled student sees them, through the teacher's cache; the teacher
    # and the student-only baseline learn the labeled images alone
    unlabeled_images: int = 0
    # the distilled student's epochs when not student_epochs: with unlabeled images each of
    # its epochs is longer than the baseline's
    distill_epochs: int | None = None

    @property
    def epochs(self) -> dict[str, int]:
        """Each student's epochs, by output directory."""
        return {
            "student": self.distill_epochs or self.student_epochs,
            "student_only": self.student_epochs,
        }


def schedule(preset: Preset, epochs: int) -> list[str]:
    """A stage's epochs and, with `final_only`, its eval and checkpoint interval."""
    final = [f"Global.eval_interval={epochs}", f"Global.save_interval={epochs}"]
    return [f"Global.epochs={epochs}", *(final if preset.final_only else [])]


PRESETS = {
    "smoke": Preset(256, 128, 1, 1, 2, 64),
    # the quick start: at most 10 minutes with setup on 2 cores (README, "Quick start"), with
    # SSLD's unlabeled images (2000 labeled + 2000 unlabeled: +6.2 and +1.9 points at seeds 0
    # and 1; 4000 unlabeled at 4 epochs gave +7.5 and -1.9). Its ResNet18 teacher (67.5%) is
    # the ceiling: the margin is one noisy sample, check it over seeds with --seed.
    "quick": Preset(
        2000,
        1000,
        4,
        8,
        2,
        None,
        ("DataLoader.Train.sampler.batch_size=32", "Optimizer.lr.learning_rate=0.05"),
        final_only=True,
        unlabeled_images=2000,
    ),
    "small": Preset(4000, 1000, 3, 6, 4, None),  # the longer run (teacher and two students)
    "bench": Preset(6000, 2000, 5, 8, 4, None),  # the online-vs-offline benchmark's data
    "full": Preset(60000, 10000, 12, 16, 8, None),
}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip): big-endian dims after a magic whose last byte is the rank."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    rank = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=rank, offset=4).astype(int)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def _idx(idx_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one Fashion-MNIST split ("train" or "t10k")."""
    if not (idx_dir / f"{prefix}-images-idx3-ubyte.gz").exists():
        raise click.ClickException(
            f"{idx_dir}: Fashion-MNIST not found; install it with "
            "`apt-get install dataset-fashion-mnist`"
        )
    return (
        read_idx(idx_dir / f"{prefix}-images-idx3-ubyte.gz"),
        read_idx(idx_dir / f"{prefix}-labels-idx1-ubyte.gz"),
    )


def _write_split(
    data_dir: Path, split: str, images: list[np.ndarray], labels: list[int] | None
) -> None:
    """PNGs under images/<split>/ and the PaddleClas list <split>_list.txt; without labels,
    each line is the path alone (an unlabeled image)."""
    folder = data_dir / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, img in enumerate(images):
        rel = f"images/{split}/{i:05d}.png"
        ok, buf = cv2.imencode(".png", img)
        if not ok:
            raise click.ClickException(f"cannot encode {rel}")
        (data_dir / rel).write_bytes(buf.tobytes())
        lines.append(f"{rel}\n" if labels is None else f"{rel} {int(labels[i])}\n")
    (data_dir / f"{split}_list.txt").write_text("".join(lines))


def _prepared(data_dir: Path, want: dict) -> bool:
    marker = data_dir / "prepared.json"
    return marker.exists() and json.loads(marker.read_text()) == want


def prepare(data_dir: Path, preset: Preset, idx_dir: Path = IDX_DIR) -> None:
    """Write PNGs and PaddleClas lists (`images/train/00000.png 9`); with unlabeled images,
    also unlabeled_list.txt (paths alone) and distill_list.txt (train + unlabeled, what the
    teacher is dumped over and the distilled student learns from). Idempotent."""
    want = {
        "train": preset.train_images,
        "val": preset.val_images,
        "unlabeled": preset.unlabeled_images,
    }
    if _prepared(data_dir, want):
        return
    images, labels = _idx(idx_dir, "train")
    n = preset.train_images
    _write_split(data_dir, "train", list(images[:n]), [int(x) for x in labels[:n]])
    if preset.unlabeled_images:
        _write_split(data_dir, "unlabeled", list(images[n : n + preset.unlabeled_images]), None)
        (data_dir / "distill_list.txt").write_text(
            (data_dir / "train_list.txt").read_text()
            + (data_dir / "unlabeled_list.txt").read_text()
        )
    images, labels = _idx(idx_dir, "t10k")
    n = preset.val_images
    _write_split(data_dir, "val", list(images[:n]), [int(x) for x in labels[:n]])
    (data_dir / "prepared.json").write_text(json.dumps(want))


def distill_list(data_dir: Path, preset: Preset) -> Path:
    """The list the teacher is dumped over and the distilled student trains on."""
    name = "distill_list.txt" if preset.unlabeled_images else "train_list.txt"
    return data_dir / name


PAIR_CLASSES = 100


def prepare_pairs(data_dir: Path, train: int, val: int, idx_dir: Path = IDX_DIR) -> None:
    """A 100-class task on real images, for what 10 classes cannot show (a teacher tail of 90+
    classes): two Fashion-MNIST garments side by side (28x56), labelled 10 * left + right.
    Classes are balanced (image i is class i mod 100). Train pairs draw from Fashion-MNIST's
    train split, val pairs from its test split, each garment once before any is reused.
    Idempotent."""
    want = {"task": "pairs", "train": train, "val": val}
    if _prepared(data_dir, want):
        return
    rng = np.random.default_rng(0)
    for split, prefix, count in (("train", "train", train), ("val", "t10k", val)):
        images, labels = _idx(idx_dir, prefix)
        garments = [
            itertools.cycle(rng.permutation(np.flatnonzero(labels == c))) for c in range(10)
        ]
        pair_labels = [i % PAIR_CLASSES for i in range(count)]
        pairs = [
            np.concatenate(
                [images[next(garments[y // 10])], images[next(garments[y % 10])]], axis=1
            )
            for y in pair_labels
        ]
        _write_split(data_dir, split, pairs, pair_labels)
    (data_dir / "prepared.json").write_text(json.dumps(want))


def pair_overrides(distillation: bool) -> list[str]:
    """Config keys that run the shipped 10-class configs on the pairs task: 100 classes, 64x32
    inputs (each garment at the 32 px of the 10-class task), random crops of the pair's 2:1
    aspect (PaddleClas's default ratio range, doubled)."""
    crop = "DataLoader.Train.dataset.transform_ops.1.RandCropImage"
    resize = "DataLoader.Eval.dataset.transform_ops.1.ResizeImage"
    heads = (
        [
            f"Arch.models.{i}.{m}.class_num={PAIR_CLASSES}"
            for i, m in enumerate(("Teacher", "Student"))
        ]
        if distillation
        else []
    )
    return [
        f"Arch.class_num={PAIR_CLASSES}",
        *heads,
        f"{crop}.size=[64, 32]",
        f"{crop}.ratio=[1.5, 2.6667]",
        f"{resize}.size=[64, 32]",
    ]


def overrides(data_dir: Path, work: Path, preset: Preset) -> list[str]:
    """Point the shipped configs at this run's data, outputs and sizes. The training batch is
    left to each config unless the preset sets one: a config's lr is tuned to its batch."""
    batch = (
        []
        if preset.batch_size is None
        else [f"DataLoader.Train.sampler.batch_size={preset.batch_size}"]
    )
    return [
        f"DataLoader.Train.dataset.image_root={data_dir}",
        f"DataLoader.Train.dataset.cls_label_path={data_dir / 'train_list.txt'}",
        f"DataLoader.Eval.dataset.image_root={data_dir}",
        f"DataLoader.Eval.dataset.cls_label_path={data_dir / 'val_list.txt'}",
        *batch,
        f"Offline.cache_dir={work / 'cache'}",
        f"Offline.views={preset.views}",
        f"Offline.teacher_weights={work / 'teacher' / 'best_model.safetensors'}",
        "Global.device=cpu",
    ]


def seen(list_path: Path) -> dict[str, int]:
    """Labeled and unlabeled images in a list (a line with a path alone is unlabeled)."""
    from offline_ssld.data.lists import UNLABELED, read_list

    samples = read_list(list_path)
    unlabeled = sum(s.label == UNLABELED for s in samples)
    return {"labeled": len(samples) - unlabeled, "unlabeled": unlabeled}


def finished(output_dir: Path, epochs: int) -> bool:
    info = output_dir / "latest.json"
    return info.exists() and json.loads(info.read_text()).get("epoch") == epochs


def stage(name: str) -> None:
    click.echo(f"== stage: {name}", err=True)


def run(preset_name: str, work: Path, data_dir: Path, progress: bool, seed: int = 0) -> dict:
    from offline_ssld.config.loading import load_config
    from offline_ssld.dump import run_dump
    from offline_ssld.train import evaluate_config, train

    preset = PRESETS[preset_name]
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    common = [*overrides(data_dir, work, preset), f"Global.seed={seed}"]

    stage("prepare")
    tick = time.perf_counter()
    prepare(data_dir, preset)
    timings["prepare"] = time.perf_counter() - tick

    # the teacher learns the labeled images; it is dumped over them and the unlabeled ones
    distilled = f"DataLoader.Train.dataset.cls_label_path={distill_list(data_dir, preset)}"

    def teacher_cfg(*extra: str) -> dict:
        return load_config(
            [str(TEACHER_CFG)],
            [
                *common,
                *preset.teacher_overrides,
                *schedule(preset, preset.teacher_epochs),
                f"Global.output_dir={work / 'teacher'}",
                *extra,
            ],
        )

    stage("teacher")
    tick = time.perf_counter()
    if not finished(work / "teacher", preset.teacher_epochs):
        train(teacher_cfg(), "supervised", resume=True, progress=progress)
    timings["teacher"] = time.perf_counter() - tick

    stage("dump")
    tick = time.perf_counter()
    dump = run_dump(teacher_cfg(distilled), progress=progress)
    timings["dump"] = time.perf_counter() - tick

    def student_cfg(out_dir: str, *extra: str) -> dict:
        return load_config(
            [str(STUDENT_CFG)],
            [
                *common,
                *schedule(preset, preset.epochs[out_dir]),
                f"Global.output_dir={work / out_dir}",
                f"Arch.models.0.Teacher.pretrained={work / 'teacher' / 'best_model.safetensors'}",
                *extra,
            ],
        )

    # the distilled student (labeled + unlabeled images, the teacher's outputs alone), then
    # the same student from the labeled images' labels alone (as benchmarks/online_vs_offline.py's
    # student-only mode): same config, epochs and seed
    for name, mode, extra in (
        ("student", "offline", (distilled,)),
        ("student_only", "supervised", ()),
    ):
        stage(name.replace("_", " "))
        tick = time.perf_counter()
        if not finished(work / name, preset.epochs[name]):
            train(student_cfg(name, *extra), mode, resume=True, progress=progress)
        timings[name] = time.perf_counter() - tick

    stage("eval")
    tick = time.perf_counter()
    teacher_top1 = evaluate_config(
        load_config(
            [str(TEACHER_CFG)],
            [*common, f"Global.pretrained_model={work / 'teacher' / 'best_model'}"],
        )
    )["top1"]
    student_top1, only_top1 = (
        evaluate_config(
            load_config(
                [str(STUDENT_CFG)],
                [*common, f"Global.pretrained_model={work / name / 'best_model'}"],
            )
        )["top1"]
        for name in ("student", "student_only")
    )
    difference = student_top1 - only_top1
    timings["eval"] = time.perf_counter() - tick

    stage("report")
    # what each model trained on, counted from the lists it read
    labeled = seen(data_dir / "train_list.txt")
    saw = {
        "teacher": labeled,
        "student": seen(distill_list(data_dir, preset)),
        "student_only": labeled,
    }
    epochs = {"teacher": preset.teacher_epochs, **preset.epochs}
    report: dict[str, Any] = {
        "preset": preset_name,
        "seed": seed,
        "settings": asdict(preset),
        "teacher": {
            "name": "ResNet18",
            "top1": teacher_top1,
            "images": saw["teacher"],
            "epochs": epochs["teacher"],
        },
        "student": {
            "name": "MobileNetV3_small_x0_35",
            "top1": student_top1,
            "mode": "offline (the teacher's cached outputs, no labels)",
            "images": saw["student"],
            "epochs": epochs["student"],
        },
        "student_only": {
            "name": "MobileNetV3_small_x0_35",
            "top1": only_top1,
            "mode": "supervised (labels, no teacher)",
            "images": saw["student_only"],
            "epochs": epochs["student_only"],
        },
        "student_minus_student_only": {"top1": difference},
        "cache": {
            "rows": dump.manifest.rows,
            "views": dump.manifest.views,
            "bytes": sum(s.bytes for s in dump.manifest.shards),
        },
        "stage_seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    (work / "report.json").write_text(json.dumps(report, indent=1) + "\n")

    def row(model: str, top1: float, key: str, learns: str) -> str:
        n = saw[key]
        return (
            f"| {model} | {n['labeled']} | {n['unlabeled']} | {epochs[key]} | {learns} "
            f"| {top1:.4f} |\n"
        )

    (work / "report.md").write_text(
        f"# Fashion-MNIST pipeline, preset `{preset_name}`\n\n"
        "| model | labeled images | unlabeled images | epochs | learns from | top-1 |\n"
        "|---|---|---|---|---|---|\n"
        + row("teacher ResNet18", teacher_top1, "teacher", "labels")
        + row(
            "student MobileNetV3_small_x0_35, offline SSLD",
            student_top1,
            "student",
            f"the teacher's cached outputs ({dump.manifest.views} views an image), no labels",
        )
        + row(
            "student MobileNetV3_small_x0_35 alone",
            only_top1,
            "student_only",
            "labels, no teacher",
        )
        + f"\nOffline SSLD minus the student alone: **{100 * difference:+.2f} points** (same "
        f"student, preset and seed {seed}; best checkpoint of each). The student alone cannot "
        "learn from the unlabeled images (they have no label): using them through the teacher "
        "is what SSLD adds. One run each, so this is one paired "
        "sample, not an interval: between seeds, short CPU runs can differ by several points "
        "(README, the multi-seed benchmarks).\n\n"
        + "| stage | seconds |\n|---|---|\n"
        + "".join(f"| {k} | {v:.1f} |\n" for k, v in report["stage_seconds"].items())
    )
    return report


@click.command()
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default="quick",
    show_default=True,
    help="smoke: seconds (CI); quick: the quick start (10 minutes with setup on 2 cores); "
    "small: longer, larger margin; full: all 60,000 images.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Outputs (default output/pipeline/<preset>).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Converted images and lists (default data/fashion_mnist/<preset>).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Global.seed of every stage (the teacher and both students).",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option(
    "--prepare-only",
    is_flag=True,
    help="Only convert the data (images + PaddleClas lists) into --data-dir.",
)
def main(preset, workdir, data_dir, seed, quiet, prepare_only) -> None:
    """Fashion-MNIST end to end: prepare, train the teacher, dump it, train the student
    offline and, as the baseline, the same student without the teacher, evaluate, report
    both students side by side (workdir/report.json and report.md). Re-running skips the
    stages that are complete.

    \b
    Example:
      python pipelines/fashion_mnist.py --preset quick
    """
    workdir = (workdir or Path("output/pipeline") / preset).resolve()
    data_dir = (data_dir or Path("data/fashion_mnist") / preset).resolve()
    if prepare_only:
        prepare(data_dir, PRESETS[preset])
        click.echo(f"prepared {data_dir} (train_list.txt, val_list.txt, images/)")
        return
    from offline_ssld.errors import OfflineSSLDError

    try:
        report = run(preset, workdir, data_dir, progress=not quiet, seed=seed)
    except OfflineSSLDError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo((workdir / "report.md").read_text())
    click.echo(json.dumps(report["stage_seconds"]))


if __name__ == "__main__":
    main()
