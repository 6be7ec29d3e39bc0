"""Render README tables from benchmark results, so no number in the README is typed by hand.

Each table sits between `<!-- BEGIN results:NAME -->` and `<!-- END results:NAME -->` in
README.md and is rewritten from benchmarks/results/*.json. Example:

    python benchmarks/report.py            # rewrite README.md in place
    python benchmarks/report.py --check    # exit 1 if README.md is stale
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LABELS = {
    "student_only": "student only (no KD)",
    "online_bn_train": "online SSLD (teacher BN train, as PaddleClas)",
    "online_bn_eval": "online SSLD (teacher BN eval)",
}


def _load(name: str) -> dict | None:
    """A results file, with its recorded command made runnable anywhere: the interpreter
    path of the machine that ran it, or a bare script path, becomes `python`."""
    path = RESULTS / name
    if not path.exists():
        return None
    r = json.loads(path.read_text())
    if isinstance(r.get("command"), str):
        command = re.sub(r"^\S*/python[0-9.]*(?=\s)", "python", r["command"])
        if re.match(r"\S+\.py(\s|$)", command):
            command = f"python {command}"
        r["command"] = command
    return r


def _label(mode: str) -> str:
    if mode.startswith("offline_v"):
        return f"offline SSLD, {mode[len('offline_v') :]} view(s)"
    return LABELS.get(mode, mode)


def _reproduce(r: dict) -> str:
    """The reproduce line, with the results file's note on how this run was made, if any."""
    note = f" (this run: {r['note']})" if "note" in r else ""
    return f"Reproduce: `{r['command']}`{note}"


def _points(v: dict) -> str:
    """Mean ± 95% CI half-width of a mean_ci entry, in points."""
    ci = f" ± {100 * v['ci95']:.2f}" if v["ci95"] is not None else ""
    return f"{100 * v['mean']:+.2f}{ci}"


def interval_reading(d: dict, first: str = "offline") -> str:
    """What a paired difference's 95% interval shows, and no more (`first` is the side the
    difference is taken from)."""
    if d["ci95"] is None:
        return "none (one seed)"
    lo, hi = 100 * (d["mean"] - d["ci95"]), 100 * (d["mean"] + d["ci95"])
    span = f"{lo:+.2f} to {hi:+.2f} points"
    if lo <= 0 <= hi:
        return f"{span}: contains 0, so neither is shown ahead; any difference in it fits"
    return f"{span}: {first} {'higher' if lo > 0 else 'lower'}"


def online_vs_offline(pair: str) -> str:
    r = _load(f"online_vs_offline_{pair}.json")
    if r is None:
        return (
            f"_not measured yet: run `python benchmarks/online_vs_offline.py --pair {pair} "
            "--seeds 0,1,2`_"
        )
    return "\n".join(online_vs_offline_seeds(r) if "runs" in r else online_vs_offline_single(r))


def _teacher_line(r: dict) -> str:
    t = r["teacher"]
    if t["top1"] is None:
        return (
            "Teacher: random weights (a timing run: the top-1 columns say nothing about "
            "distillation)."
        )
    return f"Teacher top-1: {100 * t['top1']:.2f}%."


def _batch(s: dict) -> str:
    """The students' batch, and their lr when the file records it (files written before
    results recorded each config's recipe ran the student config's batch at lr 0.1)."""
    r = s.get("student_recipe") or {"batch_size": s["batch_size"], "lr": 0.1}
    return f"batch {r['batch_size']} at lr {r['lr']}"


