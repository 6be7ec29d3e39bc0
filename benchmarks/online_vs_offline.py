"""Online vs offline SSLD in ONE run, over seeds: same images, epochs, batch size and student.

The teacher is trained (or drawn at random with --teacher-epochs 0) and dumped ONCE per run;
the seeds vary the student only: its init, data order, augmentation and, offline, the view
schedule. Then, seed round by seed round, every mode of --modes runs once. The modes are data
(MODES: name -> how to train it): student-only (no KD: the speed limit of any distillation),
online SSLD with the teacher's BatchNorm in train mode (PaddleClas's default) and in eval mode
(as the cache stores it), offline SSLD from the cache with the first V views, and, where the
installed offline_ssld has Offline.online_views, online SSLD on the cache's replayed views.
The order of the modes is rotated from round to round and recorded, so machine load and the
position in the process hit every mode alike.

Accuracy is each run's last-epoch top-1 (no choice of epoch on the validation set): mean ±
std and a 95% t interval per mode, and paired per-seed differences with their own 95%
interval: offline - reference (`comparisons`) and online - offline (`paired`). Speed ratios
are ratios of medians over the interleaved runs of each run's median epoch seconds (eval
excluded). `render_accuracy(results)` turns a results file into Markdown.

Writes a results JSON and a PNG chart. Example:

    python benchmarks/online_vs_offline.py --pair accuracy --preset bench --seeds 0,1,2,3,4
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
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


@dataclasses.dataclass(frozen=True)
class Mode:
    """How one mode trains: `train(cfg, kind)` with these config overrides. `views` is how
    many stored views it reads from the run's dump (0: it needs no cache); `needs` names an
    Offline key the installed offline_ssld must know for the mode to exist."""

    kind: str
    overrides: tuple[str, ...] = ()
    views: int = 0
    label: str = ""
    needs: str | None = None


def offline(views: int) -> Mode:
    return Mode("offline", (f"Offline.views={views}",), views, f"offline SSLD, {views} view(s)")


def online(bn: str) -> Mode:
    label = "teacher BN train, as PaddleClas" if bn == "train" else "teacher BN eval"
    return Mode("online", (f"Offline.online_teacher_bn={bn}",), 0, f"online SSLD ({label})")


REPLAY_VIEWS = 4
MODES: dict[str, Mode] = {
    "student_only": Mode("supervised", (), 0, "student only (no KD)"),
    "online_bn_train": online("train"),
    "online_bn_eval": online("eval"),
    "offline_v1": offline(1),
    "offline_v2": offline(2),
    "offline_v4": offline(4),
    # the teacher live on exactly the views offline_v4 replays: only live vs stored differs
    "online_replay_bn_eval": Mode(
        "online",
        (
            "Offline.online_teacher_bn=eval",
            "Offline.online_views=replay",
            f"Offline.views={REPLAY_VIEWS}",
        ),
        REPLAY_VIEWS,
        f"online SSLD on the cache's {REPLAY_VIEWS} replayed views (teacher BN eval)",
        needs="online_views",
    ),
}


def available_modes() -> list[str]:
    """The registered modes the installed offline_ssld can run."""
    from offline_ssld.config.offline import OFFLINE_DEFAULTS

    return [n for n, m in MODES.items() if m.needs is None or m.needs in OFFLINE_DEFAULTS]


def mode_list(modes: str | None, views: str | None, online_bn: str | None) -> list[str]:
    """--modes (names of MODES, or offline_v<V> for any V), else the older --views and
    --online-bn shorthands (student-only + those online and offline modes), else every
    available mode."""
    if modes is None and views is None and online_bn is None:
        return available_modes()
    if modes is not None:
        names = [m.strip() for m in modes.split(",") if m.strip()]
    else:
        names = ["student_only"]
        names += [f"online_bn_{b.strip()}" for b in (online_bn or "train").split(",")]
        names += [f"offline_v{v.strip()}" for v in (views or "1,2,4").split(",")]
    for name in names:
        if name.startswith("offline_v") and name[len("offline_v") :].isdigit():
            MODES.setdefault(name, offline(int(name[len("offline_v") :])))
    unknown = [n for n in names if n not in available_modes()]
    if unknown:
        raise click.BadParameter(
            f"{unknown[0]!r}: not a mode here; known: {', '.join(available_modes())}",
            param_hint="--modes",
        )
    if len(set(names)) != len(names):
        raise click.BadParameter(f"{','.join(names)}: modes repeat", param_hint="--modes")
    return names


def git_commit() -> str | None:
    """The commit of the checkout the benchmark runs from (with `+dirty` if files differ)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return None
    return f"{head}+dirty" if head and dirty else head or None


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
    # online - offline, per seed: what storing the teacher's outputs costs (negative: nothing)
    summary["paired"] = [
        {
            "online": on,
            "offline": off,
            "difference": mean_ci(
                [
                    round(a - b, 5)
                    for a, b in zip(
                        per_seed(on, "last_top1"), per_seed(off, "last_top1"), strict=True
                    )
                ]
            ),
        }
        for on in modes
        if on.startswith("online")
        for off in modes
        if off.startswith("offline")
    ]
    for off in (x for x in modes if x.startswith("offline")):
        refs = [x for x in modes if x.startswith("online")]
        for ref in refs + [x for x in modes if x == "student_only"]:
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
    "--modes",
    default=None,
    help="Comma list of modes (default: every available one: "
    + ", ".join(MODES)
    + "; offline_v<V> for any V).",
)
@click.option(
    "--views",
    default=None,
    help="Shorthand instead of --modes: offline runs with the first V views, for each V.",
)
@click.option(
    "--online-bn",
    default=None,
    help="Shorthand instead of --modes: online runs per teacher BN mode (train, eval).",
)
@click.option(
    "--seeds",
    default="0,1,2,3,4",
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
    modes: str | None,
    views: str | None,
    online_bn: str | None,
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
      python benchmarks/online_vs_offline.py --pair accuracy --preset bench --seeds 0,1,2,3,4
    """
    from offline_ssld.config.loading import load_config
    from offline_ssld.dump import run_dump
    from offline_ssld.train import evaluate_config, train

    base = PRESETS[preset]
    names = mode_list(modes, views, online_bn)
    seed_list = [int(s) for s in seeds.split(",")]
    if len(set(seed_list)) != len(seed_list):
        raise click.BadParameter(f"{seeds!r}: seeds repeat", param_hint="--seeds")
    dump_views = max([MODES[n].views for n in names] + [1])
    preset_obj = dataclasses.replace(
        base,
        train_images=images or base.train_images,
        val_images=val_images or base.val_images,
        batch_size=batch_size or base.batch_size,
        views=dump_views,
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
        "commit": git_commit(),
        "machine": machine_info(),
        "settings": {
            **dataclasses.asdict(preset_obj),
            "modes": {n: dataclasses.asdict(MODES[n]) for n in names},
            "offline_views": sorted(MODES[n].views for n in names if n.startswith("offline")),
            "online_bn": [n[len("online_bn_") :] for n in names if n.startswith("online_bn_")],
            "seeds": seed_list,
            "student_eval": "after the last epoch only",
        },
    }

    # Teacher: trained (its cost is paid once, as in the pipeline) or random for speed runs.
    teacher_cfg = load_config(
        [teacher_file],
        [
            *common,
            *preset_obj.teacher_overrides,
            f"Global.epochs={max(teacher_epochs, 1)}",
            f"Global.output_dir={workdir / 'teacher'}",
        ],
    )
    results["settings"]["teacher_recipe"] = recipe(teacher_cfg)
    results["settings"]["student_recipe"] = recipe(load_config([student_file], common))
    click.echo(f"== teacher ({TEACHER_ONCE})", err=True)
    tick = time.perf_counter()
    if teacher_epochs == 0:
        from offline_ssld.config.specs import teacher_spec
        from offline_ssld.models import build_model, save_weights

        teacher_w.parent.mkdir(parents=True, exist_ok=True)
        if not teacher_w.exists():
            save_weights(build_model(teacher_spec(teacher_cfg)), teacher_w)
        results["teacher"] = {"weights": "random", "top1": None, "note": TEACHER_ONCE}
    else:
        info = workdir / "teacher" / "latest.json"
        trained = info.exists() and json.loads(info.read_text())["epoch"] == teacher_epochs
        if not trained:
            train(teacher_cfg, "supervised", resume=True, progress=progress)
        top1 = evaluate_config(
            load_config(
                [teacher_file],
                [*common, f"Global.pretrained_model={workdir / 'teacher' / 'best_model'}"],
            )
        )["top1"]
        results["teacher"] = {
            "weights": "trained" if not trained else "trained before this run (found complete)",
            "epochs": teacher_epochs,
            "top1": top1,
            "note": TEACHER_ONCE,
        }
    results["teacher"]["seconds"] = round(time.perf_counter() - tick, 2)

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

    results["order"], results["runs"] = {}, {}
    for i, seed in enumerate(seed_list):
        order = rotated(names, i, len(seed_list))
        results["order"][str(seed)] = order
        runs: dict[str, dict] = {}
        for name in order:
            mode = MODES[name]
            click.echo(f"== seed {seed}: {name}", err=True)
            cfg = load_config(
                [student_file],
                [
                    *common,
                    # the metric is the last epoch: no eval (nor its BN recalibration) before
                    f"Global.epochs={epochs}",
                    f"Global.eval_interval={epochs}",
                    f"Global.save_interval={epochs}",
                    f"Global.seed={seed}",
                    f"Global.output_dir={workdir / f's{seed}_{name}'}",
                    f"Arch.models.0.Teacher.pretrained={teacher_w}",
                    *mode.overrides,
                ],
            )
            load = os.getloadavg()[0]
            tick = time.perf_counter()
            res = train(cfg, mode.kind, progress=progress)
            runs[name] = {
                **summarize(res, time.perf_counter() - tick),
                "load_average_1min": round(load, 2),
            }
        results["runs"][str(seed)] = {name: runs[name] for name in names}

    after = os.getloadavg()
    results["load_average_before_after"] = [load_before, after]
    results["load_average"] = {
        "before": [round(x, 2) for x in load_before],
        "during": [
            results["runs"][str(s)][n]["load_average_1min"] for s in seed_list for n in names
        ],
        "after": [round(x, 2) for x in after],
    }
    results["summary"] = aggregate(results["runs"], results["dump"]["seconds"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    chart(results, out.with_suffix(".png"))
    click.echo(render_accuracy(results))
    click.echo(f"results: {out}")


def _label(results: dict, mode: str) -> str:
    recorded = results["settings"].get("modes", {}).get(mode)
    return recorded["label"] if recorded else MODES[mode].label if mode in MODES else mode


def render_accuracy(results: dict) -> str:
    """Markdown of a results file: settings, per-mode top-1 and timings, paired online -
    offline differences, the order each seed ran in; every number from `results`."""
    from benchmarks.render.common import interval_reading

    s, summary, machine = results["settings"], results["summary"], results["machine"]
    load = results["load_average"]
    teacher = results["teacher"]
    teacher_text = (
        "random weights (a timing run: top-1 says nothing about distillation)"
        if teacher["top1"] is None
        else f"top-1 {100 * teacher['top1']:.2f}% after {teacher['epochs']} epochs"
    )
    lines = [
        f"{s['train_images']} train images, {s['val_images']} val images, "
        f"{s['student_epochs']} student epochs, batch {s['student_recipe']['batch_size']} at lr "
        f"{s['student_recipe']['lr']}, {len(s['seeds'])} seeds; teacher {teacher_text}, "
        f"dumped once ({results['dump']['views']} views per image, "
        f"{results['dump']['seconds']:.0f} s). Machine: {machine['nproc']} cores, "
        f"{machine['cpu']}, Paddle {machine['paddle']} on CPU; load average (1 min) "
        f"{load['before'][0]:.1f} before, {statistics.median(load['during']):.1f} during "
        f"(median over runs), {load['after'][0]:.1f} after.",
        "",
        "| mode | last-epoch top-1, mean ± 95% CI | std | per seed | median s/epoch |",
        "|---|---|---|---|---|",
    ]
    for mode, v in summary["modes"].items():
        t = v["top1"]
        ci = f" ± {100 * t['ci95']:.2f}" if t["ci95"] is not None else ""
        std = f"{100 * t['std']:.2f}" if t["std"] is not None else "-"
        lines.append(
            f"| {_label(results, mode)} | {100 * t['mean']:.2f}%{ci} | {std} | "
            + ", ".join(f"{100 * x:.2f}" for x in t["values"])
            + f" | {v['median_epoch_seconds']:.1f} |"
        )
    paired = summary.get("paired", [])
    if paired:
        lines += [
            "",
            "| online | minus offline | paired difference, mean ± 95% CI (points) | 95% interval |",
            "|---|---|---|---|",
        ]
        for p in paired:
            d = p["difference"]
            ci = f" ± {100 * d['ci95']:.2f}" if d["ci95"] is not None else ""
            lines.append(
                f"| {_label(results, p['online'])} | {_label(results, p['offline'])} | "
                f"{100 * d['mean']:+.2f}{ci} | {interval_reading(d, first='online')} |"
            )
    lines += [
        "",
        "Order per seed (rotated): "
        + "; ".join(f"{seed}: {', '.join(o)}" for seed, o in results["order"].items())
        + ".",
        "",
        f"Reproduce: `{results['command']}`"
        + (f" (commit `{results['commit'][:10]}`)" if results.get("commit") else ""),
    ]
    return "\n".join(lines)


def estimate(
    results: dict, images: int, val_images: int, epochs: int, teacher_epochs: int, seeds: int
) -> dict:
    """Seconds a run at another size would take, scaled from a (tiny) run: each mode's
    training per image-epoch plus its per-run rest (eval, start-up) scaled by val images, the
    teacher per image-epoch, the dump per view at the same number of views."""
    s = results["settings"]
    n, v = s["train_images"], s["val_images"]
    per_mode = {}
    for mode in results["summary"]["modes"]:
        runs = [results["runs"][seed][mode] for seed in results["runs"]]
        train_s = statistics.median(r["train_seconds"] for r in runs) / (n * s["student_epochs"])
        other = statistics.median(r["wall_seconds"] - r["train_seconds"] for r in runs)
        per_mode[mode] = round((train_s * images * epochs + other * val_images / v) * seeds, 1)
    teacher = results["teacher"]["seconds"] / (n * max(s["teacher_epochs"], 1))
    dump = results["dump"]["seconds"] * images / n
    students = sum(per_mode.values())
    return {
        "modes": per_mode,
        "teacher": round(teacher * images * teacher_epochs, 1),
        "dump": round(dump, 1),
        "total": round(students + teacher * images * teacher_epochs + dump, 1),
    }


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
