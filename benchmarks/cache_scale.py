"""Does the training data path keep its speed as the cache grows? Measured at several sizes.

For each size (views stored; 1000 classes, --views per image) it builds a synthetic cache
(`benchmarks/synthetic.py`: the dump's column builder, the real codec and shard writer,
random logits) and then runs train-student's cache path as training runs it:

* start-up: `CacheReader` (manifest), `verify_all` (checksums, or the verified.json record),
  `index()` (sorted key prefixes from the key columns), the epoch's view schedule
  (`epoch_views`), the global shuffle (`EpochBatches`, batch --batch-size) and the
  `BatchLoader` with --workers forked workers, up to the first batch. Measured twice: the
  first start after the dump (hashes every shard) and a second start (record present).
* rows/s: the next --batches batches (or the rest of the epoch): per image, look the key up,
  read this epoch's view (params and payload), decode the target, batch, hand it over.
  Images are not read or decoded here (the cache has none); `train-student --data-only`
  measures the whole path with images.
* RSS per process (main and each worker; anonymous = private memory, file = mapped cache
  pages, shared with the OS page cache) and bytes per row on disk (shards + manifest).

    python benchmarks/cache_scale.py --sizes 10000,100000,1000000,10000000
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, reproduce_command  # noqa: E402
from benchmarks.synthetic import write_synthetic_cache  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks/results/cache_scale.json"
PAGE = os.sysconf("SC_PAGE_SIZE")
RSS_EVERY = 8  # a worker samples its RSS once per this many batches


def rss() -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of this process."""
    fields = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile", "RssShmem"):
                fields[name] = int(value.split()[0]) * 1024
    return fields["RssAnon"], fields["RssFile"] + fields.get("RssShmem", 0)


class CacheRows:
    """train-student's cache access without the image (as `ReplayDataset.get_batch`): per
    image key -> this epoch's view; targets decoded per batch. Every RSS_EVERY-th batch also
    reports its process's RSS."""

    def __init__(self, reader, keys: np.ndarray, views: np.ndarray):
        self.reader, self.keys = reader, keys
        self.views = views  # (epochs, images): item e * images + i is image i in epoch e
        self.pid, self.batches = os.getpid(), 0

    def __len__(self) -> int:
        return self.views.size

    def get_batch(self, indices: list[int]) -> tuple[np.ndarray, ...]:
        payloads = []
        for item in indices:
            epoch, index = divmod(item, len(self.keys))
            hit = self.reader.lookup(self.keys[index].tobytes())
            if hit is None:
                raise RuntimeError(f"image {index} is not in the cache")
            _params, payload = self.reader.read_view(*hit, int(self.views[epoch, index]))
            payloads.append(payload)
        target = self.reader.decode(payloads)
        if self.pid != os.getpid():  # counted per process: the loader probes in the parent
            self.pid, self.batches = os.getpid(), 0
        self.batches += 1
        anon, mapped = rss() if self.batches % RSS_EVERY == 1 else (-1, -1)
        return target, np.array([[os.getpid(), anon, mapped]], dtype=np.int64)


def run_epoch(cache_dir: Path, batch: int, workers: int, batches: int) -> dict:
    """Start-up (to the first batch), rows/s of the next `batches` batches, RSS per process.
    Runs in a fresh process (see --measure), so RSS is this path's alone."""
    from offline_ssld.cache.reader import CacheReader
    from offline_ssld.data.loader import BatchLoader
    from offline_ssld.data.samplers import EpochBatches, epoch_views

    before = rss()[0]
    start = time.perf_counter()
    reader = CacheReader(cache_dir)
    reader.verify_all()
    reader.index()
    # The list: keys in list order (a real run reads them from the images it loads).
    keys = np.concatenate(
        [reader.shard(n, verify=False).numeric["key"] for n in range(len(reader.manifest.shards))]
    )
    # Enough epochs for the batches timed: each with its own view schedule and global
    # shuffle, as training runs them, but in one loader (a small cache's epoch would
    # otherwise time little more than forking the workers).
    epochs = -(-(batches + 1) * batch // len(keys))
    views = np.stack([epoch_views(0, e, len(keys), reader.views) for e in range(epochs)])
    dataset = CacheRows(reader, keys, views)
    order = []
    for epoch in range(epochs):
        sampler = EpochBatches(len(keys), batch, True, False, 0)
        sampler.set_epoch(epoch)
        order += [[epoch * len(keys) + i for i in b] for b in sampler]
    loader = iter(BatchLoader(dataset, order, workers))
    _, info = next(loader)
    startup = time.perf_counter() - start
    samples = [info.numpy()]
    rows, first = 0, time.perf_counter()
    for _ in range(batches):
        got = next(loader, None)
        if got is None:
            break
        rows += got[0].shape[0]
        samples.append(got[1].numpy())
    seconds = time.perf_counter() - first
    anon, mapped = rss()
    loader.close()
    info = np.concatenate(samples)
    info = info[info[:, 1] >= 0]
    memory = {"main": {"anon": anon, "file": mapped, "anon_before_cache": before}}
    for pid in np.unique(info[:, 0]):
        if pid != os.getpid():
            last = info[info[:, 0] == pid][-1]
            memory[f"worker {len(memory)}"] = {"anon": int(last[1]), "file": int(last[2])}
    return {
        "startup_seconds": startup,
        "rows_per_s": rows / seconds if seconds else 0.0,
        "rows_read": rows,
        "rss": memory,
    }


def measure_in_child(cache_dir: Path, batch: int, workers: int, batches: int) -> dict:
    """`run_epoch` in a fresh Python process, as train-student would start."""
    args = [sys.executable, __file__, "--measure", str(cache_dir), "--batch-size", str(batch)]
    args += ["--workers", str(workers), "--batches", str(batches)]
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=7200)
    if proc.returncode:
        raise RuntimeError(f"measuring {cache_dir} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--sizes", default="10000,100000,1000000", show_default=True, help="Rows (views).")
