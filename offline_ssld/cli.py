"""The `offline-ssld` command line: thin click commands over the library.

Every command takes PaddleClas-style `-c FILE` (repeatable, later files win) and `-o
Key.sub=value` (repeatable, applied last). Errors of the user's input print as one line
naming the file, line or key, and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from functools import wraps

import click

from offline_ssld import __version__
from offline_ssld.cache.codecs import CODEC_NAMES
from offline_ssld.errors import OfflineSSLDError
from offline_ssld.prerequisites import check_paddle, is_paddle_module, missing_paddle

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
    """Print our own errors, and a missing or unsupported paddle, as one line; let real bugs
    keep their traceback."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            check_paddle()
            try:
                return func(*args, **kwargs)
            except ModuleNotFoundError as exc:
                if is_paddle_module(exc.name):
                    raise missing_paddle() from exc
                raise
        except OfflineSSLDError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def _load(configs, overrides, extra: list[str] | None = None) -> dict:
    from offline_ssld.config.loading import load_config

    return load_config(list(configs), [*overrides, *(extra or [])])


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="offline-ssld")
def main() -> None:
    """Teacher-offline SSLD distillation for PaddleClas.

    Stage 1 runs the teacher once and stores its logits for several augmented views per
    image; stage 2 trains students from that cache, replaying exactly the views the teacher
    saw.

    \b
    Example:
      offline-ssld dump-teacher -c configs/fashion_mnist/resnet18_teacher.yaml
      offline-ssld train-student -c configs/fashion_mnist/mnv3_small_student.yaml

    \b
    From a PaddleClas distillation config:
      offline-ssld overlay -c your_distill.yaml -c configs/overlays/offline_ssld.yaml
    """


