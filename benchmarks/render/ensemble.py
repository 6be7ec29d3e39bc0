"""Teacher ensembles: students from each teacher alone against the ensemble's student."""

from __future__ import annotations

from .common import batch, interval_reading, machine, mean_ci_cell, per_seed, points, reproduce


def ensemble(r: dict) -> str:
    """An ensemble benchmark's block: settings, per-teacher student table, time ratio."""
    s, summary = r["settings"], r["summary"]
    labeled = s.get("teacher_images", s["train_images"])
    if labeled == s["train_images"]:
        images = f"{s['train_images']} train images"
    elif s.get("teacher_split") == "disjoint":
        images = (
            f"Each teacher learns from the labels of its own {labeled} of {s['train_images']} "
            "train images (disjoint parts), students distill on all of them (DML reads no "
            "labels)"
        )
    else:
        images = (
            f"Teachers learn from the labels of the first {labeled} of {s['train_images']} "
            "train images, students distill on all of them (DML reads no labels)"
        )
    head = (
        f"{images}, {s['val_images']} val images, teachers "
        f"{s['teacher_epochs']} epochs, students {s['student_epochs']} epochs, {s['views']} "
        f"views per cache, {batch(s)}, 32x32, rule {s['rule']}, {len(s['seeds'])} student "
        f"seeds. {machine(r['machine'])}"
    )
    if "paired" in summary:
        first, *rest = _paired(r)
        return "\n".join([head + first, *rest])
    lines = [
        head,
        "",
        "| student trained from | teacher top-1 | student top-1, mean ± std over seeds | "
        "per seed |",
        "|---|---|---|---|",
    ]
    for mode, v in summary["top1"].items():
        name, t_top1 = _label(r, mode)
        lines.append(
            f"| {name} | {t_top1} | {100 * v['mean']:.2f}% ± {100 * v['std']:.2f} | "
            f"{per_seed(v['values'])} |"
        )
    lines += [
        "",
        f"Ensemble minus best single teacher ({summary['best_single']}): "
        f"{100 * summary['ensemble_minus_best_single']:+.2f} points. {_time_ratio(summary)}",
        "",
        f"Reproduce: `{r['command']}`",
    ]
    return "\n".join(lines)


def _time_ratio(summary: dict) -> str:
    times = summary["median_epoch_seconds"]
    return (
        f"Training time, {summary['members']} members vs 1 (median epoch seconds of the "
        f"interleaved runs, {times['ensemble']:.1f} s vs {times['single']:.1f} s): "
        f"**{summary['time_ratio']:.3f}x**."
    )


def _label(r: dict, mode: str) -> tuple[str, str]:
    """(label, teacher top-1) of an ensemble benchmark mode."""
    teacher = r["teachers"].get(mode)
    if teacher is None:
        top1 = r.get("ensemble_teacher_top1")  # the combined val probabilities, when recorded
        return (
            f"ensemble of {r['summary']['members']} ({r['settings']['rule']})",
            "-" if top1 is None else f"{100 * top1:.2f}%",
        )
    return f"{teacher['arch']} (seed {teacher['seed']}) alone", f"{100 * teacher['top1']:.2f}%"


def _paired(r: dict) -> list[str]:
    """The table and paired differences of a multi-seed ensemble result (last-epoch top-1)."""
    summary, seeds = r["summary"], len(r["settings"]["seeds"])
    lines = [
        " Students are scored by their last-epoch top-1.",
        "",
        "| student trained from | teacher top-1 | student top-1, mean ± 95% CI | per seed |",
        "|---|---|---|---|",
    ]
    for mode, v in summary["top1"].items():
        name, t_top1 = _label(r, mode)
        lines.append(f"| {name} | {t_top1} | {mean_ci_cell(v)} | {per_seed(v['values'])} |")
    lines += ["", "Paired differences (ensemble minus one member, same student seed):", ""]
    for name, v in summary["paired"].items():
        member = name.removeprefix("ensemble_minus_")
        lines.append(
            f"- minus {_label(r, member)[0]}: {points(v)} points; 95% interval "
            f"{interval_reading(v, 'the ensemble')}"
        )
    lines += [
        "",
        f"The ensemble student was above every member's student in "
        f"{summary['seeds_ensemble_above_every_member']} of {seeds} seeds. {_time_ratio(summary)}",
        "",
        reproduce(r),
    ]
    return lines
