"""What a codec costs: student accuracy against bytes per view, and bytes on disk."""

from __future__ import annotations

from .common import batch, machine, mean_ci_cell, per_seed


def _dropped(v: dict) -> str:
    """A top-k setting's dropped teacher mass; '-' for fp16, 'not measured' in older files."""
    if "dropped_mass" not in v:
        return "not measured"
    return "-" if v["dropped_mass"] is None else f"{100 * v['dropped_mass']:.2f}%"


def codec_accuracy(r: dict, png: str) -> str:
    """The codec/accuracy table of one task's results file (its chart at `png`), and the
    1000-class gradient check when the file carries it (the 10-class run's)."""
    s = r["settings"]
    classes = s.get("classes", 10)
    data = (
        "Fashion-MNIST pairs (100 classes: two garments side by side, 64x32)"
        if s.get("task") == "pairs"
        else "Fashion-MNIST"
    )
    lines = [
        f"{data}, {s['train_images']} train and {s['val_images']} val images; teacher "
        f"ResNet18 ({100 * r['teacher_top1']:.2f}% top-1, {s['teacher_epochs']} epochs) dumped "
        f"once as fp16 with {s['views']} views, the other codecs transcoded from it (`merge "
        f"--codec`); student MobileNetV3_small_x0_35, DML, {s['student_epochs']} epochs, "
        f"{batch(s)}, {len(s['seeds'])} seeds interleaved, last-epoch top-1. "
        f"{machine(r['machine'])}",
        "",
        f"| codec | bytes per view ({classes} classes) | teacher mass in the rest bucket | top-1, "
        "mean ± 95% CI | minus fp16 (paired) | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for codec, v in r["accuracy"].items():
        d = v["minus_fp16"]
        diff = "-" if d is None or codec == "fp16" else f"{100 * d['mean']:+.2f}"
        if d is not None and d["ci95"] is not None and codec != "fp16":
            diff += f" ± {100 * d['ci95']:.2f}"
        lines.append(
            f"| {codec} | {v['bytes_per_row']} | {_dropped(v)} | {mean_ci_cell(v)} | "
            f"{diff} | {per_seed(v['values'])} |"
        )
    mp = r.get("math_1000_classes")
    if mp is not None:
        lines += [
            "",
            f"`spread`: the same top-k cache with the rest mass spread evenly over the other "
            f"classes (the decode before the rest bucket). At {mp['classes']} classes (synthetic "
            "teacher, no training): cosine between the student's DML gradient under each "
            "codec's target and under the exact distribution, for an untrained student and for "
            "one that has nearly learned the teacher (teacher logits + N(0, 0.5) noise):",
            "",
            "| codec | bytes per view | cosine, untrained student | cosine, student near the "
            "teacher |",
            "|---|---|---|---|",
        ]
        for name, v in mp["settings"].items():
            lines.append(
                f"| {name} | {v['bytes_per_row']} | {v['cosine_random_student']:.3f} | "
                f"{v['cosine_near_student']:.3f} |"
            )
    lines += ["", f"![accuracy against bytes]({png})", "", f"Reproduce: `{r['command']}`"]
    return "\n".join(lines)


def cache_bytes(r: dict) -> str:
    """Bytes on disk per stored view, per codec, backend, class count and views per image."""
    cells: dict[tuple, float] = {}
    for x in r["results"]:
        cells[(x["codec"], x["classes"], x["views"], x["backend"])] = x["bytes_per_view"]
    columns = sorted({(x["classes"], x["views"]) for x in r["results"]})
    head = " | ".join(f"{c} classes, {v} views" for c, v in columns)
    lines = [f"| codec | backend | {head} |", "|---|---|" + "---|" * len(columns)]
    labels = {"fp16": "fp16", "topk": "topk, k=5", "sampled": "sampled, N=12"}
    for codec in dict.fromkeys(x["codec"] for x in r["results"]):
        for backend in dict.fromkeys(x["backend"] for x in r["results"]):
            values = " | ".join(f"{cells[(codec, c, v, backend)]:.1f}" for c, v in columns)
            lines.append(f"| {labels.get(codec, codec)} | {backend} | {values} |")
    t = r["target"]
    index = sorted({x["index_bytes_per_view_in_memory"] for x in r["results"]})
    lines += [
        "",
        f"Bytes on disk per stored view, everything in the cache directory (shards and "
        f"manifest) divided by the views stored ({r['options']['rows']} views per cache, shards "
        f"of {r['options']['shard_size']} views, ImageNet-like paths in class order). The "
        f"lookup index is built in memory, not stored: {index[0]:g} to {index[-1]:g} B per "
        f"view. Target topk k=5, 1000 classes, 8 views, arrow: at most {t['bytes']:g} B; "
        f"measured **{t['measured']:.1f} B** ({'met' if t['met'] else 'NOT met'}). "
        f"Reproduce: `{r['command']}`",
    ]
    return "\n".join(lines)
