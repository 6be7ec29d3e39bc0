"""SSLD's unlabeled data, mined from a pool by the teacher, on Fashion-MNIST, in ONE run.

The label-free SSLD setting of PaddleClas's SSLD docs, scaled to a CPU:

- the task is 8 of Fashion-MNIST's 10 classes (0-7); a small labeled set of them trains the
  teacher (ResNet18);
- a pool of unlabeled training images mixes the task's classes with the two held-out
  classes (8 Bag, 9 Ankle boot: out of distribution), plus planted near-duplicates of
  evaluation images (PNG re-encoded as JPEG, resized, or cropped by 1 pixel a side);
- the teacher is dumped ONCE over labeled + pool; `offline-ssld select` takes the top K per
  class from that cache, excluding copies of the evaluation list;
- the same student (MobileNetV3_small_x0_35, DML loss, same epochs) trains from subsets of
  that one cache: the labeled set only; labeled + a random draw from the pool of the
  selected set's size; labeled + the selected set; labeled + the whole pool; and, as the
  baseline distillation must beat, the student alone on the labeled set with its labels
  (cross-entropy, no teacher). Seeds are interleaved (every arm of seed 0, then of seed 1,
  ...) so machine load hits all arms alike.

Writes benchmarks/results/ssld_pool.json; `benchmarks/report.py` renders the README table.

    python pipelines/ssld_pool.py --labeled 1000 --pool 4000 --per-class 250 --seeds 0,1,2
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import click
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, mean_ci, recipe, reproduce_command  # noqa: E402
from pipelines.fashion_mnist import IDX_DIR, STUDENT_CFG, TEACHER_CFG, read_idx  # noqa: E402

TASK_CLASSES = 8  # Fashion-MNIST classes 0-7; 8 (Bag) and 9 (Ankle boot) are out of it
ARMS = ("student_only", "labeled", "random", "selected", "pool")


def _near_copy(img: np.ndarray, kind: str) -> bytes:
    """An encoded near-duplicate of a 28x28 gray image: what a web crawl would hold."""
    if kind == "jpeg":
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 70])
    elif kind == "resize":
        ok, buf = cv2.imencode(".png", cv2.resize(img, (36, 36), interpolation=cv2.INTER_AREA))
    else:  # crop one pixel off each side (about 7% of the area), back to 28x28
        ok, buf = cv2.imencode(".png", cv2.resize(img[1:-1, 1:-1], (28, 28)))
    assert ok
    return buf.tobytes()


def prepare(data_dir: Path, labeled: int, pool: int, val: int, duplicates: int) -> dict:
    """Images and lists; returns the ground truth the lists do not carry (pool classes,
    planted copies). Idempotent for the same sizes."""
    marker = data_dir / "prepared.json"
    want = {"labeled": labeled, "pool": pool, "val": val, "duplicates": duplicates}
    if marker.exists() and json.loads(marker.read_text())["sizes"] == want:
        return json.loads(marker.read_text())
    images = read_idx(IDX_DIR / "train-images-idx3-ubyte.gz")
    labels = read_idx(IDX_DIR / "train-labels-idx1-ubyte.gz")
    in_task = np.flatnonzero(labels < TASK_CLASSES)
    lab_idx = in_task[:labeled]
    pool_idx = np.arange(lab_idx[-1] + 1, lab_idx[-1] + 1 + pool)  # every class, as found
    v_images = read_idx(IDX_DIR / "t10k-images-idx3-ubyte.gz")
    v_labels = read_idx(IDX_DIR / "t10k-labels-idx1-ubyte.gz")
    val_idx = np.flatnonzero(v_labels < TASK_CLASSES)[:val]
    for sub in ("labeled", "pool", "val"):
        (data_dir / "images" / sub).mkdir(parents=True, exist_ok=True)

    def png(img: np.ndarray) -> bytes:
        ok, buf = cv2.imencode(".png", img)
        assert ok
        return buf.tobytes()

    lines: dict[str, list[str]] = {"labeled": [], "pool": [], "val": []}
    for i in lab_idx:
        rel = f"images/labeled/{i:05d}.png"
        (data_dir / rel).write_bytes(png(images[i]))
        lines["labeled"].append(f"{rel} {labels[i]}\n")
    pool_class: dict[str, int] = {}
    for i in pool_idx:
        rel = f"images/pool/{i:05d}.png"
        (data_dir / rel).write_bytes(png(images[i]))
        lines["pool"].append(f"{rel}\n")  # no label: unlabeled
        pool_class[rel] = int(labels[i])
    for i in val_idx:
        rel = f"images/val/{i:05d}.png"
        (data_dir / rel).write_bytes(png(v_images[i]))
        lines["val"].append(f"{rel} {v_labels[i]}\n")
    planted: dict[str, str] = {}
    rng = np.random.default_rng(0)
    for n, i in enumerate(rng.choice(val_idx, size=duplicates, replace=False)):
        kind = ("jpeg", "resize", "crop")[n % 3]
        rel = f"images/pool/dup{n:04d}_{kind}.{'jpg' if kind == 'jpeg' else 'png'}"
        (data_dir / rel).write_bytes(_near_copy(v_images[i], kind))
        lines["pool"].append(f"{rel}\n")
        pool_class[rel] = int(v_labels[i])
        planted[rel] = f"images/val/{i:05d}.png"
    order = rng.permutation(len(lines["pool"]))  # planted copies spread through the pool
    lines["pool"] = [lines["pool"][j] for j in order]
    for name, rows in lines.items():
        (data_dir / f"{name}_list.txt").write_text("".join(rows))
    (data_dir / "union_list.txt").write_text("".join(lines["labeled"] + lines["pool"]))
    truth = {"sizes": want, "pool_class": pool_class, "planted": planted}
    marker.write_text(json.dumps(truth))
    return truth


def _list_paths(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


@click.command()
@click.option("--labeled", type=int, default=1000, show_default=True, help="Labeled images.")
@click.option("--pool", type=int, default=4000, show_default=True, help="Pool images.")
@click.option("--val-images", type=int, default=1000, show_default=True)
@click.option("--duplicates", type=int, default=60, show_default=True, help="Planted copies.")
@click.option("--per-class", type=int, default=250, show_default=True, help="select's K.")
@click.option("--teacher-epochs", type=int, default=8, show_default=True)
@click.option("--epochs", type=int, default=4, show_default=True, help="Student epochs.")
@click.option("--views", type=int, default=2, show_default=True)
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--workdir", type=click.Path(path_type=Path), default=None)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Results JSON (default benchmarks/results/ssld_pool.json).",
)
@click.option("--quiet", is_flag=True)
def main(
    labeled,
    pool,
    val_images,
    duplicates,
    per_class,
    teacher_epochs,
    epochs,
    views,
    seeds,
    batch_size,
    workdir,
    data_dir,
    out,
    quiet,
) -> None:
    """Label-free SSLD on Fashion-MNIST: a teacher-selected unlabeled set against the
    labeled set alone, a random draw of the same size and the whole pool, over seeds.

    \b
    Example:
      python pipelines/ssld_pool.py --labeled 1000 --pool 4000 --per-class 250 --seeds 0,1,2
    """
    from offline_ssld.config.loading import load_config
    from offline_ssld.dump import run_dump
    from offline_ssld.tools.select import select
    from offline_ssld.train import train

    tag = f"{labeled}-{pool}-{duplicates}"
    data_dir = (data_dir or ROOT / "data" / "fashion_mnist" / f"pool-{tag}").resolve()
    workdir = (workdir or ROOT / "output" / "bench" / f"ssld_pool-{tag}").resolve()
    out = out or ROOT / "benchmarks" / "results" / "ssld_pool.json"
    progress = not quiet
    seed_list = [int(s) for s in seeds.split(",")]
    truth = prepare(data_dir, labeled, pool, val_images, duplicates)
    classes = [
        f"Arch.class_num={TASK_CLASSES}",
        f"DataLoader.Eval.dataset.image_root={data_dir}",
        f"DataLoader.Eval.dataset.cls_label_path={data_dir / 'val_list.txt'}",
        f"DataLoader.Train.dataset.image_root={data_dir}",
        f"DataLoader.Train.sampler.batch_size={batch_size}",
        "Global.device=cpu",
    ]
    cache = workdir / "cache"
    teacher_dir = workdir / "teacher"
    weights = teacher_dir / "best_model.safetensors"

    # 1. the teacher learns the labeled set only
    teacher_cfg = load_config(
        [str(TEACHER_CFG)],
        [
            *classes,
            f"DataLoader.Train.dataset.cls_label_path={data_dir / 'labeled_list.txt'}",
            f"Global.epochs={teacher_epochs}",
            f"Global.output_dir={teacher_dir}",
        ],
    )
    teacher = train(teacher_cfg, "supervised", resume=True, progress=progress)

    # 2. one dump over labeled + pool
    dump_cfg = load_config(
        [str(TEACHER_CFG)],
        [
            *classes,
            f"DataLoader.Train.dataset.cls_label_path={data_dir / 'union_list.txt'}",
            f"Offline.cache_dir={cache}",
            f"Offline.views={views}",
            f"Offline.teacher_weights={weights}",
        ],
    )
    tick = time.perf_counter()
    if not (cache / "manifest.json").exists():
        run_dump(dump_cfg, progress=progress)
    dump_seconds = time.perf_counter() - tick

    def student_cfg(list_path: Path, output: Path, seed: int) -> dict:
        return load_config(
            [str(STUDENT_CFG)],
            [
                *classes,
                f"Arch.models.0.Teacher.class_num={TASK_CLASSES}",
                f"Arch.models.1.Student.class_num={TASK_CLASSES}",
                f"Arch.models.0.Teacher.pretrained={weights}",
                f"DataLoader.Train.dataset.cls_label_path={list_path}",
                f"Offline.cache_dir={cache}",
                f"Offline.views={views}",
                f"Global.epochs={epochs}",
                f"Global.output_dir={output}",
                f"Global.seed={seed}",
            ],
        )

    # 3. select from the cache, never running the teacher; evaluation copies excluded
    selected_list = workdir / "selected.txt"
    tick = time.perf_counter()
    selection = select(
        student_cfg(data_dir / "pool_list.txt", workdir / "select", 0),
        per_class,
        [str(data_dir / "val_list.txt")],
        selected_list,
        data_dir,
        labels="none",
        overwrite=True,
    )
    select_seconds = time.perf_counter() - tick
    selected = _list_paths(selected_list)
    pool_paths = _list_paths(data_dir / "pool_list.txt")
    labeled_lines = (data_dir / "labeled_list.txt").read_text()

    def write_list(name: str, paths: list[str]) -> Path:
        path = workdir / "lists" / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(labeled_lines + "".join(f"{p}\n" for p in paths))
        return path

    def ood_share(paths: list[str]) -> float:
        return sum(truth["pool_class"][p] >= TASK_CLASSES for p in paths) / max(len(paths), 1)

    planted = set(truth["planted"])
    removed = {d.pool_path for d in selection.duplicates} & planted
    sets: dict[int, dict[str, list[str]]] = {}
    for seed in seed_list:
        draw = np.random.default_rng(1000 + seed).choice(len(pool_paths), len(selected), False)
        sets[seed] = {
            "student_only": [],
            "labeled": [],
            "random": [pool_paths[i] for i in sorted(draw)],
            "selected": selected,
            "pool": pool_paths,
        }

    # 4. the arms, seeds interleaved
    runs: dict[str, dict[str, dict]] = {}
    for seed in seed_list:
        runs[str(seed)] = {}
        for arm in ARMS:
            list_path = write_list(f"{arm}_s{seed}", sets[seed][arm])
            tick = time.perf_counter()
            res = train(
                student_cfg(list_path, workdir / f"s{seed}_{arm}", seed),
                "supervised" if arm == "student_only" else "offline",
                resume=True,
                progress=progress,
            )
            runs[str(seed)][arm] = {
                "top1": round(res.last_top1, 5),
                "best_top1": round(res.best_top1, 5),
                "seconds": round(time.perf_counter() - tick, 1),
            }

    summary = {
        arm: {
            **mean_ci([runs[str(s)][arm]["top1"] for s in seed_list]),
            "extra_images": statistics.fmean(len(sets[s][arm]) for s in seed_list),
            "ood_share": round(statistics.fmean(ood_share(sets[s][arm]) for s in seed_list), 4),
            "planted_duplicates_in_set": max(len(planted & set(sets[s][arm])) for s in seed_list),
        }
        for arm in ARMS
    }
    paired = {
        f"selected_minus_{arm}": mean_ci(
            [runs[str(s)]["selected"]["top1"] - runs[str(s)][arm]["top1"] for s in seed_list]
        )
        for arm in ARMS
        if arm != "selected"
    }
    results = {
        "benchmark": "ssld_pool",
        "command": reproduce_command(),
        "machine": machine_info(),
        "settings": {
            "labeled": labeled,
            "pool": pool,
            "planted_duplicates": duplicates,
            "val_images": val_images,
            "per_class": per_class,
            "task_classes": TASK_CLASSES,
            "teacher_epochs": teacher_epochs,
            "student_epochs": epochs,
            "views": views,
            "batch_size": batch_size,
            "seeds": seed_list,
            "student_recipe": recipe(load_config([str(STUDENT_CFG)], classes)),
        },
        "teacher": {"arch": "ResNet18", "top1": round(teacher.best_top1, 5)},
        "pool_ood_share": round(ood_share(pool_paths), 4),
        "selection": {
            "selected": len(selected),
            "short_classes": selection.short,
            "duplicates_refused": len(selection.duplicates),
            "planted": len(planted),
            "planted_removed": len(removed),
            "false_duplicates": len({d.pool_path for d in selection.duplicates} - planted),
            "seconds": round(select_seconds, 1),
        },
        "dump_seconds": round(dump_seconds, 1),
        "runs": runs,
        "summary": summary,
        "paired": paired,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    click.echo(json.dumps({"summary": summary, "selection": results["selection"]}, indent=1))


if __name__ == "__main__":
    main()
