"""Data-free distillation (DAFL) measured in one run on Fashion-MNIST:

    prepare -> teacher on real images -> synthesize (DAFL generator) -> for each source
    {generated, noise, real}: dump-teacher -> train-student (offline SSLD) -> eval

Three students of the same size, schedule and image count differ only in the images the
teacher labels: DAFL's generated images (data-free), uniform random noise (the floor: what
the teacher's outputs alone teach) and the real training images (the ceiling). All are
evaluated on the real validation images. Stages that are complete are skipped on a re-run.

    python pipelines/data_free.py --preset real --out benchmarks/results/data_free.json
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.fashion_mnist import (  # noqa: E402
    STUDENT_CFG,
    TEACHER_CFG,
    Preset,
    finished,
    overrides,
    prepare,
    stage,
)

SOURCES = ("datafree", "noise", "real")
IMAGE_SIZE = 32  # the teacher's view size in the Fashion-MNIST configs


@dataclass(frozen=True)
class DataFreePreset:
    data: Preset  # images, epochs, views, batch: as the Fashion-MNIST pipeline's presets
    synth_steps: int
    synth_batch: int
    generator_channels: int


PRESETS = {
    "smoke": DataFreePreset(Preset(256, 128, 1, 1, 1, 64), 4, 32, 32),  # CI: under 2 minutes
    "real": DataFreePreset(Preset(3000, 1000, 4, 5, 1, 128), 100, 64, 64),  # ~45 min, 2 cores
}


def write_noise(folder: Path, count: int, seed: int) -> Path:
    """`count` grey uniform-noise PNGs and their unlabeled list; idempotent."""
    list_path = folder / "list.txt"
    if list_path.exists() and len(list_path.read_text().splitlines()) == count:
        return list_path
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"images/{i:06d}.png"
        ok, buf = cv2.imencode(".png", rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE), np.uint8))
        if not ok:
            raise click.ClickException(f"cannot encode {name}")
        (folder / name).write_bytes(buf.tobytes())
        names.append(name)
    list_path.write_text("".join(f"{n}\n" for n in names))
    return list_path


def run(preset_name: str, work: Path, data_dir: Path, progress: bool, command: str) -> dict:
    from benchmarks.common import machine_info
    from offline_ssld.config.loading import load_config
    from offline_ssld.dump import run_dump
    from offline_ssld.tools.datafree import synthesize
    from offline_ssld.train import evaluate_config, train

    p = PRESETS[preset_name]
    work.mkdir(parents=True, exist_ok=True)
    teacher_w = work / "teacher" / "best_model.safetensors"
    common = overrides(data_dir, work, p.data)
    seconds: dict[str, float] = {}

    def timed(name: str, fn, *args, **kwargs):
        stage(name)
        tick = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - tick, 2)
        return out

    timed("prepare", prepare, data_dir, p.data)
    teacher_cfg = load_config(
        [str(TEACHER_CFG)],
        [
            *common,
            f"Global.epochs={p.data.teacher_epochs}",
            f"Global.output_dir={work / 'teacher'}",
        ],
    )
    if not finished(work / "teacher", p.data.teacher_epochs):
        timed("teacher", train, teacher_cfg, "supervised", resume=True, progress=progress)
    synth_cfg = load_config(
        [str(TEACHER_CFG)],
        [
            *common,
            f"DataFree.output_dir={work / 'synth'}",
            f"DataFree.images={p.data.train_images}",
            f"DataFree.image_size={IMAGE_SIZE}",
            "DataFree.channels=1",
            f"DataFree.steps={p.synth_steps}",
            f"DataFree.batch_size={p.synth_batch}",
            f"DataFree.generator_channels={p.generator_channels}",
        ],
    )
    synth = timed("synthesize", synthesize, synth_cfg, progress=progress)
    lists = {
        "datafree": (work / "synth", synth.list_path),
        "noise": (
            work / "noise",
            timed("noise", write_noise, work / "noise", synth_cfg["DataFree"]["images"], 0),
        ),
        "real": (data_dir, data_dir / "train_list.txt"),
    }
    students: dict[str, dict] = {}
    for source, (root, list_path) in lists.items():
        data = [
            f"DataLoader.Train.dataset.image_root={root}",
            f"DataLoader.Train.dataset.cls_label_path={list_path}",
            f"Offline.cache_dir={work / 'cache' / source}",
        ]
        dump = timed(
            f"dump_{source}",
            run_dump,
            load_config([str(TEACHER_CFG)], [*common, *data]),
            progress=progress,
        )
        out = work / "student" / source
        student_cfg = load_config(
            [str(STUDENT_CFG)],
            [
                *common,
                *data,
                f"Global.epochs={p.data.student_epochs}",
                f"Global.output_dir={out}",
                f"Arch.models.0.Teacher.pretrained={teacher_w}",
            ],
        )
        if not finished(out, p.data.student_epochs):
            timed(
                f"student_{source}", train, student_cfg, "offline", resume=True, progress=progress
            )
        final = evaluate_config(
            load_config([str(STUDENT_CFG)], [*common, f"Global.pretrained_model={out / 'latest'}"])
        )["top1"]
        students[source] = {
            "top1": round(final, 5),
            "best_top1": json.loads((out / "latest.json").read_text())["best_top1"],
            "train_images": dump.manifest.num_images,
            "cache_rows": dump.manifest.rows,
        }
    teacher_top1 = evaluate_config(
        load_config(
            [str(TEACHER_CFG)],
            [*common, f"Global.pretrained_model={work / 'teacher' / 'best_model'}"],
        )
    )["top1"]
    return {
        "preset": preset_name,
        "command": command,
        "machine": machine_info(),
        "settings": {**asdict(p), "image_size": IMAGE_SIZE},
        "teacher": {"name": "ResNet18", "top1": round(teacher_top1, 5)},
        "student": {"name": "MobileNetV3_small_x0_35", "sources": students},
        "synthesis": {
            "steps": p.synth_steps,
            "last_losses": synth.losses,
            "teacher_class_counts": synth.class_counts,
            "teacher_mean_confidence": round(synth.mean_confidence, 4),
            "preview": str(work / "synth" / "preview.png"),
        },
        "stage_seconds": seconds,
    }


@click.command()
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default="real",
    show_default=True,
    help="smoke: under 2 minutes (CI); real: the measurement in the README.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Outputs (default output/data_free/<preset>).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Converted Fashion-MNIST (default data/fashion_mnist/data_free-<preset>).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Results JSON (default <workdir>/results.json); the README table reads "
    "benchmarks/results/data_free.json.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def main(preset, workdir, data_dir, out, quiet) -> None:
    """Data-free distillation on Fashion-MNIST in one run: a ResNet18 teacher trained on real
    images, then MobileNetV3_small_x0_35 students distilled offline from DAFL-generated
    images, from random noise (floor) and from the real images (ceiling).

    \b
    Example:
      python pipelines/data_free.py --preset real --out benchmarks/results/data_free.json
      python benchmarks/report.py     # README table from the results
    """
    workdir = (workdir or ROOT / "output" / "data_free" / preset).resolve()
    data_dir = (data_dir or ROOT / "data" / "fashion_mnist" / f"data_free-{preset}").resolve()
    out = out or workdir / "results.json"
    from offline_ssld.errors import OfflineSSLDError

    command = shlex.join(["python", "pipelines/data_free.py", *sys.argv[1:]])
    try:
        result = run(preset, workdir, data_dir, progress=not quiet, command=command)
    except OfflineSSLDError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    click.echo(json.dumps({"teacher": result["teacher"], "student": result["student"]}, indent=1))


if __name__ == "__main__":
    main()
