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
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _label(mode: str) -> str:
    if mode.startswith("offline_v"):
        return f"offline SSLD, {mode[len('offline_v') :]} view(s)"
    return LABELS.get(mode, mode)


def online_vs_offline(pair: str) -> str:
    r = _load(f"online_vs_offline_{pair}.json")
    if r is None:
        return f"_not measured yet: run `python benchmarks/online_vs_offline.py --pair {pair}`_"
    s, d, m = r["settings"], r["dump"], r["machine"]
    teacher = r["teacher"]
    t_top1 = f"{100 * teacher['top1']:.2f}%" if teacher["top1"] is not None else "random weights"
    lines = [
        f"{s['train_images']} train images, {s['student_epochs']} epochs, batch "
        f"{s['batch_size']}, 32x32, seed 0. Teacher top-1: {t_top1}. Machine: {m['nproc']} "
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
        f"Reproduce: `{r['command']}`",
    ]
    return "\n".join(lines)


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
        "Each row also stores its key (16 B), label, view and view parameters (4 B each).",
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
        "for losses linear in the target; approximate: exact on the k stored classes and the "
        "rest mass, the rest spread evenly; refused: train-student stops before the first "
        "batch, naming the loss, the codec and what to use instead.",
    ]
    return "\n".join([head, "|---|" + "---|" * len(codecs), *rows, *notes])


def ensemble() -> str:
    r = _load("ensemble.json")
    if r is None:
        return (
            "_not measured yet: run `python benchmarks/ensemble.py --images 3000 "
            "--teacher-epochs 2 --epochs 2 --views 2 --seeds 0,1,2`_"
        )
    s, m, summary = r["settings"], r["machine"], r["summary"]
    seeds = len(s["seeds"])
    lines = [
        f"{s['train_images']} train images, {s['val_images']} val images, teachers "
        f"{s['teacher_epochs']} epochs, students {s['student_epochs']} epochs, {s['views']} "
        f"views per cache, batch {s['batch_size']}, 32x32, rule {s['rule']}, {seeds} student "
        f"seeds. Machine: {m['nproc']} cores, {m['cpu']}, Paddle {m['paddle']} on CPU.",
        "",
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


BLOCKS = {
    "codec_loss": codec_loss,
    "dump_scaling": dump_scaling,
    "codec_bytes": codec_bytes,
    "accuracy": lambda: online_vs_offline("accuracy"),
    "speed": lambda: online_vs_offline("speed"),
    "dump_throughput": dump_throughput,
    "cache_formats": cache_formats,
    "ensemble": ensemble,
}


def render(text: str) -> str:
    for name, make in BLOCKS.items():
        pattern = re.compile(
            rf"(<!-- BEGIN results:{name} -->\n).*?(<!-- END results:{name} -->)", re.S
        )
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(2), text)
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
