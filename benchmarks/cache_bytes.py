"""What a stored view costs on disk, everything included, for every codec.

For each codec (fp16, topk k=5, sampled N=12) x classes (100, 1000) x views (2, 8) x backend
it writes a synthetic cache (`benchmarks/synthetic.py`: the dump's column builder, the real
codecs and shard writer, random logits) of --rows views in shards of --shard-size rows, and
divides the bytes of every file in the cache directory (shards and manifest) by the number of
views. The lookup index is not a file: the reader builds it in memory from the shards' key
columns (12 bytes per image), reported separately.

    python benchmarks/cache_bytes.py          # -> benchmarks/results/cache_bytes.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, reproduce_command  # noqa: E402
from benchmarks.synthetic import write_synthetic_cache  # noqa: E402
from offline_ssld.cache.backends import BACKENDS as BACKEND_REGISTRY  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks/results/cache_bytes.json"
CODECS = (("fp16", {}), ("topk", {"k": 5}), ("sampled", {"samples": 12}))
CLASSES = (100, 1000)
VIEWS = (2, 8)
BACKENDS = tuple(BACKEND_REGISTRY)  # every shard backend offline-ssld has
INDEX_BYTES_PER_IMAGE = 12  # CacheReader: uint64 key prefix + uint32 image number
TARGET = {"codec": "topk", "classes": 1000, "views": 8, "backend": "arrow", "bytes": 40.0}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--rows", type=click.IntRange(min=1), default=32768, show_default=True)
@click.option("--shard-size", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
)
def main(rows: int, shard_size: int, out: Path) -> None:
    """Measure bytes per stored view on disk for every codec, class count, view count and
    backend; results go to --out.

    \b
    Example:
      python benchmarks/cache_bytes.py --rows 32768
    """
    command = reproduce_command()
    results = []
    with tempfile.TemporaryDirectory(prefix="cache_bytes-") as tmp:
        for codec, settings in CODECS:
            for classes in CLASSES:
                for views in VIEWS:
                    for backend in BACKENDS:
                        cache = Path(tmp) / f"{codec}-{classes}-{views}-{backend}"
                        images = max(1, rows // views)
                        built = write_synthetic_cache(
                            cache, codec, classes, images, views, backend, shard_size,
                            codec_settings=settings,
                        )  # fmt: skip
                        manifest = (cache / "manifest.json").stat().st_size
                        stored = images * views
                        results.append(
                            {
                                "codec": codec,
                                "settings": settings,
                                "classes": classes,
                                "views": views,
                                "backend": backend,
                                "rows": stored,
                                "shards": -(-images // max(1, shard_size // views)),
                                "bytes_per_view": built.disk_bytes / stored,
                                "manifest_bytes_per_view": manifest / stored,
                                "index_bytes_per_view_in_memory": INDEX_BYTES_PER_IMAGE / views,
                            }
                        )
                        click.echo(
                            f"{codec:<8}{classes:>5} classes {views} views {backend:<6} "
                            f"{results[-1]['bytes_per_view']:9.1f} B/view",
                            err=True,
                        )
    target = next(
        r
        for r in results
        if (r["codec"], r["classes"], r["views"], r["backend"])
        == (TARGET["codec"], TARGET["classes"], TARGET["views"], TARGET["backend"])
    )
    report = {
        "benchmark": "cache_bytes",
        "command": command,
        "options": {"rows": rows, "shard_size": shard_size},
        "machine": machine_info(),
        "results": results,
        "target": {**TARGET, "measured": target["bytes_per_view"],
                   "met": target["bytes_per_view"] <= TARGET["bytes"]},
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    click.echo(f"target topk k=5/1000 classes/8 views: {target['bytes_per_view']:.1f} B/view")


if __name__ == "__main__":
    main()
