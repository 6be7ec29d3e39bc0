"""When does dumping the teacher once pay off? Per-step costs measured, the break-even computed.

Offline SSLD pays the teacher once (dump: one teacher forward per stored view) and then
trains every student from the cache; online SSLD pays a teacher forward in every step of
every student. On the speed pair (ResNet50_vd -> MobileNetV3_small_x1_0, 32x32) this run
measures, with the project's own `run_dump` and `train`:

- dump: seconds per stored view (the dump loop), plus its fixed cost (teacher build, plan);
- offline step: one student step on a replayed cached view (cache read included);
- online step: teacher forward on the augmented batch + one student step (teacher BN as
  PaddleClas runs it: train);
- student-only step: one student step on labels, the floor of any distillation.

The four are interleaved (order rotated each repetition and recorded) and repeated; a step
cost is the last epoch's seconds over its steps (the first epoch pays loader start-up and
warm-up). The teacher has random weights: a forward costs the same whatever they are.

From the medians, `table()` computes end-to-end time for N students trained from one dump,
for each scenario (epochs E, views V) over a dataset of D images at the measured batch:

    online(N)  = N * E * steps(D) * online_step
    offline(N) = dump_fixed + D * V * dump_per_view + N * E * steps(D) * offline_step

and the break-even N* = dump / (E * steps(D) * (online_step - offline_step)). Example:

    python benchmarks/break_even.py --steps 16 --repeats 3
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, recipe, reproduce_command, rotated  # noqa: E402
from benchmarks.online_vs_offline import PAIRS, git_commit  # noqa: E402
from pipelines.fashion_mnist import Preset, overrides, prepare  # noqa: E402

COSTS = ("dump", "offline", "online", "student_only")
# The student counts of the table, and the default (epochs, views) scenarios: a student with
# one stored view per epoch, fewer views than epochs, and a short run over many stored views
# (the case where one student does not pay the dump back).
STUDENTS = (1, 2, 4, 8)
SCENARIOS = ("8:8", "8:4", "8:1", "2:8")
CONFIGS = ROOT / "configs" / "fashion_mnist"


def measure_step(cfg: dict, kind: str, steps: int) -> dict:
    """One training run; its last epoch's seconds per step."""
    from offline_ssld.train import train

    res = train(cfg, kind, progress=False)
    return {
        "epoch_seconds": [round(s, 3) for s in res.train_seconds],
        "step_seconds": res.train_seconds[-1] / steps,
    }


def measure_dump(cfg: dict) -> dict:
    """One dump over the run's images (overwriting the last); seconds per view of the dump
    loop, and the rest of its wall time (teacher build, planning, manifest) as fixed cost."""
    from offline_ssld.dump import run_dump

    tick = time.perf_counter()
    res = run_dump(cfg, overwrite=True, progress=False)
    wall = time.perf_counter() - tick
    return {
        "rows": res.manifest.rows,
        "wall_seconds": round(wall, 3),
        "view_seconds": res.seconds / res.manifest.rows,
        "fixed_seconds": max(wall - res.seconds, 0.0),
    }


def median_costs(runs: list[dict]) -> dict:
    """Per cost: median, min and max over the repetitions (seconds)."""
    keys = {
        "dump_per_view": ("dump", "view_seconds"),
        "dump_fixed": ("dump", "fixed_seconds"),
        **{f"{k}_step": (k, "step_seconds") for k in COSTS if k != "dump"},
    }
    out = {}
    for name, (cost, field) in keys.items():
        values = [r[cost][field] for r in runs]
        out[name] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "values": [round(v, 5) for v in values],
        }
    return out


def parse_scenario(text: str) -> dict:
    epochs, _, views = text.partition(":")
    if not (epochs.isdigit() and views.isdigit() and int(epochs) > 0 and int(views) > 0):
        raise click.BadParameter(
            f"{text!r}: expected EPOCHS:VIEWS, e.g. 8:4", param_hint="--scenario"
        )
    return {"epochs": int(epochs), "views": int(views)}


def table(results: dict) -> list[dict]:
    """End-to-end seconds of N students per scenario, from the measured median costs."""
    c = {k: v["median"] for k, v in results["costs"].items()}
    images = results["assumptions"]["dataset_images"]
    steps = math.ceil(images / results["settings"]["batch_size"])
    rows = []
    for sc in results["assumptions"]["scenarios"]:
        e, v = sc["epochs"], sc["views"]
        dump = c["dump_fixed"] + images * v * c["dump_per_view"]
        off_one = e * steps * c["offline_step"]
        on_one = e * steps * c["online_step"]
        saved = on_one - off_one  # per student
        rows.append(
            {
                "epochs": e,
                "views": v,
                "dump_seconds": round(dump, 1),
                "offline_training_seconds": round(off_one, 1),
                "online_training_seconds": round(on_one, 1),
                "break_even_students": round(dump / saved, 3) if saved > 0 else None,
                "first_winning_students": max(1, math.ceil(dump / saved)) if saved > 0 else None,
                "students": {
                    str(n): {
                        "offline_seconds": round(dump + n * off_one, 1),
                        "online_seconds": round(n * on_one, 1),
                        "speedup": round(n * on_one / (dump + n * off_one), 3),
                    }
                    for n in results["assumptions"]["students"]
                },
            }
        )
    return rows


