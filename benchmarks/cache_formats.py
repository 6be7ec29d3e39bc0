"""Which shard backend should be the default: Arrow or HDF5, measured.

For each backend and each payload (fp16 at 10 and 1000 classes, topk k=5 at 1000 classes)
it writes --rows synthetic rows (`benchmarks/synthetic.py`: random keys, labels, view params
and teacher logits through the dump's column builder, the codec and the shard writer) as
shards of --shard-rows rows, then measures with the cache reader:

* write seconds: what a dump adds to inference (random logits drawn, encoded by the codec,
  columns built, shards written in the background writer, manifest updated),
* bytes on disk per row,
* index build: `CacheReader.index()` on a new reader (maps every shard, reads key columns),
* random reads: --lookups random (key, view) pairs through `lookup` + `read_view` on a new
  reader each repeat, after its index is built (each shard is checksummed on its first read
  in the process, as in training). The OS page cache is warm (the files were just written).

Medians over --repeats. The recommended default is the backend with the higher geometric
mean of random-read rows/s over the payloads (the path every training epoch takes); when
the two are within READ_TIE (10%, below run-to-run noise on a shared machine) reads are a
tie and the higher geometric mean of write rows/s decides.

    python benchmarks/cache_formats.py
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
READ_TIE = 0.10
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, reproduce_command  # noqa: E402
from benchmarks.synthetic import write_synthetic_cache  # noqa: E402
from offline_ssld.cache.backends import BACKENDS as BACKEND_REGISTRY  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks/results/cache_formats.json"
BACKENDS = tuple(BACKEND_REGISTRY)  # every shard backend offline-ssld has
# (label, codec name, num_classes, codec settings)
CASES = (
    ("fp16/10", "fp16", 10, {}),
    ("fp16/1000", "fp16", 1000, {}),
    ("topk5/1000", "topk", 1000, {"k": 5}),
)


def read_cache(
    cache_dir: Path, keys: np.ndarray, images: np.ndarray, views: np.ndarray
) -> tuple[float, float]:
    """(index seconds, random-read seconds) on a new reader."""
    from offline_ssld.cache.reader import CacheReader

    reader = CacheReader(cache_dir)
    start = time.perf_counter()
    reader.index()
    index_s = time.perf_counter() - start
    key_bytes = [k.tobytes() for k in keys]
    start = time.perf_counter()
    for image, view in zip(images.tolist(), views.tolist(), strict=True):
        hit = reader.lookup(key_bytes[image])
        if hit is None:
            raise RuntimeError(f"{cache_dir}: image {image} not found")
        reader.read_view(*hit, view)
    read_s = time.perf_counter() - start
    return index_s, read_s


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--rows", type=click.IntRange(min=1), default=50_000, show_default=True)
@click.option("--lookups", type=click.IntRange(min=1), default=20_000, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--views", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--shard-rows", type=click.IntRange(min=1), default=4096, show_default=True, help="Rows/shard."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="Results JSON.",
)
@click.option(
    "--tmp-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the caches are written (default: the system's temp dir).",
)
def main(rows, lookups, repeats, views, shard_rows, seed, out, tmp_dir) -> None:
    """Measure Arrow vs HDF5 shards (write time, bytes/row, index build, random reads) for fp16
    and topk payloads and recommend the default backend; results go to --out.

    \b
    Example:
      python benchmarks/cache_formats.py --rows 50000 --repeats 3
    """
    from offline_ssld.cache.codecs import build_codec
    from offline_ssld.config.offline import OFFLINE_DEFAULTS

    command = reproduce_command()
    results = []
    with tempfile.TemporaryDirectory(prefix="cache_formats-", dir=tmp_dir) as tmp:
        for label, name, num_classes, settings in CASES:
            codec = build_codec(name, num_classes, **settings)
            num_images = max(1, rows // views)
            stored = num_images * views
            shards = -(-num_images // max(1, shard_rows // views))
            pick = np.random.default_rng([seed, 1])
            images = pick.integers(0, num_images, lookups)
            picked_views = pick.integers(0, views, lookups)

            def write(cache_dir, backend, name=name, opts=settings, n=num_classes, i=num_images):
                return write_synthetic_cache(
                    cache_dir, name, n, i, views, backend, shard_rows, seed,
                    codec_settings=opts,
                )  # fmt: skip

            if not results:  # untimed warm-up: the first write of a backend sets up its library
                for backend in BACKENDS:
                    write(Path(tmp) / f"warm-up-{backend}", backend)
                    shutil.rmtree(Path(tmp) / f"warm-up-{backend}")
            for backend in BACKENDS:
                cache_dir = Path(tmp) / f"{name}-{num_classes}-{backend}"
                write_s, index_s, read_s = [], [], []
                size = 0
                for _ in range(repeats):
                    shutil.rmtree(cache_dir, ignore_errors=True)
                    built = write(cache_dir, backend)
                    write_s.append(built.seconds)
                    size = built.disk_bytes
                for _ in range(repeats):
                    i_s, r_s = read_cache(cache_dir, built.keys, images, picked_views)
                    index_s.append(i_s)
                    read_s.append(r_s)
                shutil.rmtree(cache_dir)
                w, i, r = (statistics.median(v) for v in (write_s, index_s, read_s))
                results.append(
                    {
                        "payload": label,
                        "codec": codec.settings(),
                        "backend": backend,
                        "rows": stored,
                        "shards": shards,
                        "write_seconds": w,
                        "write_rows_per_s": stored / w,
                        "bytes_per_row": size / stored,
                        "payload_bytes_per_row": codec.bytes_per_row(),
                        "index_seconds": i,
                        "index_rows_per_s": stored / i,
                        "read_seconds": r,
                        "read_rows_per_s": lookups / r,
                        "samples": {"write": write_s, "index": index_s, "read": read_s},
                    }
                )
                click.echo(
                    f"{label:<11} {backend:<5} write {w:7.3f}s  index {i:7.3f}s  "
                    f"read {lookups / r:10.0f} rows/s",
                    err=True,
                )

    def mean_of(key: str) -> dict[str, float]:
        return {b: geomean([x[key] for x in results if x["backend"] == b]) for b in BACKENDS}

    score, writes = mean_of("read_rows_per_s"), mean_of("write_rows_per_s")
    tie = max(score.values()) / min(score.values()) <= 1 + READ_TIE
    best = max(BACKENDS, key=lambda b: writes[b] if tie else score[b])
    other = next(b for b in BACKENDS if b != best)
    recommendation = {
        "default": best,
        "criterion": "geometric mean of random-read rows/s over the payloads; within "
        f"{READ_TIE:.0%} a tie, decided by the geometric mean of write rows/s",
        "reads_tied": tie,
        "read_rows_per_s_geomean": score,
        "write_rows_per_s_geomean": writes,
        "read_speedup_over_" + other: score[best] / score[other],
        "write_speedup_over_" + other: writes[best] / writes[other],
        "current_default": OFFLINE_DEFAULTS["format"],
        "agrees_with_current_default": best == OFFLINE_DEFAULTS["format"],
    }
    report = {
        "benchmark": "cache_formats",
        "command": command,
        "options": {
            "rows": rows,
            "lookups": lookups,
            "repeats": repeats,
            "views": views,
            "shard_rows": shard_rows,
            "seed": seed,
        },
        "machine": machine_info(),
        "results": results,
        "recommendation": recommendation,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")

    header = (
        f"{'payload':<11} {'backend':<7} {'write s':>8} {'write rows/s':>13} {'B/row':>8} "
        f"{'index s':>8} {'read rows/s':>12}"
    )
    lines = [header, "-" * len(header)]
    for x in results:
        lines.append(
            f"{x['payload']:<11} {x['backend']:<7} {x['write_seconds']:8.3f} "
            f"{x['write_rows_per_s']:13.0f} {x['bytes_per_row']:8.1f} {x['index_seconds']:8.3f} "
            f"{x['read_rows_per_s']:12.0f}"
        )
    click.echo("\n".join(lines))
    click.echo(
        f"{rows} rows, {lookups} lookups, shards of {shard_rows} rows, median of {repeats}\n"
        f"recommended default: {best} (random reads {score[best] / score[other]:.2f}x, writes "
        f"{writes[best] / writes[other]:.2f}x {other}{'; reads tied' if tie else ''}; "
        f"current default: {OFFLINE_DEFAULTS['format']})\nwrote {out}"
    )


if __name__ == "__main__":
    main()
