"""The cache's own speed and size: dump throughput and scaling, shard backends, the cache at
scale, and the training data path alone."""

from __future__ import annotations


def dump_throughput(r: dict) -> str:
    lines = ["| measurement | views/s (median) |", "|---|---|"]
    for key, name in (("bare", "bare teacher forward"), ("dump", "dump-teacher")):
        lines.append(f"| {name} | {r[key]['views_per_s']:.1f} |")
    lines += ["", f"Ratio dump / bare: **{r['ratio']:.3f}**. Reproduce: `{r['command']}`"]
    return "\n".join(lines)


def dump_scaling(r: dict) -> str:
    lines = ["| processes | views/s (median) | speedup | OMP_NUM_THREADS |", "|---|---|---|---|"]
    for procs, v in sorted(r["procs"].items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| {procs} | {v['median_views_per_s']:.1f} | {v['speedup']:.2f}x | "
            f"{v['omp_num_threads']} |"
        )
    lines += [
        "",
        f"{r['teacher']} ({r['weights']} weights), {r['rows']} views in {r['shards']} "
        f"shards; caches identical across process counts: {r['identical_caches']}; "
        f"{r['machine']['nproc']} cores. Reproduce: `{r['command']}`",
    ]
    return "\n".join(lines)


def cache_formats(r: dict) -> str:
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


def _loads(r: dict) -> str:
    (before, after) = r["load_average_before_after"]
    return (
        f"Load average (1, 5, 15 min) before {before[0]:.1f}/{before[1]:.1f}/{before[2]:.1f}, "
        f"after {after[0]:.1f}/{after[1]:.1f}/{after[2]:.1f} on {r['machine']['nproc']} cores."
    )


def cache_scale(r: dict) -> str:
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
    lines += [
        "",
        f"Codec {o['codec']} {o['codec_settings']}, {o['classes']} classes, {o['views']} views per "
        f"image, batch {o['batch_size']}, {o['workers']} loader workers, {o['batches']} batches "
        f"timed after the first. rows/s at the largest size is "
        f"**{s['rows_per_s_ratio_largest_to_smallest']:.2f}x** the smallest; slowest "
        f"{s['min_rows_per_s']:,.0f} rows/s; start-up at the largest "
        f"{s['startup_seconds_largest']:.2f} s; private RSS growth "
        + (f"{max(growth):.1f} B per row (largest over processes)." if growth else "n/a.")
        + f" {_loads(r)} Reproduce: `{r['command']}`",
    ]
    return "\n".join(lines)


def cache_scale_runs(*runs: dict) -> str:
    """The cache-scale runs side by side: how much each size moves between runs, and how far
    rows/s falls from a run's 100k-row figure as the cache grows past it."""
    lines = [
        "| run | batches timed | load (1 min) before | sizes | rows/s at the smallest | largest "
        "fall below the 100k-row rows/s, sizes from 100k up |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs, 1):
        by_rows = {x["rows"]: x["rows_per_s"] for x in r["results"]}
        base = by_rows.get(100_000)
        above = [v for rows, v in by_rows.items() if rows > 100_000]
        fall = (
            f"{100 * max(0.0, 1 - min(above) / base):.1f}%" if base is not None and above else "-"
        )
        lines.append(
            f"| {i} | {r['options']['batches']} | {r['load_average_before_after'][0][0]:.1f} | "
            f"{min(by_rows):,} to {max(by_rows):,} | {by_rows[min(by_rows)]:,.0f} | {fall} |"
        )
    return "\n".join(lines)


def data_only(r: dict) -> str:
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
        f"{before[0]:.1f}, after {after[0]:.1f} on {r['machine']['nproc']} cores. "
        f"Reproduce: `{r['command']}`",
    ]
    return "\n".join(lines)
