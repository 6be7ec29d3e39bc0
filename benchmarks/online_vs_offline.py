"""Online vs offline SSLD in ONE run, over seeds: same images, epochs, batch size and student.

The teacher is trained (or drawn at random with --teacher-epochs 0) and dumped ONCE per run;
the seeds vary the student only: its init, data order, augmentation and, offline, the view
schedule. Then, seed round by seed round, every mode runs once: student-only (no KD: the
speed limit of any distillation), online SSLD (teacher in the loop, one run per BatchNorm
mode in --online-bn) and offline SSLD from the cache with the first V views for each V in
--views. The order of the modes is rotated from round to round, so machine load and the
position in the process hit every mode alike.

Accuracy is each run's last-epoch top-1 (no choice of epoch on the validation set): mean ±
std and a 95% t interval per mode, and the paired offline - online difference per seed with
its own 95% interval. Speed ratios are ratios of medians over the interleaved runs of each
run's median epoch seconds (eval excluded).

Writes a results JSON and a PNG chart; `benchmarks/report.py` turns results into README
tables. Example:

    python benchmarks/online_vs_offline.py --pair accuracy --preset bench --seeds 0,1,2
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, mean_ci, recipe, reproduce_command, rotated  # noqa: E402
from pipelines.fashion_mnist import PRESETS, overrides, prepare  # noqa: E402

PAIRS = {
    # teacher config, student config
    "accuracy": ("resnet18_teacher.yaml", "mnv3_x0_35_student.yaml"),
    "speed": ("resnet50_vd_teacher.yaml", "mnv3_small_student.yaml"),
}
TEACHER_ONCE = (
    "teacher trained and dumped once per run; the seeds vary the student (init, data order, "
    "augmentation, offline view schedule)"
)


def summarize(result, seconds: float) -> dict:
    """One run's accuracy and timings; epoch seconds are the training loop's, eval excluded."""
    epochs = result.train_seconds
    return {
        "best_top1": round(result.best_top1, 5),
        "last_top1": round(result.last_top1, 5),
        "epoch_seconds": [round(s, 2) for s in epochs],
        "median_epoch_seconds": round(statistics.median(epochs), 3),
        "median_images_per_second": round(statistics.median(result.images_per_second), 2),
        "train_seconds": round(sum(epochs), 2),
        "wall_seconds": round(seconds, 2),
    }


def aggregate(runs: dict[str, dict[str, dict]], dump_seconds: float) -> dict:
    """Per-mode mean ± CI of last-epoch top-1 and median timings over the seeds; paired
    offline - (online | student-only) differences per seed and speed ratios of medians."""
    seeds = list(runs)
    modes = list(runs[seeds[0]])

    def per_seed(mode: str, key: str) -> list[float]:
        return [runs[s][mode][key] for s in seeds]

    summary: dict = {"metric": "last_top1", "modes": {}, "comparisons": []}
    for mode in modes:
        summary["modes"][mode] = {
            "top1": mean_ci(per_seed(mode, "last_top1")),
            "best_top1": mean_ci(per_seed(mode, "best_top1")),
            "median_epoch_seconds": round(
                statistics.median(per_seed(mode, "median_epoch_seconds")), 3
            ),
            "median_images_per_second": round(
                statistics.median(per_seed(mode, "median_images_per_second")), 2
            ),
            "median_train_seconds": round(statistics.median(per_seed(mode, "train_seconds")), 2),
        }
    m = summary["modes"]
    for off in (x for x in modes if x.startswith("offline")):
        for ref in [x for x in modes if x.startswith("online")] + ["student_only"]:
            diffs = [
                round(a - b, 5)
                for a, b in zip(per_seed(off, "last_top1"), per_seed(ref, "last_top1"), strict=True)
            ]
            epoch_ratio = m[ref]["median_epoch_seconds"] / m[off]["median_epoch_seconds"]
            end_to_end = m[ref]["median_train_seconds"] / (
                m[off]["median_train_seconds"] + dump_seconds
            )
            summary["comparisons"].append(
                {
                    "offline": off,
                    "vs": ref,
                    "top1_difference": mean_ci(diffs),
                    "train_speedup": round(epoch_ratio, 3),
                    "end_to_end_speedup": None if ref == "student_only" else round(end_to_end, 3),
                }
            )
    return summary


@click.command()
@click.option(
    "--pair",
    type=click.Choice(sorted(PAIRS)),
    default="accuracy",
    show_default=True,
    help="accuracy: ResNet18 -> MobileNetV3_small_x0_35; speed: ResNet50_vd -> "
    "MobileNetV3_small_x1_0 (both at 32x32).",
)
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default="bench",
    show_default=True,
    help="Data size (as pipelines/fashion_mnist.py); the options below override it.",
)
@click.option("--images", type=int, default=None, help="Train images (default: the preset's).")
@click.option("--val-images", type=int, default=None, help="Val images (default: the preset's).")
@click.option("--batch-size", type=int, default=None, help="Default: the preset's.")
@click.option("--epochs", type=int, default=8, show_default=True, help="Student epochs.")
@click.option(
    "--teacher-epochs",
    type=int,
    default=None,
    help="Teacher epochs (default: the preset's); 0 = random teacher (speed only).",
)
@click.option(
    "--views",
    default="1,2,4",
    show_default=True,
    help="Offline runs with the first V views, for each V; the dump stores max(V).",
)
@click.option(
    "--online-bn",
    default="train",
    show_default=True,
    help="Teacher BatchNorm mode(s) for online runs: train, eval or train,eval.",
)
@click.option(
    "--seeds",
    default="0,1,2",
    show_default=True,
    help="Student seeds, one round of every mode each.",
)
@click.option("--workdir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Converted images and lists (default data/fashion_mnist/<preset>-<images>).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Results JSON (default benchmarks/results/online_vs_offline_<pair>.json).",
)
@click.option("--quiet", is_flag=True)
def main(
    pair: str,
    preset: str,
    images: int | None,
    val_images: int | None,
    batch_size: int | None,
    epochs: int,
    teacher_epochs: int | None,
    views: str,
    online_bn: str,
    seeds: str,
    workdir: Path | None,
    data_dir: Path | None,
    out: Path | None,
    quiet: bool,
) -> None:
    """Compare student-only, online SSLD and offline SSLD (dump + train-student) over
    interleaved seeds, and write a results JSON plus a PNG chart.

    \b
    Example:
      python benchmarks/online_vs_offline.py --pair accuracy --preset bench --seeds 0,1,2
    """
    from offline_ssld.config.loading import load_config
    from offline_ssld.dump import run_dump
    from offline_ssld.train import evaluate_config, train

    base = PRESETS[preset]
    view_list = sorted({int(v) for v in views.split(",")})
    bn_modes = [b.strip() for b in online_bn.split(",")]
    seed_list = [int(s) for s in seeds.split(",")]
    if len(set(seed_list)) != len(seed_list):
        raise click.BadParameter(f"{seeds!r}: seeds repeat", param_hint="--seeds")
    preset_obj = dataclasses.replace(
        base,
        train_images=images or base.train_images,
        val_images=val_images or base.val_images,
        batch_size=batch_size or base.batch_size,
        views=max(view_list),
        student_epochs=epochs,
        teacher_epochs=base.teacher_epochs if teacher_epochs is None else teacher_epochs,
    )
    teacher_epochs = preset_obj.teacher_epochs
    workdir = (workdir or ROOT / "output" / "bench" / f"{pair}-{preset}").resolve()
    data_dir = (
        data_dir or ROOT / "data" / "fashion_mnist" / f"{preset}-{preset_obj.train_images}"
    ).resolve()
    out = out or ROOT / "benchmarks" / "results" / f"online_vs_offline_{pair}.json"
    teacher_file, student_file = (str(ROOT / "configs" / "fashion_mnist" / f) for f in PAIRS[pair])
    progress = not quiet
    load_before = os.getloadavg()
    prepare(data_dir, preset_obj)
    common = overrides(data_dir, workdir, preset_obj)
    teacher_w = workdir / "teacher" / "best_model.safetensors"
    results: dict = {
        "benchmark": "online_vs_offline",
        "pair": pair,
        "preset": preset,
        "command": reproduce_command(),
        "machine": machine_info(),
        "settings": {
            **dataclasses.asdict(preset_obj),
            "offline_views": view_list,
            "online_bn": bn_modes,
            "seeds": seed_list,
        },
    }

    # Teacher: trained (its cost is paid once, as in the pipeline) or random for speed runs.
    teacher_cfg = load_config(
        [teacher_file],
        [
            *common,
            f"Global.epochs={max(teacher_epochs, 1)}",
            f"Global.output_dir={workdir / 'teacher'}",
        ],
    )
    results["settings"]["teacher_recipe"] = recipe(teacher_cfg)
    results["settings"]["student_recipe"] = recipe(load_config([student_file], common))
    click.echo(f"== teacher ({TEACHER_ONCE})", err=True)
    if teacher_epochs == 0:
        from offline_ssld.config.specs import teacher_spec
        from offline_ssld.models import build_model, save_weights

        teacher_w.parent.mkdir(parents=True, exist_ok=True)
        if not teacher_w.exists():
            save_weights(build_model(teacher_spec(teacher_cfg)), teacher_w)
        results["teacher"] = {"weights": "random", "top1": None, "note": TEACHER_ONCE}
    else:
        info = workdir / "teacher" / "latest.json"
        if not (info.exists() and json.loads(info.read_text())["epoch"] == teacher_epochs):
            train(teacher_cfg, "supervised", resume=True, progress=progress)
        top1 = evaluate_config(
            load_config(
                [teacher_file],
                [*common, f"Global.pretrained_model={workdir / 'teacher' / 'best_model'}"],
            )
        )["top1"]
        results["teacher"] = {
            "weights": "trained",
            "epochs": teacher_epochs,
            "top1": top1,
            "note": TEACHER_ONCE,
        }

    click.echo("== dump-teacher (once, for every seed)", err=True)
    tick = time.perf_counter()
    dump = run_dump(teacher_cfg, overwrite=True, progress=progress)
    wall = time.perf_counter() - tick
    m = dump.manifest
    results["dump"] = {
        "seconds": round(wall, 2),
        "views": m.views,
        "rows": m.rows,
        "views_per_second": round(m.rows / wall, 2),
        "cache_bytes": sum(s.bytes for s in m.shards),
        "codec": m.codec,
    }

    # mode -> (train mode, extra overrides)
    modes: dict[str, tuple[str, list[str]]] = {"student_only": ("supervised", [])}
    for bn in bn_modes:
        modes[f"online_bn_{bn}"] = ("online", [f"Offline.online_teacher_bn={bn}"])
    for v in view_list:
        modes[f"offline_v{v}"] = ("offline", [f"Offline.views={v}"])

    results["order"], results["runs"] = {}, {}
    for i, seed in enumerate(seed_list):
        order = rotated(list(modes), i, len(seed_list))
        results["order"][str(seed)] = order
        runs: dict[str, dict] = {}
        for name in order:
            kind, extra = modes[name]
            click.echo(f"== seed {seed}: {name}", err=True)
            cfg = load_config(
                [student_file],
                [
                    *common,
                    f"Global.epochs={epochs}",
                    f"Global.seed={seed}",
                    f"Global.output_dir={workdir / f's{seed}_{name}'}",
                    f"Arch.models.0.Teacher.pretrained={teacher_w}",
                    *extra,
                ],
            )
            load = os.getloadavg()[0]
            tick = time.perf_counter()
            res = train(cfg, kind, progress=progress)
            runs[name] = {
                **summarize(res, time.perf_counter() - tick),
                "load_average_1min": round(load, 2),
            }
        results["runs"][str(seed)] = {name: runs[name] for name in modes}

    results["load_average_before_after"] = [load_before, os.getloadavg()]
    results["summary"] = aggregate(results["runs"], results["dump"]["seconds"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    chart(results, out.with_suffix(".png"))
    click.echo(json.dumps(results["summary"]["comparisons"], indent=1))
    click.echo(f"results: {out}")


def chart(results: dict, path: Path) -> None:
    """Two panels: median training seconds per mode (dump stacked on offline), and last-epoch
    top-1 per mode, mean ± 95% CI with each seed's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = results["summary"]["modes"]
    names = list(modes)
    train_s = [modes[n]["median_train_seconds"] for n in names]
    dump_s = [results["dump"]["seconds"] if n.startswith("offline") else 0 for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(names, train_s, label="train-stage (median over seeds)")
    ax1.bar(names, dump_s, bottom=train_s, label=f"dump ({results['dump']['views']} views, once)")
    ax1.set_ylabel("seconds")
    ax1.set_title(f"Wall-clock ({results['pair']} pair)")
    ax1.legend()
    for x, n in enumerate(names):
        top1 = modes[n]["top1"]
        ax2.errorbar(x, 100 * top1["mean"], yerr=100 * (top1["ci95"] or 0.0), fmt="o", capsize=4)
        ax2.plot([x] * len(top1["values"]), [100 * v for v in top1["values"]], "k.", alpha=0.4)
    if results["teacher"]["top1"] is not None:
        ax2.axhline(100 * results["teacher"]["top1"], color="k", ls="--", label="teacher")
        ax2.legend()
    ax2.set_xticks(range(len(names)), names)
    ax2.set_ylabel("last-epoch top-1 %, mean ± 95% CI")
    ax2.set_title(f"Accuracy ({len(results['runs'])} seeds)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
