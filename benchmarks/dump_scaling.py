"""How dump-teacher throughput scales with processes under paddle.distributed.launch.

For each process count N in --procs, and each of --repeats rounds (the counts alternate
within a round so drift of the machine hits all of them), it dumps the same config into a
fresh cache directory: N = 1 as a plain `offline-ssld dump-teacher`, N > 1 as

    python -m paddle.distributed.launch --nproc_per_node N $(which offline-ssld) dump-teacher ...

It reports views/s from run_dump's own clock (rank 0: from the teacher's first batch to the
final manifest, all ranks' shards counted) and from the wall clock of the whole command
(process start-up, imports, hashing every image on every rank, gloo set-up), the speed-up
over N = 1, and whether every N gave the same cache (exact rows, fp16 logits within 1e-2).
Each process gets OMP_NUM_THREADS = cores // N unless --threads says otherwise.

    python benchmarks/dump_scaling.py --images 2000     # -> benchmarks/results/dump_scaling.json
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import dump_throughput as throughput  # noqa: E402
from benchmarks.common import machine_info, reproduce_command  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks/results/dump_scaling.json"
CLI = Path(sys.executable).with_name("offline-ssld")
SPEED = re.compile(r"wrote (\d+) shards \((\d+) rows.* at ([0-9.]+) views/s")


def dump_command(procs: int, log_dir: Path, args: list[str]) -> list[str]:
    if procs == 1:
        return [str(CLI), *args]
    return [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        str(procs),
        "--log_dir",
        str(log_dir),
        str(CLI),
        *args,
    ]


def run_once(procs: int, threads: str, args: list[str], work: Path) -> dict:
    """One dump with `procs` processes into a fresh cache; its speeds and rank 0's output."""
    log_dir = work / f"log-{procs}"
    shutil.rmtree(log_dir, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    env.setdefault("GLOG_minloglevel", "2")
    if threads == "auto":
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // procs))
    elif threads != "unset":
        env["OMP_NUM_THREADS"] = threads
    start = time.perf_counter()
    # The caller's working directory: relative paths in the config mean what they mean here.
    proc = subprocess.run(
        dump_command(procs, log_dir, args), env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    output = proc.stdout
    if procs > 1 and (log_dir / "workerlog.0").exists():
        output = (log_dir / "workerlog.0").read_text(errors="replace")
    found = SPEED.search(output)
    if proc.returncode != 0 or found is None:
        tail = "\n".join([proc.stdout[-2000:], proc.stderr[-2000:], output[-2000:]])
        raise click.ClickException(
            f"{procs} process(es): dump failed (exit {proc.returncode})\n{tail}"
        )
    rows = int(found.group(2))
    return {
        "views_per_s": float(found.group(3)),
        "wall_seconds": wall,
        "wall_views_per_s": rows / wall,
        "rows": rows,
        "shards": int(found.group(1)),
        "omp_num_threads": env.get("OMP_NUM_THREADS"),
    }


def same_cache(a: Path, b: Path) -> bool:
    import numpy as np

    from offline_ssld.cache.reader import CacheReader

    ra, rb = CacheReader(a), CacheReader(b)
    if [s.name for s in ra.manifest.shards] != [s.name for s in rb.manifest.shards]:
        return False
    for number in range(len(ra.manifest.shards)):
        ca, cb = ra.load_shard(number), rb.load_shard(number)
        if sorted(ca) != sorted(cb):
            return False
        for name in ca:
            if name == "logits":
                diff = np.abs(ca[name].astype(np.float32) - cb[name].astype(np.float32))
                if diff.size and float(diff.max()) > 1e-2:
                    return False
            elif not np.array_equal(ca[name], cb[name]):
                return False
    return True


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "-c",
    "--config",
    "configs",
    multiple=True,
    metavar="FILE",
    help="Config YAML, repeatable (default: the Fashion-MNIST ResNet18 teacher on the "
    "'small' preset's data, converted first if missing).",
)
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--images", type=click.IntRange(min=1), default=None, help="First N list lines.")
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Loader workers per process (Offline.num_workers; default: the config's).",
)
@click.option("--procs", default="1,2", show_default=True, help="Process counts to compare.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--threads",
    default="auto",
    show_default=True,
    help="OMP_NUM_THREADS per process: auto (cores // N), a number, or unset.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True
)
@click.option(
    "--tmp-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the caches, logs, list and weights go (default: the system's).",
)
def main(configs, overrides, images, workers, procs, repeats, threads, out, tmp_dir) -> None:
    """Measure dump-teacher views/s with 1, 2, ... processes on the same config; write the
    medians over --repeats, the speed-up over the first count and a cache-equality check to
    --out. Random teacher weights are used if the configured file is missing (speed does
    not depend on training; the JSON says "weights": "random").

    \b
    Example:
      python benchmarks/dump_scaling.py --images 2000 --repeats 3
    """
    os.environ.setdefault("GLOG_minloglevel", "2")
    import paddle

    from offline_ssld.config import loading, specs
    from offline_ssld.config.loading import load_config
    from offline_ssld.config.specs import ModelSpec
    from offline_ssld.errors import OfflineSSLDError
    from offline_ssld.models import build_model, save_weights

    counts = [int(p) for p in procs.split(",") if p.strip()]
    if not counts or min(counts) < 1:
        raise click.BadParameter("expected positive counts, e.g. 1,2", param_hint="--procs")
    command = reproduce_command()
    files = [str(Path(c).resolve()) for c in configs]
    extra = list(overrides)
    if not files:
        throughput.prepare_fashion_mnist(throughput.DEFAULT_DATA)
        files = [str(throughput.DEFAULT_CONFIG)]
        data = throughput.DEFAULT_DATA.resolve()
        extra = [
            f"DataLoader.Train.dataset.image_root={data}",
            f"DataLoader.Train.dataset.cls_label_path={data / 'train_list.txt'}",
            *extra,
        ]
    if workers is not None:
        extra.append(f"Offline.num_workers={workers}")

    with tempfile.TemporaryDirectory(prefix="dump_scaling-", dir=tmp_dir) as tmp:
        work = Path(tmp)
        try:
            cfg = load_config(files, extra)
            train = loading.get(cfg, "DataLoader.Train.dataset")
            if images is not None:
                listing = work / "train_list.txt"
                used = throughput.first_lines(Path(train["cls_label_path"]), images, listing)
                extra.append(f"DataLoader.Train.dataset.cls_label_path={listing}")
                click.echo(f"list: first {used} lines", err=True)
            spec = specs.teacher_spec(cfg)
            weights = str(Path(spec.pretrained).resolve()) if spec.pretrained else None
            if spec.pretrained is None or not Path(spec.pretrained).is_file():
                paddle.seed(0)
                path = work / "teacher-random.safetensors"
                save_weights(build_model(ModelSpec(spec.name, spec.class_num, None, "Arch")), path)
                extra.append(f"Offline.teacher_weights={path}")
                weights = "random"
                click.echo(f"{spec.pretrained}: not found; timing random weights", err=True)
            cfg = load_config(files, extra)
        except OfflineSSLDError as exc:
            raise click.ClickException(str(exc)) from None

        base = ["dump-teacher", "--quiet", *[a for f in files for a in ("-c", f)]]
        base += [a for o in extra for a in ("-o", o)]
        runs: dict[int, list[dict]] = {n: [] for n in counts}
        identical = True
        for r in range(repeats):
            for n in counts:
                cache = work / f"cache-{n}"
                shutil.rmtree(cache, ignore_errors=True)
                result = run_once(n, threads, [*base, "-o", f"Offline.cache_dir={cache}"], work)
                runs[n].append(result)
                click.echo(
                    f"repeat {r + 1}/{repeats}, {n} process(es): {result['views_per_s']:.1f} "
                    f"views/s (wall {result['wall_views_per_s']:.1f})",
                    err=True,
                )
            first = work / f"cache-{counts[0]}"
            identical = identical and all(same_cache(first, work / f"cache-{n}") for n in counts)

    summary = {}
    for n in counts:
        speeds = [x["views_per_s"] for x in runs[n]]
        walls = [x["wall_seconds"] for x in runs[n]]
        summary[str(n)] = {
            "views_per_s": [round(s, 2) for s in speeds],
            "median_views_per_s": statistics.median(speeds),
            "wall_seconds": [round(w, 3) for w in walls],
            "median_wall_views_per_s": runs[n][0]["rows"] / statistics.median(walls),
            "omp_num_threads": runs[n][0]["omp_num_threads"],
        }
    reference = summary[str(counts[0])]["median_views_per_s"]
    for n in counts:
        summary[str(n)]["speedup"] = summary[str(n)]["median_views_per_s"] / reference
    report = {
        "benchmark": "dump_scaling",
        "command": command,
        "options": {
            "configs": files,
            "overrides": extra,
            "images": images,
            "workers": workers,
            "procs": counts,
            "repeats": repeats,
            "threads": threads,
        },
        "machine": machine_info(),
        "teacher": spec.name,
        "weights": weights,
        "rows": runs[counts[0]][0]["rows"],
        "shards": runs[counts[0]][0]["shards"],
        "views": cfg["Offline"]["views"],
        "batch_size": cfg["Offline"]["batch_size"],
        "num_workers": cfg["Offline"]["num_workers"]
        if cfg["Offline"]["num_workers"] is not None
        else specs.data_spec(cfg, "Train").num_workers,
        "procs": summary,
        "identical_caches": identical,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    lines = [
        f"{spec.name} ({weights} weights), {report['rows']} views in {report['shards']} shards, "
        f"batch {report['batch_size']}, median of {repeats}"
    ]
    for n in counts:
        s = summary[str(n)]
        lines.append(
            f"  {n} process(es)  {s['median_views_per_s']:9.1f} views/s  x{s['speedup']:.2f}  "
            f"(wall {s['median_wall_views_per_s']:.1f} views/s, OMP_NUM_THREADS "
            f"{s['omp_num_threads']})"
        )
    if report["shards"] < 2 * max(counts):
        lines.append(
            f"  note: only {report['shards']} shards; work is split by shard, so use more "
            "images or a smaller Offline.shard_size for a meaningful comparison"
        )
    lines.append(f"  caches identical: {identical}\nwrote {out}")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