def online_vs_offline_seeds(r: dict) -> list[str]:
    """Results over interleaved seeds: per-mode mean ± CI and paired differences."""
    s, d, m, summary = r["settings"], r["dump"], r["machine"], r["summary"]
    seeds = len(s["seeds"])
    (before, after) = r["load_average_before_after"]
    lines = [
        f"{s['train_images']} train images, {s['val_images']} val images, "
        f"{s['student_epochs']} epochs, {_batch(s)}, 32x32, {seeds} student seeds "
        f"({', '.join(map(str, s['seeds']))}), modes interleaved: each seed round runs every "
        "mode once, in an order rotated from round to round. The teacher is trained and dumped "
        "once; the seeds vary the student (init, data order, augmentation, offline view "
        f"schedule). {_teacher_line(r)} Machine: {m['nproc']} cores, {m['cpu']}, Paddle "
        f"{m['paddle']} on CPU; load average (1 min) {before[0]:.1f} before, {after[0]:.1f} "
        "after.",
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
            f"| {_label(mode)} | {100 * t['mean']:.2f}%{std} | {ci} | "
            + ", ".join(f"{100 * x:.2f}" for x in t["values"])
            + f" | {v['median_epoch_seconds']:.1f} | {v['median_images_per_second']:.0f} | "
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
            f"| {_label(c['offline'])} | {_label(c['vs'])} | {_points(diff)} | "
            f"{interval_reading(diff)} | {speed} | " + (f"{e2e:.2f}x |" if e2e is not None else "|")
        )
    online = [x for x in summary["modes"] if x.startswith("online")]
    if online:
        like = "online_bn_eval" if "online_bn_eval" in online else online[0]
        lines += ["", f"Offline against {_label(like)}, over {seeds} paired seeds:", ""]
        for c in summary["comparisons"]:
            if c["vs"] == like:
                diff = c["top1_difference"]
                lines.append(
                    f"- {_label(c['offline'])}: {_points(diff)} points, 95% interval "
                    f"{interval_reading(diff)}."
                )
    lines += ["", _reproduce(r)]
    return lines


RECIPE_FILES = {
    "before": "online_vs_offline_accuracy_batch128.json",
    "after": "online_vs_offline_accuracy.json",
}


def student_recipe() -> str:
    """The accuracy pair before and after the recipe change, one row per results file: the
    student-only column isolates the student's recipe (no teacher); the distilled columns
    also move with the teacher."""
    lines = [
        "| run | students | teacher top-1 | student only | online SSLD | offline SSLD "
        "| offline minus student only, paired |",
        "|---|---|---|---|---|---|---|",
    ]
    for when, name in RECIPE_FILES.items():
        r = _load(name)
        if r is None or "runs" not in r:
            rerun = (
                "python benchmarks/online_vs_offline.py --pair accuracy --preset small --images "
                "4000 --val-images 1000 --teacher-epochs 8 --epochs 4 --views 4 --online-bn eval "
                "--seeds 0,1,2,3,4"
            )
            return (
                f"_not measured yet: the {when} run's results, benchmarks/results/{name}. "
                "Until the rerun at the current recipe lands, the accuracy table above is the "
                f"before run; the rerun is `{rerun}`, after which that table's file moves to "
                f"{RECIPE_FILES['before']}._"
            )
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
            f"| {when} | {s['train_images']} images, {_batch(s)}, {s['student_epochs']} epochs, "
            f"{len(s['seeds'])} seeds "
            f"| {100 * r['teacher']['top1']:.2f}% ({s['teacher_epochs']} epochs) | "
            + " | ".join(cells)
            + f" | {_points(diff)}: {interval_reading(diff)} |"
        )
    return "\n".join(
        [
            *lines,
            "",
            "Top-1 as mean ± 95% CI over seeds (std in brackets), last epoch. Files: "
            + ", ".join(f"`benchmarks/results/{n}`" for n in RECIPE_FILES.values())
            + ".",
        ]
    )


