"""The `offline-ssld` command line: thin click commands over the library.

Every command takes PaddleClas-style `-c FILE` (repeatable, later files win) and `-o
Key.sub=value` (repeatable, applied last). Errors of the user's input print as one line
naming the file, line or key, and exit with status 2.
"""

from __future__ import annotations

import json
import os
import sys
from functools import wraps

import click

from offline_ssld.errors import OfflineSSLDError

CONFIG = click.option(
    "-c",
    "--config",
    "configs",
    multiple=True,
    required=True,
    metavar="FILE",
    help="Config YAML; repeat to merge (later files win).",
)
OVERRIDE = click.option(
    "-o",
    "--override",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. -o Offline.views=8 (repeatable).",
)


def friendly_errors(func):
    """Print our own errors as one line; let real bugs keep their traceback."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except OfflineSSLDError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def _load(configs, overrides, extra: list[str] | None = None) -> dict:
    from offline_ssld.config import load_config

    return load_config(list(configs), [*overrides, *(extra or [])])


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="offline-ssld")
def main() -> None:
    """Teacher-offline SSLD distillation for PaddleClas.

    Stage 1 runs the teacher once and stores its logits for several augmented views per
    image; stage 2 trains students from that cache, replaying exactly the views the teacher
    saw.

    \b
    Example:
      offline-ssld dump-teacher -c configs/fashion_mnist/resnet18_teacher.yaml
      offline-ssld train-student -c configs/fashion_mnist/mnv3_small_student.yaml
    """
    os.environ.setdefault("GLOG_minloglevel", "2")


@main.command("dump-teacher")
@CONFIG
@OVERRIDE
@click.option("--overwrite", is_flag=True, help="Replace a cache of another teacher/dataset/codec.")
@click.option(
    "--skip-bad", is_flag=True, help="Record unreadable images in the manifest and go on."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def dump_teacher(configs, overrides, overwrite, skip_bad, quiet) -> None:
    """Run the teacher over Offline.views augmented views of every training image and store
    its logits, view parameters and content keys in a sharded cache (Offline.cache_dir).

    Running the same command again resumes at the first missing shard; a cache made with
    another teacher, dataset, transforms or codec is refused unless --overwrite.

    \b
    Example:
      offline-ssld dump-teacher -c configs/fashion_mnist/resnet50_vd_teacher.yaml \\
          -o Offline.cache_dir=cache/fmnist_r50 -o Offline.views=4
    """
    from offline_ssld.dump import run_dump

    cfg = _load(configs, overrides, ["Offline.skip_bad=True"] if skip_bad else None)
    result = run_dump(cfg, overwrite=overwrite, progress=not quiet)
    m = result.manifest
    if result.shards_written == 0:
        click.echo(
            f"{cfg['Offline']['cache_dir']}: cache is complete ({m.rows} rows); nothing to do"
        )
        return
    click.echo(
        f"wrote {result.shards_written} shards ({m.rows} rows, {m.num_images} images x "
        f"{m.views} views) to {cfg['Offline']['cache_dir']} at "
        f"{result.images_per_second:.1f} views/s; skipped {len(m.skipped)} images"
    )


@main.command("inspect")
@click.argument("cache_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@friendly_errors
def inspect_cmd(cache_dir, as_json) -> None:
    """Summarise a cache: rows, views, classes, bytes per row, codec, teacher top-1 on the
    labeled rows, mean entropy, and a per-shard table.

    \b
    Example:
      offline-ssld inspect cache/fmnist_r50
    """
    from offline_ssld.audit import inspect_cache

    info = inspect_cache(cache_dir)
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    for key in (
        "cache_dir",
        "complete",
        "backend",
        "images",
        "rows",
        "views",
        "classes",
        "codec",
        "payload_bytes_per_row",
        "file_bytes_per_row",
        "total_bytes",
        "teacher",
        "teacher_top1",
        "labeled_rows",
        "mean_entropy",
        "skipped",
    ):
        click.echo(f"{key:>22}: {info[key]}")
    click.echo(f"\n{'shard':<20}{'rows':>8}{'images':>8}{'bytes':>12}  checksum")
    for s in info["shards"]:
        click.echo(
            f"{s['name']:<20}{s['rows']:>8}{s['images']:>8}{s['bytes']:>12}  {s['checksum']}"
        )


@main.command("verify")
@click.argument("cache_dir", type=click.Path(file_okay=False))
@click.option(
    "--teacher-check",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Re-run the teacher on N random stored views and compare.",
)
@click.option("--seed", type=int, default=0, help="Seed choosing the views to re-check.")
@friendly_errors
def verify_cmd(cache_dir, teacher_check, seed) -> None:
    """Check every shard's presence, checksum, row count and columns; with --teacher-check N,
    re-run the teacher on N random stored views (replaying their parameters) and fail if the
    largest difference exceeds the codec's tolerance. Exit status 1 on any problem.

    \b
    Example:
      offline-ssld verify cache/fmnist_r50 --teacher-check 64
    """
    from offline_ssld.audit import verify_cache

    report = verify_cache(cache_dir, teacher_check, seed)
    click.echo(f"shards ok: {report.shards_ok}")
    if report.teacher_checked:
        click.echo(
            f"teacher check: {report.teacher_checked} views, largest difference "
            f"{report.teacher_max_diff:.4g} (tolerance {report.tolerance:.4g})"
        )
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
