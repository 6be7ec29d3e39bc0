"""Studies of one table each: SSLD's unlabeled set from a pool, the near-duplicate search at
scale, data-free distillation, and PaddleClas's own distillation configs run offline."""

from __future__ import annotations

from .common import batch, machine, mean_ci_cell, per_seed


def ssld_pool(r: dict) -> str:
    s, sel = r["settings"], r["selection"]
    names = {
        "student_only": "student alone on the labeled set (labels, no teacher)",
        "labeled": "labeled set, distilled",
        "random": "labeled + random draw from the pool (selected set's size)",
        "selected": f"labeled + `select` (top {s['per_class']} per class)",
        "pool": "labeled + the whole pool",
    }
    lines = [
        f"Fashion-MNIST classes 0-{s['task_classes'] - 1}; {s['labeled']} labeled images "
        f"train the teacher (ResNet18, {100 * r['teacher']['top1']:.2f}% top-1); a pool of "
        f"{s['pool']} unlabeled training images ({100 * r['pool_ood_share']:.1f}% from the two "
        f"held-out classes) plus {sel['planted']} planted near-copies of evaluation images. "
        f"One dump of labeled + pool ({s['views']} views); every student trains from a subset "
        f"of it: MobileNetV3_small_x0_35, DML, {s['student_epochs']} epochs, {batch(s)}, "
        f"{len(s['seeds'])} seeds interleaved, last-epoch top-1 on "
        f"{s['val_images']} evaluation images. {machine(r['machine'])}",
        "",
        "| student trained on | pool images added | out-of-distribution share | planted copies "
        "in the set | top-1, mean ± 95% CI | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for arm, v in r["summary"].items():
        lines.append(
            f"| {names[arm]} | {v['extra_images']:.0f} | {100 * v['ood_share']:.1f}% | "
            f"{v['planted_duplicates_in_set']} | {mean_ci_cell(v)} | {per_seed(v['values'])} |"
        )
    lines += ["", "Paired differences (selected minus the other arm, same seed):", ""]
    for name, v in r["paired"].items():
        ci = f" ± {100 * v['ci95']:.2f}" if v["ci95"] is not None else ""
        lines.append(f"- {name.replace('_', ' ')}: {100 * v['mean']:+.2f} points{ci}")
    lines += [
        "",
        f"`select` refused {sel['duplicates_refused']} pool images as copies of evaluation "
        f"images: **{sel['planted_removed']} of the {sel['planted']} planted copies**, and "
        f"{sel['false_duplicates']} others; "
        + (
            f"classes short of {s['per_class']}: "
            + ", ".join(str(c) for c in sel["short_classes"])
            + " (fewer images predicted as them)."
            if sel["short_classes"]
            else f"every class had {s['per_class']}."
        ),
        "",
        f"Reproduce: `{r['command']}`",
    ]
    return "\n".join(lines)


def near_duplicates(r: dict) -> str:
    """The candidate search at pool scale: speed, recall of planted copies, memory."""
    before, after = r["load_average_before"], r["load_average_after"]
    return "\n".join(
        [
            "| measurement | value |",
            "|---|---|",
            f"| pool hashes / excluded images (x {r['variants']} crop variants) | "
            f"{r['pool']:,} / {r['excluded']:,} |",
            f"| Hamming radius | {r['distance']} bits |",
            f"| index build | {r['build_seconds']:.1f} s |",
            f"| search: {r['queries']:,} queries | {r['search_seconds']:.0f} s "
            f"({r['queries_per_second']:,.0f} queries/s) |",
            f"| planted near copies missed | {r['planted_missed']} of {r['planted']} |",
            f"| queries checked against brute force, mismatches | "
            f"{r['brute_force_checked_queries']}, {r['brute_force_mismatches']} |",
            f"| candidate pairs within the radius / pool images flagged (expected by chance, "
            f"unplanted) | {r['pairs_within_distance']:,} / {r['pool_images_flagged']:,} "
            f"({r['pool_images_flagged_expected_unplanted']:,.0f}) |",
            f"| pixel verification per candidate (one thread) | "
            f"{1000 * r['verify_seconds_per_candidate']:.2f} ms, about "
            f"{r['verify_seconds_extrapolated']:.0f} s for all candidates (extrapolated) |",
            f"| peak RSS | {r['peak_rss_bytes'] / 2**20:,.0f} MiB |",
            "",
            f"{machine(r['machine'])} Load average (1, 5, 15 min) before "
            f"{'/'.join(f'{x:.1f}' for x in before)}, after "
            f"{'/'.join(f'{x:.1f}' for x in after)}. Note: {r['note']}. "
            f"Reproduce: `{r['command']}`",
        ]
    )


def data_free(r: dict) -> str:
    """Students distilled from DAFL-generated, noise and real images (pipelines/data_free.py)."""
    s, sources = r["settings"], r["student"]["sources"]
    labels = {
        "datafree": "DAFL-generated images only (data-free)",
        "noise": "uniform random-noise images (floor)",
        "real": "real training images (ceiling)",
    }
    lines = [
        f"{s['data']['train_images']} images per student, {s['data']['student_epochs']} epochs, "
        f"{s['data']['views']} views, {s['image_size']}x{s['image_size']}, eval on "
        f"{s['data']['val_images']} real test images; generator {s['synth_steps']} steps of "
        f"{s['synth_batch']}. {machine(r['machine'])}",
        "",
        "| model | trained on | top-1 (last epoch) |",
        "|---|---|---|",
        f"| teacher {r['teacher']['name']} | real training images, labels | "
        f"{100 * r['teacher']['top1']:.2f}% |",
    ]
    for source in ("datafree", "noise", "real"):
        lines.append(
            f"| student {r['student']['name']}, offline SSLD | {labels[source]} | "
            f"{100 * sources[source]['top1']:.2f}% |"
        )
    counts = r["synthesis"]["teacher_class_counts"]
    n = s["data"]["val_images"]
    real = sources["real"]["top1"]
    se = 100 * (real * (1 - real) / n) ** 0.5
    lines += [
        "",
        f"Teacher's classes over the generated images: {counts} (mean confidence "
        f"{r['synthesis']['teacher_mean_confidence']:.2f}). One seed on {n} test images: a "
        f"top-1 near the real-image student's has a standard error of about {se:.1f} points. "
        f"Reproduce: `{r['command']}`",
        "",
        "![DAFL images, one row per teacher class](benchmarks/results/data_free_preview.png)",
    ]
    return "\n".join(lines)


def paddleclas_configs(r: dict) -> str:
    """Every distillation config PaddleClas ships, and whether it runs offline."""
    counts: dict[str, int] = {}
    lines = ["| PaddleClas config | offline | why | weights in this run |", "|---|---|---|---|"]
    for path, v in sorted(r["configs"].items()):
        counts[v["status"]] = counts.get(v["status"], 0) + 1
        short = path.removeprefix("ppcls/configs/")
        weights = (v.get("weights") or "-").replace("|", "/")
        lines.append(f"| `{short}` | {v['status']} | {v['reason'].replace('|', '/')} | {weights} |")
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    source = r["paddleclas"]
    return "\n".join(
        [
            f"{len(r['configs'])} configs from {source['repository']} at "
            f"`{source['commit'][:10]}`: {summary}.",
            "",
            *lines,
            "",
            f"Reproduce: `{r['command']}` (checked by tests/test_paddleclas_configs.py).",
        ]
    )
