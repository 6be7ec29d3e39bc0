"""Online vs offline SSLD in ONE run: same images, seed, epochs, batch size and student.

Modes, in order: student-only (no KD: the speed limit of any distillation), online SSLD
(teacher in the loop, BatchNorm mode per --online-bn), dump-teacher (timed on its own), then
offline SSLD from the cache using the first V views for each V in --views.

Writes a results JSON and a PNG chart; `benchmarks/report.py` turns results into README
tables. Example:

    python benchmarks/online_vs_offline.py --pair accuracy --preset bench
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info  # noqa: E402
from pipelines.fashion_mnist import PRESETS, overrides, prepare  # noqa: E402

PAIRS = {
    # teacher config, student config, teacher name, student name
    "accuracy": ("resnet18_teacher.yaml", "mnv3_x0_35_student.yaml"),
    "speed": ("resnet50_vd_teacher.yaml", "mnv3_small_student.yaml"),
}


def summarize(result, seconds: float | None = None) -> dict:
    epochs = result.train_seconds
    return {
        "top1": round(result.best_top1, 5),
        "last_top1": round(result.last_top1, 5),
        "epoch_seconds": [round(s, 2) for s in epochs],
        "median_epoch_seconds": round(statistics.median(epochs), 3),
        "median_images_per_second": round(statistics.median(result.images_per_second), 2),
        "train_seconds": round(sum(epochs), 2),
        "wall_seconds": round(seconds, 2) if seconds is not None else None,
    }


def timed(fn, *args, **kwargs):
    tick = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - tick


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
    help="Data size (as pipelines/fashion_mnist.py).",
)
@click.option("--images", type=int, default=None, help="Override the preset's train images.")
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
@click.option("--workdir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Results JSON (default benchmarks/results/online_vs_offline_<pair>.json).",
)
@click.option("--quiet", is_flag=True)
def main(pair, preset, images, epochs, teacher_epochs, views, online_bn, workdir, out, quiet):
    """Compare student-only, online SSLD and offline SSLD (dump + train-student) in one run,
    and write a results JSON plus a PNG chart of wall-clock and top-1 per mode.

    \b
    Example:
      python benchmarks/online_vs_offline.py --pair accuracy --preset bench --epochs 8
    """
    import dataclasses

    from offline_ssld.config.loading import load_config
    from offline_ssld.dump import run_dump
    from offline_ssld.train import evaluate_config, train

    base = PRESETS[preset]
    if images:
        base = dataclasses.replace(base, train_images=images)
    view_list = sorted({int(v) for v in views.split(",")})
    teacher_epochs = base.teacher_epochs if teacher_epochs is None else teacher_epochs
    preset_obj = dataclasses.replace(
        base, views=max(view_list), student_epochs=epochs, teacher_epochs=teacher_epochs
    )
    workdir = (workdir or ROOT / "output" / "bench" / f"{pair}-{preset}").resolve()
    data_dir = (ROOT / "data" / "fashion_mnist" / f"{preset}-{base.train_images}").resolve()
    out = out or ROOT / "benchmarks" / "results" / f"online_vs_offline_{pair}.json"
    teacher_file, student_file = (str(ROOT / "configs" / "fashion_mnist" / f) for f in PAIRS[pair])
    progress = not quiet
    prepare(data_dir, preset_obj)
    common = overrides(data_dir, workdir, preset_obj)
    teacher_w = workdir / "teacher" / "best.safetensors"
    results: dict = {
        "pair": pair,
        "preset": preset,
        "machine": machine_info(),
        "command": shlex.join(sys.argv),
        "settings": dataclasses.asdict(preset_obj),
        "modes": {},
    }

    def student_cfg(out_dir: str, *extra: str) -> dict:
        return load_config(
            [student_file],
            [
                *common,
                f"Global.epochs={epochs}",
                f"Global.output_dir={workdir / out_dir}",
                f"Arch.models.0.Teacher.pretrained={teacher_w}",
                *extra,
            ],
        )

    # Teacher: trained (its cost is paid once, as in the pipeline) or random for speed runs.
    teacher_cfg = load_config(
        [teacher_file],
        [
            *common,
            f"Global.epochs={max(teacher_epochs, 1)}",
            f"Global.output_dir={workdir / 'teacher'}",
        ],
    )
    click.echo("== teacher", err=True)
    if teacher_epochs == 0:
        from offline_ssld.config.specs import teacher_spec
        from offline_ssld.models import build_model, save_weights

        teacher_w.parent.mkdir(parents=True, exist_ok=True)
        if not teacher_w.exists():
            save_weights(build_model(teacher_spec(teacher_cfg)), teacher_w)
        results["teacher"] = {"weights": "random", "top1": None}
    else:
        info = workdir / "teacher" / "latest.json"
        if not (info.exists() and json.loads(info.read_text())["epoch"] == teacher_epochs):
            train(teacher_cfg, "supervised", resume=True, progress=progress)
        top1 = evaluate_config(
            load_config(
                [teacher_file], [*common, f"Global.pretrained_model={workdir / 'teacher' / 'best'}"]
            )
        )["top1"]
        results["teacher"] = {"weights": "trained", "epochs": teacher_epochs, "top1": top1}

    click.echo("== student-only", err=True)
    res, wall = timed(train, student_cfg("student_only"), "supervised", progress=progress)
    results["modes"]["student_only"] = summarize(res, wall)

    for bn in online_bn.split(","):
        click.echo(f"== online (teacher BN {bn})", err=True)
        res, wall = timed(
            train,
            student_cfg(f"online_{bn}", f"Offline.online_teacher_bn={bn}"),
            "online",
            progress=progress,
        )
        results["modes"][f"online_bn_{bn}"] = summarize(res, wall)

    click.echo("== dump-teacher", err=True)
    dump, wall = timed(run_dump, teacher_cfg, overwrite=True, progress=progress)
    m = dump.manifest
    results["dump"] = {
        "seconds": round(wall, 2),
        "views": m.views,
        "rows": m.rows,
        "views_per_second": round(m.rows / wall, 2),
        "cache_bytes": sum(s.bytes for s in m.shards),
        "codec": m.codec,
    }

    for v in view_list:
        click.echo(f"== offline (views={v})", err=True)
        res, wall = timed(
            train, student_cfg(f"offline_v{v}", f"Offline.views={v}"), "offline", progress=progress
        )
        results["modes"][f"offline_v{v}"] = summarize(res, wall)

    modes = results["modes"]
    online = modes[f"online_bn_{online_bn.split(',')[0]}"]
    best_v = f"offline_v{max(view_list)}"
    offline = modes[best_v]
    results["summary"] = {
        "offline_mode": best_v,
        "train_speedup": round(online["median_epoch_seconds"] / offline["median_epoch_seconds"], 3),
        "end_to_end_speedup": round(
            online["train_seconds"] / (offline["train_seconds"] + results["dump"]["seconds"]), 3
        ),
        "offline_over_student_only_epoch": round(
            offline["median_epoch_seconds"] / modes["student_only"]["median_epoch_seconds"], 3
        ),
        "top1_offline_minus_online": round(offline["top1"] - online["top1"], 5),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    chart(results, out.with_suffix(".png"))
    click.echo(json.dumps(results["summary"], indent=1))
    click.echo(f"results: {out}")


def chart(results: dict, path: Path) -> None:
    """Two panels: training seconds per mode (dump stacked on offline), top-1 per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["modes"])
    train_s = [results["modes"][n]["train_seconds"] for n in names]
    dump_s = [results["dump"]["seconds"] if n.startswith("offline") else 0 for n in names]
    top1 = [100 * results["modes"][n]["top1"] for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(names, train_s, label="train-stage")
    ax1.bar(names, dump_s, bottom=train_s, label=f"dump ({results['dump']['views']} views)")
    ax1.set_ylabel("seconds")
    ax1.set_title(f"Wall-clock ({results['pair']} pair)")
    ax1.legend()
    ax2.bar(names, top1, color="tab:green")
    if results["teacher"]["top1"] is not None:
        ax2.axhline(100 * results["teacher"]["top1"], color="k", ls="--", label="teacher")
        ax2.legend()
    ax2.set_ylim(max(0, min(top1) - 10), 100)
    ax2.set_ylabel("top-1 %")
    ax2.set_title("Accuracy")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
