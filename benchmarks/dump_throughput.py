"""How close dump-teacher comes to the teacher's bare forward-pass speed.

In one run, on the same batches (the same DumpDataset items cut by the same ShardBatches):

* bare: the batches are built first (BatchLoader, untimed) and kept in memory, then only
  `teacher(x)` is timed, in eval mode under paddle.no_grad;
* dump: the full `run_dump` into a fresh temporary cache directory (overwrite), whose own
  clock covers the inference loop, the encoding and the background shard writer's flush.

The two alternate (bare, dump, bare, dump, ...) so drift of the machine hits both; the
medians over --repeats are reported, with their ratio dump/bare (goal: >= 0.90).

    python benchmarks/dump_throughput.py --images 2000
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, reproduce_command  # noqa: E402

DEFAULT_CONFIG = ROOT / "configs/fashion_mnist/resnet18_teacher.yaml"
DEFAULT_DATA = ROOT / "data/fashion_mnist/small"
DEFAULT_OUT = ROOT / "benchmarks/results/dump_throughput.json"
GOAL = 0.90


def prepare_fashion_mnist(data_dir: Path) -> None:
    """Convert Debian's Fashion-MNIST with the pipeline's 'small' preset (idempotent)."""
    from pipelines.fashion_mnist import PRESETS, prepare

    prepare(data_dir, PRESETS["small"])


def first_lines(list_path: Path, count: int, out: Path) -> int:
    """Write the first `count` non-blank lines of a list file to `out`; return how many."""
    lines = [line for line in list_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = lines[:count]
    out.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return len(lines)


def build_teacher(cfg: dict):
    from offline_ssld.config import loading, specs
    from offline_ssld.models import build_model, load_weights, select_device

    device = select_device(loading.get(cfg, "Global.device", "gpu"))
    spec = specs.teacher_spec(cfg)
    teacher = build_model(spec)
    load_weights(
        teacher, spec.pretrained, "Offline.teacher_weights", cfg["Offline"]["allow_pickle_weights"]
    )
    teacher.eval()
    return teacher, device


def prebuilt_batches(cfg: dict) -> tuple[list, int, int]:
    """The dump's teacher inputs, batch for batch as run_dump cuts them; (batches, rows, images)."""
    from offline_ssld.data.loader import BatchLoader
    from offline_ssld.data.samplers import ShardBatches
    from offline_ssld.data.views import DumpDataset
    from offline_ssld.dump import plan_dump

    plan = plan_dump(cfg)
    m = plan.manifest
    ips, views = m.images_per_shard, m.views
    shard_items = [
        list(range(j * ips * views, min((j + 1) * ips, m.num_images) * views))
        for j in range(m.num_shards)
    ]
    items = [i for chunk in shard_items for i in chunk]
    workers = cfg["Offline"]["num_workers"]
    dataset = DumpDataset(plan.source, plan.probes, plan.pipeline, m.seed, views, items)
    loader = BatchLoader(dataset, ShardBatches(shard_items, cfg["Offline"]["batch_size"]), workers)
    return [x for x, _params, _item, _key in loader], len(items), m.num_images


def time_bare(teacher, device: str, batches: list) -> float:
    import paddle

    start = time.perf_counter()
    with paddle.no_grad():
        for x in batches:
            with paddle.amp.auto_cast(enable=device == "gpu"):
                teacher(x)
        if device == "gpu":
            paddle.device.synchronize()
    return time.perf_counter() - start