@click.option("--codec", type=click.Choice(["topk", "fp16"]), default="topk", show_default=True)
@click.option("--views", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--classes", type=click.IntRange(min=2), default=1000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--batches", type=click.IntRange(min=1), default=200, show_default=True)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True
)
@click.option("--tmp-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--measure", type=click.Path(path_type=Path), default=None, hidden=True)
def main(sizes, codec, views, classes, batch_size, workers, batches, out, tmp_dir, measure):
    """Build synthetic caches of growing size and measure train-student's cache path on each:
    build time, start-up, rows/s, RSS per process, bytes per row.

    \b
    Example:
      python benchmarks/cache_scale.py --sizes 10000,100000,1000000
    """
    if measure is not None:  # the child process of `measure_in_child()`
        print(json.dumps(run_epoch(measure, batch_size, workers, batches)))
        return
    command = reproduce_command()
    settings = {"k": 5} if codec == "topk" else {}
    load_before = os.getloadavg()
    results = []
    for size in (int(s) for s in sizes.split(",")):
        images = max(1, size // views)
        with tempfile.TemporaryDirectory(prefix="cache_scale-", dir=tmp_dir) as tmp:
            cache = Path(tmp) / "cache"
            built = write_synthetic_cache(
                cache, codec, classes, images, views, "arrow", codec_settings=settings
            )
            first = measure_in_child(cache, batch_size, workers, 1)  # hashes every shard
            second = measure_in_child(cache, batch_size, workers, batches)  # verified.json
            shards = sum(1 for p in cache.iterdir() if p.name.startswith("shard-"))
            shutil.rmtree(cache)
        results.append(
            {
                "rows": images * views,
                "images": images,
                "shards": shards,
                "build_seconds": built.seconds,
                "startup_first_seconds": first["startup_seconds"],
                "startup_seconds": second["startup_seconds"],
                "rows_per_s": second["rows_per_s"],
                "rows_read": second["rows_read"],
                "bytes_per_row": built.disk_bytes / (images * views),
                "rss": second["rss"],
            }
        )
        r = results[-1]
        click.echo(
            f"{r['rows']:>10} rows {shards:>5} shards  build {r['build_seconds']:7.1f}s  "
            f"start {r['startup_first_seconds']:6.2f}s/{r['startup_seconds']:6.2f}s  "
            f"{r['rows_per_s']:9.0f} rows/s  main anon {r['rss']['main']['anon'] / 2**20:7.1f} MiB",
            err=True,
        )
    small, large = results[0], results[-1]
    grown = large["rows"] - small["rows"]

    def growth(process: str) -> float | None:
        if process not in small["rss"] or process not in large["rss"] or not grown:
            return None
        return (large["rss"][process]["anon"] - small["rss"][process]["anon"]) / grown

    summary = {
        "rows_per_s_ratio_largest_to_smallest": large["rows_per_s"] / small["rows_per_s"],
        "min_rows_per_s": min(r["rows_per_s"] for r in results),
        "startup_seconds_largest": large["startup_seconds"],
        "anon_rss_growth_bytes_per_row": {p: growth(p) for p in large["rss"]},
    }
    report = {
        "benchmark": "cache_scale",
        "command": command,
        "options": {
            "codec": codec,
            "codec_settings": settings,
            "views": views,
            "classes": classes,
            "batch_size": batch_size,
            "workers": workers,
            "batches": batches,
        },
        "load_average_before_after": [load_before, os.getloadavg()],
        "machine": machine_info(),
        "results": results,
        "summary": summary,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    plot(report, out.with_suffix(".png"))
    click.echo(json.dumps(summary, indent=1))


def plot(report: dict, path: Path) -> None:
    """Log-log: rows/s, start-up seconds and private RSS per row against cache rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r["rows"] for r in report["results"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    series = (
        ("rows/s (training access pattern)", [r["rows_per_s"] for r in report["results"]]),
        ("start-up s (to first batch)", [r["startup_seconds"] for r in report["results"]]),
        (
            "main process private RSS, MiB",
            [r["rss"]["main"]["anon"] / 2**20 for r in report["results"]],
        ),
    )
    for ax, (title, values) in zip(axes, series, strict=True):
        ax.loglog(rows, values, "o-")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("cache rows (views)")
        ax.grid(True, which="both", alpha=0.3)
    o = report["options"]
    fig.suptitle(f"cache_scale: {o['codec']}, {o['classes']} classes, {o['views']} views/image")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