def _students(n: int) -> str:
    return f"{n} student" + ("s" if n > 1 else "")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def render_break_even(results: dict) -> str:
    """Markdown: the measured costs, then end-to-end time per scenario against the number of
    students, every number from `results`."""
    s, a, m = results["settings"], results["assumptions"], results["machine"]
    costs = results["costs"]
    load = results["load_average"]
    lines = [
        f"Speed pair {s['teacher']} -> {s['student']}, 32x32, batch {s['batch_size']}, "
        f"{s['steps']} steps an epoch, {s['epochs']} epochs per run (the last one timed), "
        f"{s['repeats']} interleaved repetitions (order rotated). Machine: {m['nproc']} cores, "
        f"{m['cpu']}, Paddle {m['paddle']} on CPU; load average (1 min) "
        f"{load['before'][0]:.1f} before, {statistics.median(load['during']):.1f} during "
        f"(median), {load['after'][0]:.1f} after.",
        "",
        "| cost | median | min | max | per image |",
        "|---|---|---|---|---|",
    ]
    labels = {
        "dump_per_view": ("teacher forward per stored view (dump)", 1),
        "dump_fixed": ("dump fixed cost (teacher build, plan), once", None),
        "offline_step": ("offline step (cached view, student step)", s["batch_size"]),
        "online_step": ("online step (teacher forward + student step)", s["batch_size"]),
        "student_only_step": ("student-only step (labels, no teacher)", s["batch_size"]),
    }
    for key, (label, per) in labels.items():
        v = costs[key]
        image = f"{1000 * v['median'] / per:.2f} ms" if per else "-"
        lines.append(
            f"| {label} | {v['median']:.4f} s | {v['min']:.4f} s | {v['max']:.4f} s | {image} |"
        )
    rows = table(results)
    students = [str(n) for n in a["students"]]
    lines += [
        "",
        f"End to end for N students trained from one dump, over {a['dataset_images']} images "
        "(computed from the medians above: online = N x E epochs x online steps; offline = "
        "dump once, V views per image, + N x E epochs x offline steps; speedup = online / "
        "offline; eval and data preparation excluded, the same for both):",
        "",
        "| epochs E | views V | dump (once) | one offline training | one online training "
        "| break-even N | "
        + " | ".join(f"speedup, {n} student{'s' if n != '1' else ''}" for n in students)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(students),
    ]
    for r in rows:
        n_star = r["break_even_students"]
        reading = "never" if n_star is None else f"{n_star:.2f}"
        lines.append(
            f"| {r['epochs']} | {r['views']} | {_hours(r['dump_seconds'])} | "
            f"{_hours(r['offline_training_seconds'])} | {_hours(r['online_training_seconds'])} | "
            f"{reading} | "
            + " | ".join(f"{r['students'][n]['speedup']:.2f}x" for n in students)
            + " |"
        )
    first = [r for r in rows if r["first_winning_students"] is not None]
    lines.append("")
    groups: dict[int, list[str]] = {}
    for r in first:
        groups.setdefault(r["first_winning_students"], []).append(f"({r['epochs']}, {r['views']})")
    if first:
        lines.append(
            "Offline is ahead from "
            + "; from ".join(
                f"{_students(n)} at (E, V) = {', '.join(where)}" for n, where in groups.items()
            )
            + ". The break-even N is the dump over one student's saving, so it grows with V "
            "and shrinks as E grows."
        )
    if len(first) < len(rows):
        lines.append("Where it says never, the online step was not slower than the offline one.")
    lines += ["", f"Reproduce: `{results['command']}` (commit `{results['commit'][:10]}`)"]
    return "\n".join(lines)