def online_vs_offline_single(r: dict) -> list[str]:
    """A results file of the earlier one-seed schema, rendered as it is: no interval."""
    s, d, m = r["settings"], r["dump"], r["machine"]
    lines = [
        f"{s['train_images']} train images, {s['student_epochs']} epochs, batch "
        f"{s['batch_size']}, 32x32, one seed (0). {_teacher_line(r)} Machine: {m['nproc']} "
        f"cores, {m['cpu']}, Paddle {m['paddle']} on CPU.",
        "",
        "| mode | top-1 | median s/epoch | images/s | train s | dump s | end-to-end s |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, v in r["modes"].items():
        dump = d["seconds"] if mode.startswith("offline") else 0.0
        lines.append(
            f"| {_label(mode)} | {100 * v['top1']:.2f}% | {v['median_epoch_seconds']:.1f} | "
            f"{v['median_images_per_second']:.0f} | {v['train_seconds']:.0f} | "
            f"{dump:.0f} | {v['train_seconds'] + dump:.0f} |"
        )
    lines += [
        "",
        f"Dump: {d['rows']} rows ({d['views']} views per image) in {d['seconds']:.0f} s, "
        f"{d['cache_bytes'] / 1e6:.2f} MB, codec {d['codec']['name']}.",
        "",
    ]
    lines += comparison(r)
    lines += [
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
                f"| {_label(off)} | {_label(on)} | {100 * (o['top1'] - n['top1']):+.2f} points | "
                f"{n['median_epoch_seconds'] / o['median_epoch_seconds']:.2f}x | "
                f"{n['train_seconds'] / (o['train_seconds'] + dump):.2f}x |"
            )
        ratio = o["median_epoch_seconds"] / modes["student_only"]["median_epoch_seconds"]
        lines.append(
            f"| {_label(off)} | student only (no KD) | "
            f"{100 * (o['top1'] - modes['student_only']['top1']):+.2f} points | "
            f"epoch time ratio {ratio:.3f} | |"
        )
    return lines


def dump_throughput() -> str:
    r = _load("dump_throughput.json")
    if r is None:
        return "_not measured yet: run `python benchmarks/dump_throughput.py`_"
    lines = ["| measurement | views/s (median) |", "|---|---|"]
    for key, label in (("bare", "bare teacher forward"), ("dump", "dump-teacher")):
        lines.append(f"| {label} | {r[key]['views_per_s']:.1f} |")
    lines += ["", f"Ratio dump / bare: **{r['ratio']:.3f}**. Reproduce: `{r['command']}`"]
    return "\n".join(lines)


def cache_formats() -> str:
    r = _load("cache_formats.json")
    if r is None:
        return "_not measured yet: run `python benchmarks/cache_formats.py`_"
    lines = [
        "| payload | backend | codec bytes/row | file bytes/row | write rows/s "
        "| random reads rows/s |",
        "|---|---|---|---|---|---|",
    ]
    for row in r["results"]:
        lines.append(
            f"| {row['payload']} | {row['backend']} | {row['payload_bytes_per_row']} | "
            f"{row['bytes_per_row']:.1f} | "
            f"{row['write_rows_per_s']:.0f} | {row['read_rows_per_s']:.0f} |"
        )
    lines += [
        "",
        f"Chosen default: **{r['recommendation']['default']}** (rule: "
        f"{r['recommendation']['criterion']}). Reproduce: `{r['command']}`",
    ]
    return "\n".join(lines)


def codec_bytes() -> str:
    """Payload bytes per cached row, computed from the codecs themselves."""
    from offline_ssld.cache.codecs import build_codec

    lines = ["| codec (defaults) | 10 classes | 1000 classes |", "|---|---|---|"]
    for name, label in (("fp16", "fp16"), ("topk", "topk, k=5"), ("sampled", "sampled, N=12")):
        small, large = (build_codec(name, c).bytes_per_row() for c in (10, 1000))
        lines.append(f"| {label} | {small} | {large} |")
    lines += [
        "",
        "Each view also stores its view parameters (9 B for a crop box and a flip); key, path "
        "and label are stored once per image. All included, measured: see below.",
    ]
    return "\n".join(lines)


def cache_bytes() -> str:
    r = _load("cache_bytes.json")
    if r is None:
        return "_not measured yet: run `python benchmarks/cache_bytes.py`_"
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


def dump_scaling() -> str:
    r = _load("dump_scaling.json")
    if r is None:
        return "_not measured yet: run `python benchmarks/dump_scaling.py`_"
    lines = ["| processes | views/s (median) | speedup | OMP_NUM_THREADS |", "|---|---|---|---|"]
    for procs, v in sorted(r["procs"].items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| {procs} | {v['median_views_per_s']:.1f} | {v['speedup']:.2f}x | "
            f"{v['omp_num_threads']} |"
        )
    lines += [
        "",
        f"{r['teacher']} ({r['weights']} weights), {r['rows']} views in {r['shards']} "
        f"shards; caches identical across process counts: {r['identical_caches']}. "
        f"Reproduce: `{r['command']}`",
    ]
    return "\n".join(lines)


def codec_loss() -> str:
    """Every codec x loss pair and its status, from the rule train-student applies."""
    from offline_ssld.cache.codecs import CODEC_NAMES, build_codec
    from offline_ssld.losses import LOSSES, pairing

    codecs = [build_codec(name, 10) for name in CODEC_NAMES]
    rows = []
    for entry in LOSSES.values():
        settings = [entry.params]
        if "temperature" in entry.params:
            other = 1.0 if entry.params["temperature"] != 1.0 else 4.0
            settings = sorted(
                [entry.params, {**entry.params, "temperature": other}],
                key=lambda a: a["temperature"],
            )
        for args in settings:
            label = entry.paddleclas_names[0]
            if "temperature" in args:
                label += f", T={args['temperature']:g}"
            cells = [pairing(c.target, entry.kind, args)[0] for c in codecs]
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
    head = "| loss | " + " | ".join(c.name for c in codecs) + " |"
    notes = [
        "",
        "exact: the loss sees the teacher's distribution; unbiased: an unbiased estimate of it, "
        "for losses linear in the target; buckets: scored on the k stored classes plus one "
        "rest bucket (the student's mass on the other classes), exact for what is stored; "
        "approximate: exact on the k stored classes and the rest mass, the rest spread evenly "
        "over the other classes; refused: train-student stops before the first "
        "batch, naming the loss, the codec and what to use instead.",
    ]
    return "\n".join([head, "|---|" + "---|" * len(codecs), *rows, *notes])


def backends() -> str:
    from offline_ssld.cache.backends import BACKENDS

    lines = ["| backend | shard files | storage |", "|---|---|---|"]
    lines += [
        f"| `{b.name}` | `shard-NNNNN{b.suffix}` | {b.description} |" for b in BACKENDS.values()
    ]
    return "\n".join(lines)


def paddleclas_configs() -> str:
    r = _load("paddleclas_configs.json")
    if r is None:
        return "_not measured yet: run `python benchmarks/paddleclas_configs.py`_"
    counts: dict[str, int] = {}
    lines = ["| PaddleClas config | offline | why |", "|---|---|---|"]
    for path, v in sorted(r["configs"].items()):
        counts[v["status"]] = counts.get(v["status"], 0) + 1
        short = path.removeprefix("ppcls/configs/")
        lines.append(f"| `{short}` | {v['status']} | {v['reason'].replace('|', '/')} |")
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


def data_free() -> str:
    """Students distilled from DAFL-generated, noise and real images (pipelines/data_free.py)."""
    r = _load("data_free.json")
    if r is None:
        return (
            "_not measured yet: run `python pipelines/data_free.py --preset real --out "
            "benchmarks/results/data_free.json`_"
        )
    s, m, sources = r["settings"], r["machine"], r["student"]["sources"]
    labels = {
        "datafree": "DAFL-generated images only (data-free)",
        "noise": "uniform random-noise images (floor)",
        "real": "real training images (ceiling)",
    }
    lines = [
        f"{s['data']['train_images']} images per student, {s['data']['student_epochs']} epochs, "
        f"{s['data']['views']} views, {s['image_size']}x{s['image_size']}, eval on "
        f"{s['data']['val_images']} real test images; generator {s['synth_steps']} steps of "
        f"{s['synth_batch']}. Machine: {m['nproc']} cores, {m['cpu']}, Paddle {m['paddle']} on "
        "CPU.",
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
    lines += [
        "",
        f"Teacher's classes over the generated images: {counts} (mean confidence "
        f"{r['synthesis']['teacher_mean_confidence']:.2f}). Reproduce: `{r['command']}`",
    ]
    return "\n".join(lines)


def cache_scale(name: str = "cache_scale.json") -> str:
    r = _load(name)
    if r is None:
        return "_not measured yet: run `python benchmarks/cache_scale.py`_"
    o = r["options"]
    lines = [
        "| rows | shards | build s | first start s | start s | rows/s | main RSS private MiB "
        "| worker RSS private MiB | bytes/row |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["results"]:
        workers = [v["anon"] for k, v in x["rss"].items() if k.startswith("worker")]
        lines.append(
            f"| {x['rows']:,} | {x['shards']} | {x['build_seconds']:.1f} | "
            f"{x['startup_first_seconds']:.2f} | {x['startup_seconds']:.2f} | "
            f"{x['rows_per_s']:,.0f} | {x['rss']['main']['anon'] / 2**20:.0f} | "
            f"{max(workers, default=0) / 2**20:.0f} | {x['bytes_per_row']:.1f} |"
        )
    s = r["summary"]
    growth = [g for g in s["anon_rss_growth_bytes_per_row"].values() if g is not None]
    (before, after) = r["load_average_before_after"]
    lines += [
        "",
        f"Codec {o['codec']} {o['codec_settings']}, {o['classes']} classes, {o['views']} views per "
        f"image, batch {o['batch_size']}, {o['workers']} loader workers, {o['batches']} batches "
        f"timed after the first. rows/s at the largest size is "
        f"**{s['rows_per_s_ratio_largest_to_smallest']:.2f}x** the smallest; slowest "
        f"{s['min_rows_per_s']:,.0f} rows/s; start-up at the largest "
        f"{s['startup_seconds_largest']:.2f} s; private RSS growth "
        + (f"{max(growth):.1f} B per row (largest over processes)." if growth else "n/a.")
        + f" Load average (1, 5, 15 min) before {before[0]:.1f}/{before[1]:.1f}/{before[2]:.1f}, "
        f"after {after[0]:.1f}/{after[1]:.1f}/{after[2]:.1f} on {r['machine']['nproc']} cores. "
        f"Reproduce: `{r['command']}`",
    ]
    return "\n".join(lines)


def data_only() -> str:
    r = _load("data_only.json")
    if r is None:
        return "_not measured yet: run `python benchmarks/data_only.py`_"
    c, o = r["cache"], r["options"]
    lines = [
        "| cache | images/s | share of the in-memory images/s |",
        "|---|---|---|",
        f"| mapped from disk (page cache warm) | {r['images_per_s']:.0f} | {r['ratio']:.2f} |",
        f"| copied into memory | {r['in_memory_images_per_s']:.0f} | 1.00 |",
        "",
        "| stage (mapped run) | us per image, summed over workers |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["stage_us_per_image"].items()]
    (before, after) = r["load_average_before_after"]
    lines += [
        "",
        f"One run: {o['images']} images x {o['views']} views = {c['rows']:,} views, fp16, 1000 "
        f"classes, {c['shards']} shards of the default size ({c['bytes'] / 1e9:.2f} GB), batch "
        f"{o['batch']}, {o['workers']} loader workers. Load average before "
        f"{before[0]:.1f}, after {after[0]:.1f} on {r['machine']['nproc']} cores. ",
    ]
    return "\n".join(lines)


def ensemble(name: str = "ensemble.json", extra: str = "", epochs: int = 3) -> str:
    """An ensemble benchmark's block; `extra` and `epochs` complete the hint to run it."""
    r = _load(name)
    if r is None:
        return (
            "_not measured yet: run `python benchmarks/ensemble.py --images 4000 "
            f"--teacher-epochs 3 --epochs {epochs} --seeds 0,1,2{extra}`_"
        )
    s, m, summary = r["settings"], r["machine"], r["summary"]
    seeds = len(s["seeds"])
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
    lines = [
        f"{images}, {s['val_images']} val images, teachers "
        f"{s['teacher_epochs']} epochs, students {s['student_epochs']} epochs, {s['views']} "
        f"views per cache, {_batch(s)}, 32x32, rule {s['rule']}, {seeds} student "
        f"seeds. Machine: {m['nproc']} cores, {m['cpu']}, Paddle {m['paddle']} on CPU.",
        "",
    ]
    if "paired" in summary:
        first, *rest = _ensemble_paired(r)
        return "\n".join([lines[0] + first, *rest])
    lines += [
        "| student trained from | teacher top-1 | student top-1, mean ± std over seeds | "
        "per seed |",
        "|---|---|---|---|",
    ]
    for mode, v in summary["top1"].items():
        teacher = r["teachers"].get(mode)
        t_top1 = f"{100 * teacher['top1']:.2f}%" if teacher else "-"
        label = (
            f"ensemble of {summary['members']} ({s['rule']})"
            if mode == "ensemble"
            else f"{teacher['arch']} (seed {teacher['seed']}) alone"
        )
        per_seed = ", ".join(f"{100 * x:.2f}" for x in v["values"])
        lines.append(
            f"| {label} | {t_top1} | {100 * v['mean']:.2f}% ± {100 * v['std']:.2f} | {per_seed} |"
        )
    times = summary["median_epoch_seconds"]
    lines += [
        "",
        f"Ensemble minus best single teacher ({summary['best_single']}): "
        f"{100 * summary['ensemble_minus_best_single']:+.2f} points. Training time, "
        f"{summary['members']} members vs 1 (median epoch seconds of the interleaved runs, "
        f"{times['ensemble']:.1f} s vs {times['single']:.1f} s): "
        f"**{summary['time_ratio']:.3f}x**.",
        "",
        f"Reproduce: `{r['command']}`",
    ]
    return "\n".join(lines)


def _ensemble_label(r: dict, mode: str) -> tuple[str, str]:
    """(label, teacher top-1) of an ensemble benchmark mode."""
    teacher = r["teachers"].get(mode)
    if teacher is None:
        top1 = r.get("ensemble_teacher_top1")  # the combined val probabilities, when recorded
        return (
            f"ensemble of {r['summary']['members']} ({r['settings']['rule']})",
            "-" if top1 is None else f"{100 * top1:.2f}%",
        )
    return f"{teacher['arch']} (seed {teacher['seed']}) alone", f"{100 * teacher['top1']:.2f}%"


def _ensemble_paired(r: dict) -> list[str]:
    """The table and paired differences of a multi-seed ensemble result (last-epoch top-1)."""
    summary, seeds = r["summary"], len(r["settings"]["seeds"])
    lines = [
        " Students are scored by their last-epoch top-1.",
        "",
        "| student trained from | teacher top-1 | student top-1, mean ± 95% CI | per seed |",
        "|---|---|---|---|",
    ]
    for mode, v in summary["top1"].items():
        label, t_top1 = _ensemble_label(r, mode)
        per_seed = ", ".join(f"{100 * x:.2f}" for x in v["values"])
        ci = f" ± {100 * v['ci95']:.2f}" if v["ci95"] is not None else ""
        lines.append(f"| {label} | {t_top1} | {100 * v['mean']:.2f}%{ci} | {per_seed} |")
    lines += ["", "Paired differences (ensemble minus one member, same student seed):", ""]
    for name, v in summary["paired"].items():
        member = name.removeprefix("ensemble_minus_")
        lines.append(
            f"- minus {_ensemble_label(r, member)[0]}: {_points(v)} points; 95% interval "
            f"{interval_reading(v, 'the ensemble')}"
        )
    times = summary["median_epoch_seconds"]
    lines += [
        "",
        f"The ensemble student was above every member's student in "
        f"{summary['seeds_ensemble_above_every_member']} of {seeds} seeds. Training time, "
        f"{summary['members']} members vs 1 (median epoch seconds of the interleaved runs, "
        f"{times['ensemble']:.1f} s vs {times['single']:.1f} s): "
        f"**{summary['time_ratio']:.3f}x**.",
        "",
        _reproduce(r),
    ]
    return lines


def _dropped(v: dict) -> str:
    """A top-k setting's dropped teacher mass; '-' for fp16, 'not measured' in older files."""
    if "dropped_mass" not in v:
        return "not measured"
    return "-" if v["dropped_mass"] is None else f"{100 * v['dropped_mass']:.2f}%"


def codec_accuracy(task: str = "fmnist") -> str:
    """The codec/accuracy table of one task's results file, and the 1000-class gradient check
    when the file carries it (the 10-class run's)."""
    option = "" if task == "fmnist" else f" --task {task}"
    name = f"codec_accuracy{option.replace(' --task ', '_')}.json"
    r = _load(name)
    if r is None:
        return f"_not measured yet: run `python benchmarks/codec_accuracy.py{option}`_"
    s, m = r["settings"], r["machine"]
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
        f"{_batch(s)}, {len(s['seeds'])} seeds interleaved, last-epoch top-1. Machine: "
        f"{m['nproc']} cores, {m['cpu']}, Paddle {m['paddle']} on CPU.",
        "",
        f"| codec | bytes per view ({classes} classes) | teacher mass in the rest bucket | top-1, "
        "mean ± 95% CI | minus fp16 (paired) | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for codec, v in r["accuracy"].items():
        ci = f" ± {100 * v['ci95']:.2f}" if v["ci95"] is not None else ""
        d = v["minus_fp16"]
        diff = "-" if d is None or codec == "fp16" else f"{100 * d['mean']:+.2f}"
        if d is not None and d["ci95"] is not None and codec != "fp16":
            diff += f" ± {100 * d['ci95']:.2f}"
        lines.append(
            f"| {codec} | {v['bytes_per_row']} | {_dropped(v)} | {100 * v['mean']:.2f}%{ci} | "
            f"{diff} | " + ", ".join(f"{100 * x:.2f}" for x in v["values"]) + " |"
        )
    png = f"benchmarks/results/{Path(name).stem}.png"
    if r.get("math_1000_classes") is None:
        return "\n".join(
            [*lines, "", f"![accuracy against bytes]({png})", "", f"Reproduce: `{r['command']}`"]
        )
    mp = r["math_1000_classes"]
    lines += [
        "",
        f"`spread`: the same top-k cache with the rest mass spread evenly over the other "
        f"classes (the decode before the rest bucket). At {mp['classes']} classes (synthetic "
        "teacher, no training): cosine between the student's DML gradient under each codec's "
        "target and under the exact distribution, for an untrained student and for one that "
        "has nearly learned the teacher (teacher logits + N(0, 0.5) noise):",
        "",
        "| codec | bytes per view | cosine, untrained student | cosine, student near the teacher |",
        "|---|---|---|---|",
    ]
    for name, v in mp["settings"].items():
        lines.append(
            f"| {name} | {v['bytes_per_row']} | {v['cosine_random_student']:.3f} | "
            f"{v['cosine_near_student']:.3f} |"
        )
    lines += [
        "",
        f"![accuracy against bytes]({png})",
        "",
        f"Reproduce: `{r['command']}`",
    ]
    return "\n".join(lines)


def ssld_pool() -> str:
    r = _load("ssld_pool.json")
    if r is None:
        return "_not measured yet: run `python pipelines/ssld_pool.py`_"
    s, m, sel = r["settings"], r["machine"], r["selection"]
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
        f"of it: MobileNetV3_small_x0_35, DML, {s['student_epochs']} epochs, {_batch(s)}, "
        f"{len(s['seeds'])} seeds interleaved, last-epoch top-1 on "
        f"{s['val_images']} evaluation images. Machine: {m['nproc']} cores, {m['cpu']}, "
        f"Paddle {m['paddle']} on CPU.",
        "",
        "| student trained on | pool images added | out-of-distribution share | planted copies "
        "in the set | top-1, mean ± 95% CI | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for arm, v in r["summary"].items():
        ci = f" ± {100 * v['ci95']:.2f}" if v["ci95"] is not None else ""
        lines.append(
            f"| {names[arm]} | {v['extra_images']:.0f} | {100 * v['ood_share']:.1f}% | "
            f"{v['planted_duplicates_in_set']} | {100 * v['mean']:.2f}%{ci} | "
            + ", ".join(f"{100 * x:.2f}" for x in v["values"])
            + " |"
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


BLOCKS = {
    "backends": backends,
    "paddleclas_configs": paddleclas_configs,
    "codec_loss": codec_loss,
    "dump_scaling": dump_scaling,
    "codec_bytes": codec_bytes,
    "cache_bytes": cache_bytes,
    "cache_scale": cache_scale,
    "cache_scale_quiet": lambda: cache_scale("cache_scale_quiet.json"),
    "cache_scale_quiet_long": lambda: cache_scale("cache_scale_quiet_long.json"),
    "data_only": data_only,
    "accuracy": lambda: online_vs_offline("accuracy"),
    "student_recipe": student_recipe,
    "speed": lambda: online_vs_offline("speed"),
    "dump_throughput": dump_throughput,
    "cache_formats": cache_formats,
    "data_free": data_free,
    "ensemble": ensemble,
    "ensemble_pair": lambda: ensemble(
        "ensemble_pair.json",
        " --teachers resnet18:0,resnet18:1 --out benchmarks/results/ensemble_pair.json",
    ),
    "ensemble_pair_long": lambda: ensemble(
        "ensemble_pair10.json",
        " --teachers resnet18:0,resnet18:1 --out benchmarks/results/ensemble_pair10.json",
        epochs=10,
    ),
    "ensemble_ssld": lambda: ensemble(
        "ensemble_ssld.json",
        " --teacher-images 1000 --out benchmarks/results/ensemble_ssld.json",
    ),
    "ensemble_disjoint": lambda: ensemble(
        "ensemble_disjoint.json",
        " --teacher-images 1000 --teacher-split disjoint"
        " --out benchmarks/results/ensemble_disjoint.json",
    ),
    "codec_accuracy": codec_accuracy,
    "codec_accuracy_pairs": lambda: codec_accuracy("pairs"),
    "ssld_pool": ssld_pool,
}


def render(text: str) -> str:
    for name, make in BLOCKS.items():
        pattern = re.compile(
            rf"(<!-- BEGIN results:{name} -->\n).*?(<!-- END results:{name} -->)", re.S
        )
        # a replacement template, backslashes escaped (a lambda here defeats mypy or ruff B023)
        body = make().replace("\\", "\\\\")
        text = pattern.sub(rf"\g<1>{body}\n\g<2>", text)
    return text


@click.command()
@click.option("--check", is_flag=True, help="Exit 1 if README.md differs from the results.")
def main(check: bool) -> None:
    """Rewrite README.md's result tables from benchmarks/results/*.json.

    \b
    Example:
      python benchmarks/report.py
    """
    readme = ROOT / "README.md"
    old = readme.read_text()
    new = render(old)
    if check:
        sys.exit(0 if new == old else 1)
    readme.write_text(new)
    click.echo("README.md tables rewritten" if new != old else "README.md already up to date")


if __name__ == "__main__":
    main()