def summary(seconds: list[float], rows: int, views: int) -> dict:
    median = statistics.median(seconds)
    return {
        "seconds": [round(s, 4) for s in seconds],
        "median_seconds": round(median, 4),
        "views_per_s": rows / median,
        "images_per_s": rows / views / median,
    }


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
@click.option(
    "-o",
    "--override",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. -o Offline.batch_size=256 (repeatable).",
)
@click.option(
    "--images",
    type=click.IntRange(min=1),
    default=None,
    help="Use only the first N lines of the training list (default: all).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Loader workers (Offline.num_workers; default: the config's).",
)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
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
    help="Where the temporary cache, list and weights go (default: the system's).",
)
def main(configs, overrides, images, workers, repeats, out, tmp_dir) -> None:
    """Measure dump-teacher throughput against the teacher's bare forward pass on the same
    batches; write medians over --repeats and their ratio dump/bare (goal >= 0.90) to --out.

    If the configured teacher weights do not exist, random weights are used (speed does not
    depend on training) and the JSON says "weights": "random".

    \b
    Example:
      python benchmarks/dump_throughput.py --images 2000 --workers 1
      python benchmarks/dump_throughput.py -c configs/fashion_mnist/resnet50_vd_teacher.yaml \\
          -o DataLoader.Train.dataset.image_root=data/fashion_mnist/small \\
          -o DataLoader.Train.dataset.cls_label_path=data/fashion_mnist/small/train_list.txt
    """
    os.environ.setdefault("GLOG_minloglevel", "2")
    import paddle

    from offline_ssld.config import loading, specs
    from offline_ssld.config.loading import load_config
    from offline_ssld.config.specs import ModelSpec
    from offline_ssld.dump import run_dump
    from offline_ssld.errors import OfflineSSLDError
    from offline_ssld.models import build_model, save_weights

    command = reproduce_command()
    files = [str(c) for c in configs]
    preset: list[str] = []
    if not files:
        prepare_fashion_mnist(DEFAULT_DATA)
        files = [str(DEFAULT_CONFIG)]
        preset = [
            f"DataLoader.Train.dataset.image_root={DEFAULT_DATA}",
            f"DataLoader.Train.dataset.cls_label_path={DEFAULT_DATA / 'train_list.txt'}",
        ]
    try:
        cfg = load_config(files, [*preset, *overrides])
        if workers is not None:
            cfg["Offline"]["num_workers"] = workers
        elif cfg["Offline"]["num_workers"] is None:  # run_dump's fallback, made explicit
            cfg["Offline"]["num_workers"] = specs.data_spec(cfg, "Train").num_workers
    except OfflineSSLDError as exc:
        raise click.ClickException(str(exc)) from None

    with tempfile.TemporaryDirectory(prefix="dump_throughput-", dir=tmp_dir) as tmp:
        tmp = Path(tmp)
        try:
            train = loading.get(cfg, "DataLoader.Train.dataset")
            if images is not None:
                used = first_lines(Path(train["cls_label_path"]), images, tmp / "train_list.txt")
                train["cls_label_path"] = str(tmp / "train_list.txt")
                click.echo(f"list: first {used} lines", err=True)
            spec = specs.teacher_spec(cfg)
            if spec.pretrained is None or not Path(spec.pretrained).is_file():
                paddle.seed(0)
                path = tmp / "teacher-random.safetensors"
                save_weights(
                    build_model(ModelSpec(spec.name, spec.class_num, None, spec.key)), path
                )
                cfg["Offline"]["teacher_weights"] = str(path)
                weights = "random"
                click.echo(f"{spec.pretrained}: not found; timing random weights", err=True)
            else:
                weights = str(Path(spec.pretrained).resolve())

            click.echo("building the batches (untimed) ...", err=True)
            batches, rows, num_images = prebuilt_batches(cfg)
            teacher, device = build_teacher(cfg)
            time_bare(teacher, device, batches[:1])  # warm-up: first-call kernel setup
            bare_s: list[float] = []
            dump_s: list[float] = []
            wall_s: list[float] = []
            cache_bytes = 0
            for r in range(repeats):
                bare_s.append(time_bare(teacher, device, batches))
                run_cfg = copy.deepcopy(cfg)
                cache_dir = tmp / f"cache-{r}"
                run_cfg["Offline"]["cache_dir"] = str(cache_dir)
                start = time.perf_counter()
                result = run_dump(run_cfg, overwrite=True, progress=False)
                wall_s.append(time.perf_counter() - start)
                if not result.manifest.complete or result.manifest.rows != rows:
                    raise click.ClickException(f"{cache_dir}: dump is incomplete")
                dump_s.append(result.seconds)
                cache_bytes = sum(s.bytes for s in result.manifest.shards)
                shutil.rmtree(cache_dir)
                click.echo(
                    f"repeat {r + 1}/{repeats}: bare {rows / bare_s[-1]:.1f} views/s, "
                    f"dump {rows / dump_s[-1]:.1f} views/s",
                    err=True,
                )
        except OfflineSSLDError as exc:
            raise click.ClickException(str(exc)) from None

    views = cfg["Offline"]["views"]
    bare = summary(bare_s, rows, views)
    dump = summary(dump_s, rows, views)
    dump_wall = summary(wall_s, rows, views)
    ratio = dump["views_per_s"] / bare["views_per_s"]
    report = {
        "benchmark": "dump_throughput",
        "command": command,
        "options": {
            "configs": files,
            "overrides": [*preset, *overrides],
            "images": images,
            "workers": workers,
            "repeats": repeats,
        },
        "machine": machine_info(),
        "device": device,
        "teacher": spec.name,
        "class_num": spec.class_num,
        "weights": weights,
        "num_images": num_images,
        "views": views,
        "rows": rows,
        "batch_size": cfg["Offline"]["batch_size"],
        "batches": len(batches),
        "num_workers": cfg["Offline"]["num_workers"],
        "codec": cfg["Offline"]["codec"],
        "format": cfg["Offline"]["format"],
        "cache_bytes": cache_bytes,
        "bare": bare,
        "dump": dump,
        "dump_wall": dump_wall,
        "ratio": ratio,
        "goal": GOAL,
        "meets_goal": ratio >= GOAL,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    click.echo(
        f"{spec.name} ({weights} weights), {num_images} images x {views} views = {rows} rows, "
        f"batch {cfg['Offline']['batch_size']}, workers {cfg['Offline']['num_workers']}, "
        f"{device}, median of {repeats}\n"
        f"  bare forward   {bare['views_per_s']:10.1f} views/s\n"
        f"  run_dump       {dump['views_per_s']:10.1f} views/s  (loop + writer flush)\n"
        f"  run_dump wall  {dump_wall['views_per_s']:10.1f} views/s  (incl. planning, hashing)\n"
        f"  ratio dump/bare {ratio:.3f} (goal >= {GOAL:.2f}: "
        f"{'met' if ratio >= GOAL else 'NOT met'})\nwrote {out}"
    )


if __name__ == "__main__":
    main()