@click.command()
@click.option("--steps", type=int, default=16, show_default=True, help="Steps per epoch.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option(
    "--epochs",
    type=int,
    default=2,
    show_default=True,
    help="Epochs per timed run; the last one is timed.",
)
@click.option("--repeats", type=int, default=3, show_default=True, help="Interleaved rounds.")
@click.option(
    "--dataset-images",
    type=int,
    default=60000,
    show_default=True,
    help="Table assumption D: images of the training set (default: all of Fashion-MNIST).",
)
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    default=SCENARIOS,
    show_default=True,
    help="Table assumption, repeatable: EPOCHS:VIEWS of each student run and of the dump.",
)
@click.option("--workdir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=ROOT / "benchmarks" / "results" / "break_even.json",
    show_default=True,
)
def main(
    steps: int,
    batch_size: int,
    epochs: int,
    repeats: int,
    dataset_images: int,
    scenarios: tuple[str, ...],
    workdir: Path | None,
    out: Path,
) -> None:
    """Measure dump, offline, online and student-only per-step costs (interleaved, repeated)
    on the speed pair and compute end-to-end time against the number of students.

    \b
    Example:
      python benchmarks/break_even.py --steps 16 --repeats 3
    """
    from offline_ssld.config.loading import load_config
    from offline_ssld.config.specs import teacher_spec
    from offline_ssld.models import build_model, save_weights

    if min(steps, batch_size, epochs, repeats) < 1:
        raise click.BadParameter("--steps, --batch-size, --epochs and --repeats must be >= 1")
    parsed = [parse_scenario(x) for x in scenarios]
    commit = git_commit()  # of the code that runs, before anything else can change
    load_before = os.getloadavg()
    workdir = (workdir or ROOT / "output" / "bench" / "break_even").resolve()
    data_dir = workdir / "data"
    # views=1: the dump stores one view per image, what a step costs does not depend on V
    preset = Preset(steps * batch_size, 64, 0, epochs, 1, batch_size)
    prepare(data_dir, preset)
    common = overrides(data_dir, workdir, preset)
    teacher_file, student_file = (str(CONFIGS / f) for f in PAIRS["speed"])
    teacher_cfg = load_config(
        [teacher_file], [*common, "Global.epochs=1", f"Global.output_dir={workdir / 'teacher'}"]
    )
    teacher_w = workdir / "teacher" / "best_model.safetensors"
    teacher_w.parent.mkdir(parents=True, exist_ok=True)
    save_weights(build_model(teacher_spec(teacher_cfg)), teacher_w)

    def student_cfg(kind: str, extra: list[str]) -> dict:
        return load_config(
            [student_file],
            [
                *common,
                f"Global.epochs={epochs}",
                f"Global.eval_interval={epochs}",  # eval is not timed: once, at the end
                f"Global.save_interval={epochs}",
                f"Global.output_dir={workdir / kind}",
                f"Arch.models.0.Teacher.pretrained={teacher_w}",
                *extra,
            ],
        )

    measure = {
        "dump": lambda: measure_dump(teacher_cfg),
        "offline": lambda: measure_step(student_cfg("offline", []), "offline", steps),
        "online": lambda: measure_step(
            student_cfg("online", ["Offline.online_teacher_bn=train"]), "online", steps
        ),
        "student_only": lambda: measure_step(student_cfg("student_only", []), "supervised", steps),
    }
    click.echo("== warm-up dump (the cache the offline runs read; not timed)", err=True)
    measure["dump"]()
    runs, orders, during = [], [], []
    for i in range(repeats):
        order = rotated(list(COSTS), i, repeats)
        orders.append(order)
        run: dict = {}
        for name in order:
            click.echo(f"== repetition {i + 1}/{repeats}: {name}", err=True)
            during.append(round(os.getloadavg()[0], 2))
            run[name] = measure[name]()
        runs.append({name: run[name] for name in COSTS})
    results: dict = {
        "benchmark": "break_even",
        "command": reproduce_command(),
        "commit": commit,
        "machine": machine_info(),
        "settings": {
            "teacher": teacher_spec(teacher_cfg).name,
            "student": load_config([student_file], common)["Arch"]["models"][1]["Student"]["name"],
            "teacher_weights": "random (a forward costs the same whatever the weights)",
            "online_teacher_bn": "train",
            "batch_size": batch_size,
            "steps": steps,
            "epochs": epochs,
            "repeats": repeats,
            "images": steps * batch_size,
            "dump_views": 1,
            "student_recipe": recipe(student_cfg("offline", [])),
        },
        "assumptions": {
            "dataset_images": dataset_images,
            "scenarios": parsed,
            "students": list(STUDENTS),
            "note": "the table's batch is the measured one; eval and data preparation are "
            "excluded (the same for online and offline); the dump's fixed cost is paid once",
        },
        "order": orders,
        "runs": runs,
        "load_average": {
            "before": [round(x, 2) for x in load_before],
            "during": during,
            "after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    results["costs"] = median_costs(runs)
    results["table"] = table(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    click.echo(render_break_even(results))
    click.echo(f"results: {out}")


if __name__ == "__main__":
    main()
