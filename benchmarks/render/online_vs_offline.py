"""The online-vs-offline pairs: per-mode tables, paired differences, the student recipe's
before/after, and the README's headline rows."""

from __future__ import annotations

from .common import batch, interval_reading, label, machine, per_seed, points, reproduce


def online_vs_offline(r: dict) -> str:
    """One pair's results file, in whichever schema it was written."""
    return "\n".join(online_vs_offline_seeds(r) if "runs" in r else online_vs_offline_single(r))


def _teacher_line(r: dict) -> str:
    t = r["teacher"]
    if t["top1"] is None:
        return (
            "Teacher: random weights (a timing run: the top-1 columns say nothing about "
            "distillation)."
        )
    return f"Teacher top-1: {100 * t['top1']:.2f}%."


def online_vs_offline_seeds(r: dict) -> list[str]:
    """Results over interleaved seeds: per-mode mean ± CI and paired differences."""
    s, d, m, summary = r["settings"], r["dump"], r["machine"], r["summary"]
    seeds = len(s["seeds"])
    (before, after) = r["load_average_before_after"]
    lines = [
        f"{s['train_images']} train images, {s['val_images']} val images, "
        f"{s['student_epochs']} epochs, {batch(s)}, 32x32, {seeds} student seeds "
        f"({', '.join(map(str, s['seeds']))}), modes interleaved: each seed round runs every "
        "mode once, in an order rotated from round to round. The teacher is trained and dumped "
        "once; the seeds vary the student (init, data order, augmentation, offline view "
        f"schedule). {_teacher_line(r)} {machine(m)[:-1]}; load average (1 min) "
        f"{before[0]:.1f} before, {after[0]:.1f} after.",
        "",
        "| mode | last-epoch top-1, mean ± std | 95% CI | per seed | median s/epoch | images/s "
        "| train s | dump s | end-to-end s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, v in summary["modes"].items():
        t = v["top1"]
        std = f" ± {100 * t['std']:.2f}" if t["std"] is not None else ""
        ci = f"± {100 * t['ci95']:.2f}" if t["ci95"] is not None else "-"
        dump = d["seconds"] if mode.startswith("offline") else 0.0
        lines.append(
            f"| {label(mode)} | {100 * t['mean']:.2f}%{std} | {ci} | {per_seed(t['values'])}"
            f" | {v['median_epoch_seconds']:.1f} | {v['median_images_per_second']:.0f} | "
            f"{v['median_train_seconds']:.0f} | {dump:.0f} | "
            f"{v['median_train_seconds'] + dump:.0f} |"
        )
    lines += [
        "",
        f"Dump (once): {d['rows']} rows ({d['views']} views per image) in {d['seconds']:.0f} "
        f"s, {d['cache_bytes'] / 1e6:.2f} MB, codec {d['codec']['name']}. Times are medians "
        "over the seeds of each run's median epoch (eval excluded) and of its training "
        "seconds.",
        "",
        "| offline run | vs | top-1 difference, paired, mean ± 95% CI (points) | 95% interval "
        "| training-stage speedup | end-to-end speedup |",
        "|---|---|---|---|---|---|",
    ]
    for c in summary["comparisons"]:
        diff = c["top1_difference"]
        e2e = c["end_to_end_speedup"]
        speed = (
            f"{c['train_speedup']:.2f}x"
            if e2e is not None
            else f"epoch time ratio {1 / c['train_speedup']:.3f}"
        )
        lines.append(
            f"| {label(c['offline'])} | {label(c['vs'])} | {points(diff)} | "
            f"{interval_reading(diff)} | {speed} | " + (f"{e2e:.2f}x |" if e2e is not None else "|")
        )
    online = [x for x in summary["modes"] if x.startswith("online")]
    if online:
        like = "online_bn_eval" if "online_bn_eval" in online else online[0]
        lines += ["", f"Offline against {label(like)}, over {seeds} paired seeds:", ""]
        for c in summary["comparisons"]:
            if c["vs"] == like:
                diff = c["top1_difference"]
                lines.append(
                    f"- {label(c['offline'])}: {points(diff)} points, 95% interval "
                    f"{interval_reading(diff)}."
                )
    lines += ["", reproduce(r)]
    return lines


def online_vs_offline_single(r: dict) -> list[str]:
    """A results file of the earlier one-seed schema, rendered as it is: no interval."""
    s, d, m = r["settings"], r["dump"], r["machine"]
    lines = [
        f"{s['train_images']} train images, {s['student_epochs']} epochs, batch "
        f"{s['batch_size']}, 32x32, one seed (0). {_teacher_line(r)} {machine(m)}",
        "",
        "| mode | top-1 | median s/epoch | images/s | train s | dump s | end-to-end s |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, v in r["modes"].items():
        dump = d["seconds"] if mode.startswith("offline") else 0.0
        lines.append(
            f"| {label(mode)} | {100 * v['top1']:.2f}% | {v['median_epoch_seconds']:.1f} | "
            f"{v['median_images_per_second']:.0f} | {v['train_seconds']:.0f} | "
            f"{dump:.0f} | {v['train_seconds'] + dump:.0f} |"
        )
    lines += [
        "",
        f"Dump: {d['rows']} rows ({d['views']} views per image) in {d['seconds']:.0f} s, "
        f"{d['cache_bytes'] / 1e6:.2f} MB, codec {d['codec']['name']}.",
        "",
        *comparison(r),
        "",
        "One run per mode with seed 0 (top-1: best epoch), so no difference above has an "
        "interval and none ranks the modes. The modes ran once each in the order listed, so "
        "student-only, first in its process, also paid Paddle's one-time warm-up. The command "
        "below, run now, runs seeds 0,1,2 interleaved and replaces this table with means, 95% "
        "intervals and paired differences.",
        "",
        f"Reproduce: `{r['command']}`",
    ]
    return lines


def comparison(r: dict) -> list[str]:
    """Offline runs against every online run and the student-only run, from per-mode numbers."""
    modes, dump = r["modes"], r["dump"]["seconds"]
    online = [m for m in modes if m.startswith("online")]
    offline = [m for m in modes if m.startswith("offline")]
    head = "| offline run | vs | top-1 difference | training-stage speedup | end-to-end speedup |"
    lines = [head, "|---|---|---|---|---|"]
    for off in offline:
        o = modes[off]
        for on in online:
            n = modes[on]
            lines.append(
                f"| {label(off)} | {label(on)} | {100 * (o['top1'] - n['top1']):+.2f} points | "
                f"{n['median_epoch_seconds'] / o['median_epoch_seconds']:.2f}x | "
                f"{n['train_seconds'] / (o['train_seconds'] + dump):.2f}x |"
            )
        ratio = o["median_epoch_seconds"] / modes["student_only"]["median_epoch_seconds"]
        lines.append(
            f"| {label(off)} | student only (no KD) | "
            f"{100 * (o['top1'] - modes['student_only']['top1']):+.2f} points | "
            f"epoch time ratio {ratio:.3f} | |"
        )
    return lines


def student_recipe(before: dict, after: dict) -> str:
    """The accuracy pair before and after the recipe change, one row per results file: the
    student-only column isolates the student's recipe (no teacher); the distilled columns
    also move with the teacher."""
    lines = [
        "| run | students | teacher top-1 | student only | online SSLD | offline SSLD "
        "| offline minus student only, paired |",
        "|---|---|---|---|---|---|---|",
    ]
    for when, r in (("before", before), ("after", after)):
        s, modes = r["settings"], r["summary"]["modes"]
        online = next(m for m in modes if m.startswith("online"))
        offline = next(m for m in modes if m.startswith("offline"))
        diff = next(
            c["top1_difference"]
            for c in r["summary"]["comparisons"]
            if c["offline"] == offline and c["vs"] == "student_only"
        )
        cells = [
            f"{100 * modes[m]['top1']['mean']:.2f}% ± {100 * modes[m]['top1']['ci95']:.2f} "
            f"(std {100 * modes[m]['top1']['std']:.2f})"
            for m in ("student_only", online, offline)
        ]
        lines.append(
            f"| {when} | {s['train_images']} images, {batch(s)}, {s['student_epochs']} epochs, "
            f"{len(s['seeds'])} seeds "
            f"| {100 * r['teacher']['top1']:.2f}% ({s['teacher_epochs']} epochs) | "
            + " | ".join(cells)
            + f" | {points(diff)}: {interval_reading(diff)} |"
        )
    return "\n".join(
        [*lines, "", "Top-1 as mean ± 95% CI over seeds (std in brackets), last epoch."]
    )


def _pair_numbers(r: dict) -> dict[str, str]:
    """The headline cells of one pair's file, in either schema: offline minus student only and
    minus online (with what the interval shows), and the speedups over online."""
    if "runs" in r:
        comps = r["summary"]["comparisons"]
        offline = comps[0]["offline"]
        mine = [c for c in comps if c["offline"] == offline]
        alone = next(c for c in mine if c["vs"] == "student_only")["top1_difference"]
        online = [c for c in mine if c["vs"].startswith("online")]
        like = next((c for c in online if c["vs"] == "online_bn_eval"), online[0])
        diff = like["top1_difference"]
        return {
            "seeds": f"{len(r['settings']['seeds'])} paired seeds",
            "alone": f"{points(alone)} ({interval_reading(alone)})",
            "online": f"{points(diff)} vs {label(like['vs'])} ({interval_reading(diff)})",
            "train": f"{like['train_speedup']:.2f}x",
            "e2e": f"{like['end_to_end_speedup']:.2f}x",
        }
    modes, dump = r["modes"], r["dump"]["seconds"]
    off = next(m for m in modes if m.startswith("offline"))
    on = next(m for m in modes if m.startswith("online"))
    o, n, a = modes[off], modes[on], modes["student_only"]
    return {
        "seeds": "one seed, no interval",
        "alone": f"{100 * (o['top1'] - a['top1']):+.2f}",
        "online": f"{100 * (o['top1'] - n['top1']):+.2f} vs {label(on)}",
        "train": f"{n['median_epoch_seconds'] / o['median_epoch_seconds']:.2f}x",
        "e2e": f"{n['train_seconds'] / (o['train_seconds'] + dump):.2f}x",
    }


def headline(accuracy: dict, speed: dict) -> str:
    """The README's results table: both pairs' offline-vs-online numbers, linked to their page."""
    page = "docs/results/online_vs_offline.md"
    acc, spd = _pair_numbers(accuracy), _pair_numbers(speed)
    teacher = speed["teacher"]["top1"] is None
    return "\n".join(
        [
            "| pair | offline SSLD top-1 minus student alone, points | minus online SSLD, "
            "points | training-stage speedup over online | end-to-end (dump included) |",
            "|---|---|---|---|---|",
            f"| [accuracy pair]({page}): ResNet18 -> MobileNetV3_small_x0_35, Fashion-MNIST, "
            f"{acc['seeds']} | {acc['alone']} | {acc['online']} | {acc['train']} | "
            f"{acc['e2e']} |",
            f"| [speed pair]({page}): ResNet50_vd -> MobileNetV3_small_x1_0, {spd['seeds']}"
            + (", random teacher (timing only)" if teacher else "")
            + f" | {'-' if teacher else spd['alone']} | {'-' if teacher else spd['online']} | "
            f"{spd['train']} | {spd['e2e']} |",
        ]
    )