@main.command("dump-teacher")
@CONFIG
@OVERRIDE
@click.option(
    "--overwrite", is_flag=True, help="Replace the cache: the only way to delete its rows."
)
@click.option(
    "--skip-bad", is_flag=True, help="Record unreadable images in the manifest and go on."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def dump_teacher(configs, overrides, overwrite, skip_bad, quiet) -> None:
    """Run the teacher over Offline.views augmented views of every training image and store
    its logits, view parameters and content keys in a sharded cache (Offline.cache_dir).

    Running the same command again resumes at the first missing shard; a cache made with
    another teacher, transforms, codec, views, seed or format is refused (naming the field)
    unless --overwrite.

    A list that adds images to a whole cache extends it: only the images the cache lacks
    are dumped, into new shards after the existing ones, which stay byte for byte as they
    are. A killed extension resumes with the same command; until it is done the cache still
    trains any list of its earlier images. A list that drops images deletes no rows (it is
    nothing to do; train-student accepts any list whose images are all in the cache):
    --overwrite is the only way to delete rows.

    \b
    Example:
      offline-ssld dump-teacher -c configs/fashion_mnist/resnet50_vd_teacher.yaml \\
          -o Offline.cache_dir=cache/fmnist_r50 -o Offline.views=4
    \b
    Extend that cache by the images of a longer list (the old ones are kept, not redone):
      offline-ssld dump-teacher -c configs/fashion_mnist/resnet50_vd_teacher.yaml \\
          -o Offline.cache_dir=cache/fmnist_r50 -o Offline.views=4 \\
          -o DataLoader.Train.dataset.cls_label_path=data/train_plus_pool.txt
    """
    from offline_ssld.config.offline import offline_spec
    from offline_ssld.dump import run_dump

    cfg = _load(configs, overrides, ["Offline.skip_bad=True"] if skip_bad else None)
    result = run_dump(cfg, overwrite=overwrite, progress=not quiet)
    cache_dir = offline_spec(cfg).single_cache("dump-teacher")
    m = result.manifest
    if result.shards_written == 0:
        click.echo(
            f"{cache_dir}: cache is complete ({m.rows} rows) and holds every listed image; "
            "nothing to do"
        )
        return
    click.echo(
        f"wrote {result.shards_written} shards ({m.rows} rows, {m.num_images} images x "
        f"{m.views} views) to {cache_dir} at "
        f"{result.images_per_second:.1f} views/s; skipped {len(m.skipped)} images"
    )


@main.command("synthesize")
@CONFIG
@OVERRIDE
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def synthesize_cmd(configs, overrides, quiet) -> None:
    """Data-free distillation (DAFL): when the training images cannot be shared, train a
    generator against the frozen Teacher (one-hot, activation and information-entropy
    losses) and write DataFree.images generated PNGs with an unlabeled list.txt, a
    preview.png (a row per teacher class) and synthesis.json to DataFree.output_dir.
    dump-teacher and train-student then run on that list unchanged.

    Re-running continues from DataFree.output_dir/generator.safetensors (weights and Adam
    state); with the same DataFree.seed the images are the same.

    \b
    Example:
      offline-ssld synthesize -c configs/fashion_mnist/resnet18_teacher.yaml \\
          -o DataFree.output_dir=synth/fmnist -o DataFree.channels=1
      offline-ssld dump-teacher -c configs/fashion_mnist/resnet18_teacher.yaml \\
          -o DataLoader.Train.dataset.image_root=synth/fmnist \\
          -o DataLoader.Train.dataset.cls_label_path=synth/fmnist/list.txt \\
          -o Offline.cache_dir=cache/fmnist_datafree
    """
    from offline_ssld.tools.datafree import synthesize

    result = synthesize(_load(configs, overrides), progress=not quiet)
    click.echo(
        f"trained {result.steps_trained} generator steps; wrote {sum(result.class_counts)} "
        f"images and {result.list_path}; teacher classes {result.class_counts}, mean "
        f"confidence {result.mean_confidence:.3f}"
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
    from offline_ssld.tools.audit import inspect_cache

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
    help="Re-run the teacher of -c CONFIG on N random stored views and compare.",
)
@click.option("--seed", type=int, default=0, help="Seed choosing the views to re-check.")
@click.option(
    "-c",
    "--config",
    "configs",
    multiple=True,
    metavar="FILE",
    help="The teacher's config (as for dump-teacher), needed by --teacher-check: its weights, "
    "transforms and image_root are used, never paths recorded in the cache.",
)
@OVERRIDE
@friendly_errors
def verify_cmd(cache_dir, teacher_check, seed, configs, overrides) -> None:
    """Check the manifest's own checksums and stored specs, and every shard's presence,
    checksum, row count and columns; with --teacher-check N -c CONFIG, re-run the config's
    teacher on N random stored views (replaying their parameters, reading images only under
    the config's image_root) and fail if the largest difference exceeds the codec's
    tolerance. Exit status 1 on any problem.

    \b
    Example:
      offline-ssld verify cache/fmnist_r50 --teacher-check 64 \\
          -c configs/fashion_mnist/resnet50_teacher.yaml
    """
    from offline_ssld.tools.audit import verify_cache

    cfg = _load(configs, overrides) if configs else None
    report = verify_cache(cache_dir, teacher_check, seed, cfg)
    click.echo(f"shards ok: {report.shards_ok}")
    if report.teacher_checked:
        click.echo(
            f"teacher check: {report.teacher_checked} views, largest difference "
            f"{report.teacher_max_diff:.4g} (tolerance {report.tolerance:.4g})"
        )
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    sys.exit(0 if report.ok else 1)


@main.command("convert-weights")
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("target", type=click.Path(dir_okay=False))
@click.option(
    "--i-trust-this-file",
    "trusted",
    is_flag=True,
    help="Required: loading a .pdparams runs pickle, which can execute code.",
)
@click.option(
    "--model",
    "model",
    default=None,
    metavar="NAME",
    help="Take one model of a DistillationModel checkpoint (keys NAME.*), e.g. Student.",
)
@friendly_errors
def convert_weights(source, target, trusted, model) -> None:
    """Convert a PaddleClas .pdparams weights file (a pickle) you trust into .safetensors,
    which offline-ssld loads without running any code from the file.

    \b
    Example:
      offline-ssld convert-weights ResNet50_vd_ssld.pdparams ResNet50_vd_ssld.safetensors \\
          --i-trust-this-file
      offline-ssld convert-weights output/best_model.pdparams student.safetensors \\
          --model Student --i-trust-this-file
    """
    from offline_ssld.models import convert_pdparams

    if not trusted:
        raise click.UsageError(
            "loading a .pdparams runs pickle, which can execute code: pass --i-trust-this-file "
            "only for files from a source you trust"
        )
    count = convert_pdparams(source, target, model)
    click.echo(f"wrote {count} tensors to {target}")


@main.command("export")
@CONFIG
@OVERRIDE
@friendly_errors
def export_cmd(configs, overrides) -> None:
    """Export the student of Global.pretrained_model as a Paddle Inference model in
    Global.save_inference_dir, as PaddleClas's tools/export_model.py does.

    \b
    Example:
      offline-ssld export -c distill.yaml -c configs/overlays/offline_ssld.yaml \\
          -o Global.pretrained_model=output/best_model -o Global.save_inference_dir=inference
    """
    from offline_ssld.export import export_student

    prefix = export_student(_load(configs, overrides))
    click.echo(f"wrote the inference model {prefix}.*")


def _report(result) -> None:
    click.echo(
        f"best top-1 {result.best_top1:.4f}, last top-1 {result.last_top1:.4f}; "
        f"median epoch {sorted(result.train_seconds)[len(result.train_seconds) // 2]:.1f} s "
        f"(checkpoints and metrics.jsonl in {result.output_dir})"
        if result.train_seconds
        else f"nothing to train: {result.output_dir} is already at epoch {result.epochs}"
    )


@main.command("train-student")
@CONFIG
@OVERRIDE
@click.option("--online", is_flag=True, help="Baseline: run the teacher in the loop instead.")
@click.option("--resume", is_flag=True, help="Continue from output_dir/latest.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--data-only",
    is_flag=True,
    help="Run one epoch of the data path without the student; print images/s and where the "
    "time went.",
)
@click.option(
    "--in-memory-reference",
    is_flag=True,
    help="With --data-only: run the epoch again with the cache copied into memory.",
)
@friendly_errors
def train_student(
    configs, overrides, online, resume, quiet, data_only, in_memory_reference
) -> None:
    """Train the Student of a DistillationModel config from the teacher cache (Offline.cache_dir):
    each epoch every image uses one of its cached views, replayed pixel for pixel, against
    the teacher's stored output, with the Loss.Train losses (DistillationDMLLoss = SSLD).

    With --online the teacher runs on every batch instead (PaddleClas's online SSLD), on
    fresh views; add -o Offline.online_views=replay to run it on the cache's views, replayed
    as offline training replays them (the two then differ only in live vs stored outputs).
    With --data-only no student runs: one epoch of the data path is timed.

    The training list may be any subset of the cache's images, in any order (no new dump);
    an image the cache lacks is refused with its list line before the first batch, and one
    changed since the dump when it is read. Checkpoints and metrics.jsonl record the list
    (path, fingerprint of its images) and the cache's fingerprint.

    Offline.cache_dir may list several teachers' caches of the same images (an ensemble):
    `cache_dir: [cache/r18, {path: cache/r50, weight: 2}]`, combined per row by
    Offline.ensemble (mean_probs, or mean_logits with Offline.ensemble_temperature).

    \b
    Example:
      offline-ssld train-student -c configs/fashion_mnist/mnv3_small_student.yaml \\
          -o Offline.cache_dir=cache/fmnist_r50 -o Global.epochs=8
      offline-ssld train-student -c configs/fashion_mnist/mnv3_small_student.yaml \\
          -o "Offline.cache_dir=['cache/fmnist_r18', 'cache/fmnist_r50']"
    """
    from offline_ssld.config.offline import offline_spec
    from offline_ssld.targets import offline_mode
    from offline_ssld.train import data_only as run_data_only
    from offline_ssld.train import train

    cfg = _load(configs, overrides)
    if data_only or in_memory_reference:
        if online or resume or not data_only:
            raise click.UsageError("--data-only goes without --online and --resume")
        r = run_data_only(cfg, progress=not quiet, in_memory_reference=in_memory_reference)
        click.echo(
            f"{r.images_per_second:.0f} images/s ({r.images} images in {r.seconds:.1f} s, "
            f"{r.workers} loader workers; start-up {r.startup_seconds:.1f} s)"
        )
        busy = sum(r.stages.values())
        for name, per_image in r.stages.items():
            click.echo(
                f"  {name:<14} {per_image * 1e6:9.1f} us/image  {100 * per_image / busy:5.1f}%"
            )
        if r.in_memory_images_per_second is not None:
            ratio = r.images_per_second / r.in_memory_images_per_second
            click.echo(
                f"cache in memory: {r.in_memory_images_per_second:.0f} images/s; "
                f"mapped cache / in memory = {ratio:.2f}"
            )
        return
    mode = "online" if online else offline_mode(offline_spec(cfg))
    _report(train(cfg, mode, resume=resume, progress=not quiet))


@main.command("train")
@CONFIG
@OVERRIDE
@click.option("--resume", is_flag=True, help="Continue from output_dir/latest.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def train_supervised(configs, overrides, resume, quiet) -> None:
    """Supervised training with ground-truth labels (how teachers are trained here). With a
    DistillationModel config it trains the Student alone: the student-only baseline.

    \b
    Example:
      offline-ssld train -c configs/fashion_mnist/resnet50_vd_teacher.yaml
    """
    from offline_ssld.train import train

    cfg = _load(configs, overrides)
    _report(train(cfg, "supervised", resume=resume, progress=not quiet))


@main.command("eval")
@CONFIG
@OVERRIDE
@friendly_errors
def eval_cmd(configs, overrides) -> None:
    """Metric.Eval's values (top-1 when absent) of Global.pretrained_model (a checkpoint path
    without .safetensors) on the Eval list.

    \b
    Example:
      offline-ssld eval -c configs/fashion_mnist/mnv3_small_student.yaml \\
          -o Global.pretrained_model=output/student/best_model
    """
    from offline_ssld.train import evaluate_config

    cfg = _load(configs, overrides)
    values = evaluate_config(cfg)
    click.echo(", ".join(f"{name} {value:.4f}" for name, value in values.items()))


@main.command("merge")
@click.option(
    "-c",
    "--config",
    "configs",
    multiple=True,
    metavar="FILE",
    help="Config YAML whose Offline.cache_dir lists the caches (repeat to merge files).",
)
@OVERRIDE
@click.argument("caches", nargs=-1, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output cache.")
@click.option(
    "--weights", default=None, metavar="W1,W2,...", help="Weights of CACHES (default: equal)."
)
@click.option(
    "--rule",
    type=click.Choice(["mean_probs", "mean_logits"]),
    default=None,
    help="Combination rule (default: Offline.ensemble, else mean_probs).",
)
@click.option("--temperature", type=float, default=None, help="Temperature of mean_logits.")
@click.option(
    "--codec",
    type=click.Choice(CODEC_NAMES),
    default="fp16",
    show_default=True,
    help="Codec of the written cache.",
)
@click.option(
    "--codec-option",
    "codec_options",
    multiple=True,
    metavar="NAME=INT",
    help="A setting of --codec, e.g. k=10 for topk, samples=12 for sampled (repeat).",
)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def merge_cmd(
    configs,
    overrides,
    caches,
    out,
    weights,
    rule,
    temperature,
    codec,
    codec_options,
    overwrite,
    quiet,
) -> None:
    """Combine several teachers' caches of the same images (an ensemble) into one ordinary
    fp16 cache holding the combined distribution's log-probabilities, written through the
    cache writer, so it verifies and trains like any cache. The caches come from -c (its
    Offline.cache_dir list, weights, Offline.ensemble and Offline.ensemble_temperature) or
    are given as arguments. Caches that do not line up view by view are refused, naming the
    field; a merged cache is not merged again; a non-empty --out needs --overwrite.
    With --codec the result is written smaller (topk, sampled); one cache with --codec is a
    transcode: an fp16 cache compressed without running the teacher again.

    \b
    Example:
      offline-ssld merge cache/fmnist_r18 cache/fmnist_r50 --weights 1,2 --out cache/fmnist_ens
      offline-ssld merge cache/fmnist_r18 --codec topk --codec-option k=3 --out cache/r18_top3
      offline-ssld merge -c configs/fashion_mnist/mnv3_small_student.yaml \\
          -o "Offline.cache_dir=['cache/fmnist_r18', 'cache/fmnist_r50']" --out cache/fmnist_ens
    """
    from offline_ssld.config.offline import CacheMember, offline_spec
    from offline_ssld.config.specs import data_spec
    from offline_ssld.tools.merge import merge_caches

    image_root = list_path = None
    if configs:
        cfg = _load(configs, overrides)
        offline = offline_spec(cfg)
        members = list(offline.caches)
        rule = rule or offline.ensemble
        temperature = temperature if temperature is not None else offline.ensemble_temperature
        spec = data_spec(cfg, "Train")
        image_root, list_path = spec.image_root, spec.cls_label_path
    elif caches:
        members = [CacheMember(str(c), 1.0) for c in caches]
    else:
        raise click.UsageError("give the caches as arguments, or -c CONFIG listing them")
    if caches and configs:
        members = [CacheMember(str(c), 1.0) for c in caches]
    if weights is not None:
        try:
            values = [float(w) for w in weights.split(",")]
        except ValueError:
            raise click.UsageError(f"--weights {weights!r}: expected numbers like 1,2") from None
        if len(values) != len(members) or min(values) <= 0:
            raise click.UsageError(
                f"--weights: {len(values)} values for {len(members)} caches (all must be > 0)"
            )
        members = [CacheMember(m.path, w) for m, w in zip(members, values, strict=True)]
    settings = {}
    for option in codec_options:
        name, _, value = option.partition("=")
        if not value.lstrip("-").isdigit():
            raise click.UsageError(f"--codec-option {option!r}: expected NAME=INTEGER, e.g. k=10")
        settings[name] = int(value)
    result = merge_caches(
        members,
        out,
        rule or "mean_probs",
        1.0 if temperature is None else temperature,
        overwrite,
        image_root,
        list_path,
        progress=not quiet,
        codec=codec,
        codec_settings=settings,
    )
    click.echo(
        f"wrote {result.rows} rows ({result.images} images) of the ensemble of "
        f"{len(members)} caches to {result.out} (teacher fingerprint {result.fingerprint[:16]})"
    )


@main.command("report")
@CONFIG
@OVERRIDE
@click.option(
    "--student",
    default=None,
    metavar="CKPT",
    help="Student checkpoint (path with or without .safetensors) to compare with the teacher.",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report directory.")
@friendly_errors
def report_cmd(configs, overrides, student, out) -> None:
    """Write a Markdown report (report.md, PNG plots, report.json) of what the teacher in
    Offline.cache_dir (one cache or an ensemble) teaches on the config's training list:
    per-class teacher accuracy on labeled rows and its confusion matrix, the entropy
    distribution, images whose views the teacher labels differently, and the labeled images
    whose label it most confidently contradicts (likely label noise, with paths). With
    --student, the student's agreement with the teacher per class on the same replayed views
    and the images where they differ most.

    \b
    Example:
      offline-ssld report -c configs/fashion_mnist/mnv3_x0_35_student.yaml \\
          -o Offline.cache_dir=cache/fmnist_r18 --student output/fmnist/student/best_model \\
          --out output/report_r18
    """
    from offline_ssld.tools.report import write_report

    cfg = _load(configs, overrides)
    path = write_report(cfg, out, student)
    click.echo(f"wrote {path}")


@main.command("select")
@CONFIG
@OVERRIDE
@click.option(
    "--per-class", type=click.IntRange(min=1), required=True, metavar="K", help="Images per class."
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="LIST",
    help="PaddleClas list of images never to select, nor their copies (repeatable).",
)
@click.option(
    "--exclude-root",
    type=click.Path(file_okay=False),
    default=None,
    help="Root of the --exclude paths (default: DataLoader.Train.dataset.image_root).",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Selected list.")
@click.option(
    "--labels",
    type=click.Choice(["zero", "teacher", "none"]),
    default="zero",
    show_default=True,
    help="Label column: 0 (PaddleClas SSLD's mark of unlabeled images; offline-ssld reads it as "
    "class 0, which only label-using losses such as GTFusion would see), the teacher's class, "
    "or none (a bare path: unlabeled to offline-ssld, unreadable to PaddleClas).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out and its summary.")
@friendly_errors
def select_cmd(configs, overrides, per_class, exclude, exclude_root, out, labels, overwrite):
    """SSLD's unlabeled set from a pool, read from the teacher cache of the config's training
    list (Offline.cache_dir, one cache or an ensemble); the teacher never runs.

    Each image's prediction is the mean over its stored views of the teacher's probabilities
    (every codec decoded to a distribution): the views are the teacher's own test-time
    augmentation, and the mean of probabilities is the ensemble rule mean_probs. Each class
    keeps its K highest-scoring images among those predicted as it.

    No image of an --exclude list is selected, nor any copy of one: exact copies by content
    key (the cache's BLAKE3 key), near copies (re-encoded, resized, cropped by up to ~5%) by
    a 64-bit DCT pHash within 8 bits of the excluded image or of one of its 5% crops. This
    reads and decodes every pool image once.

    Writes --out as `path 0` lines (PaddleClas's ImageNetDataset needs a label; see --labels;
    paths relative to the training image_root), grouped by class, best first; beside it
    NAME.summary.md and NAME.summary.json (per-class counts, classes short of K, every
    refused duplicate with both paths, kind and distance) and NAME.scores.png.

    \b
    Example:
      offline-ssld select -c cfg.yaml -c overlay.yaml -o Offline.cache_dir=pool_cache \\
          --per-class 1000 --exclude val_list.txt --out selected.txt
    """
    from offline_ssld.tools.select import select

    result = select(
        _load(configs, overrides),
        per_class,
        list(exclude),
        out,
        exclude_root,
        labels,
        overwrite,
    )
    exact = sum(d.kind == "exact" for d in result.duplicates)
    click.echo(
        f"selected {result.selected} of {result.in_cache} cached pool images "
        f"({result.listed} listed) into {result.out}; refused {exact} exact and "
        f"{len(result.duplicates) - exact} near duplicates; {len(result.short)} classes short "
        f"of {per_class}; summary {result.summary_md}"
    )


@main.command("overlay")
@CONFIG
@OVERRIDE
@friendly_errors
def overlay_cmd(configs, overrides) -> None:
    """Print the effective config (every -c file merged left to right, then -o) as YAML,
    followed, as YAML comments, by what each stage takes from it: teacher, its weights file,
    student, lists, transforms, cache settings, the losses as mapped offline, optimizer,
    schedule and epochs. A key that a stage would not honour is an error naming it, so this
    is the dry run for an existing PaddleClas config.

    \b
    Example:
      offline-ssld overlay -c PPLCNet_x2_5_ssld.yaml -c configs/overlays/offline_ssld.yaml \\
          -o Offline.teacher_weights=pretrained/ResNet50_vd_ssld_pretrained
    """
    from offline_ssld.config.loading import dump_yaml
    from offline_ssld.config.paddleclas import check_supported, overlay_summary

    cfg = _load(configs, overrides)
    check_supported(cfg)
    click.echo(dump_yaml(cfg), nl=False)
    click.echo("\n# what each stage takes from this config:")
    for line in overlay_summary(cfg):
        click.echo(f"#   {line}")


if __name__ == "__main__":
    main()
