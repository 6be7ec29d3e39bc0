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

from offline_ssld import __version__
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
    from offline_ssld.datafree import synthesize

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
    from offline_ssld.audit import verify_cache

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
      offline-ssld convert-weights output/best.pdparams student.safetensors \\
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
          -o Global.pretrained_model=output/best -o Global.save_inference_dir=inference
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

    With --online the teacher runs on every batch instead (PaddleClas's online SSLD).
    With --data-only no student runs: one epoch of the data path is timed.

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
    mode = "online" if online else offline_mode(cfg)
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
    """Top-1 of Global.pretrained_model (a checkpoint path without .safetensors) on the Eval
    list.

    \b
    Example:
      offline-ssld eval -c configs/fashion_mnist/mnv3_small_student.yaml \\
          -o Global.pretrained_model=output/student/best
    """
    from offline_ssld.train import evaluate_config

    cfg = _load(configs, overrides)
    click.echo(f"top-1 {evaluate_config(cfg):.4f}")


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
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def merge_cmd(
    configs, overrides, caches, out, weights, rule, temperature, overwrite, quiet
) -> None:
    """Combine several teachers' caches of the same images (an ensemble) into one ordinary
    fp16 cache holding the combined distribution's log-probabilities, written through the
    cache writer, so it verifies and trains like any cache. The caches come from -c (its
    Offline.cache_dir list, weights, Offline.ensemble and Offline.ensemble_temperature) or
    are given as arguments. Caches that do not line up view by view are refused, naming the
    field; a merged cache is not merged again; a non-empty --out needs --overwrite.

    \b
    Example:
      offline-ssld merge cache/fmnist_r18 cache/fmnist_r50 --weights 1,2 --out cache/fmnist_ens
      offline-ssld merge -c configs/fashion_mnist/mnv3_small_student.yaml \\
          -o "Offline.cache_dir=['cache/fmnist_r18', 'cache/fmnist_r50']" --out cache/fmnist_ens
    """
    from offline_ssld.config import CacheMember, cache_members, data_spec
    from offline_ssld.merge import merge_caches

    image_root = list_path = None
    if configs:
        cfg = _load(configs, overrides)
        offline = cfg["Offline"]
        members = cache_members(offline["cache_dir"])
        rule = rule or offline["ensemble"]
        temperature = temperature if temperature is not None else offline["ensemble_temperature"]
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
    result = merge_caches(
        members,
        out,
        rule or "mean_probs",
        1.0 if temperature is None else temperature,
        overwrite,
        image_root,
        list_path,
        progress=not quiet,
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
          -o Offline.cache_dir=cache/fmnist_r18 --student output/fmnist/student/best \\
          --out output/report_r18
    """
    from offline_ssld.report import write_report

    cfg = _load(configs, overrides)
    path = write_report(cfg, out, student)
    click.echo(f"wrote {path}")


def _ops_text(ops: list) -> str:
    parts = []
    for entry in ops:
        ((name, args),) = entry.items()
        inner = ", ".join(f"{k}={v!r}" for k, v in (args or {}).items())
        parts.append(f"{name}({inner})" if inner else name)
    return " -> ".join(parts)


def overlay_summary(cfg: dict) -> list[str]:
    """What each stage takes from a checked config, one line per item."""
    from offline_ssld import config as c
    from offline_ssld.cache.codecs import describe_codec
    from offline_ssld.losses import build_loss
    from offline_ssld.optim import describe_optimizer

    teacher = c.teacher_spec(cfg)
    weights, source = c.teacher_weights_source(cfg)
    student = c.student_spec(cfg)
    off = cfg["Offline"]
    glob = cfg.get("Global") or {}
    if weights:
        state = "found" if os.path.isfile(weights) else "MISSING"
        weights_text = f"{weights} (from {source}; {state})"
    else:
        weights_text = "none: set Offline.teacher_weights (dump-teacher needs them)"
    lines = [
        f"teacher: {teacher.name}, class_num {teacher.class_num} ({teacher.key}), frozen",
        f"teacher weights: {weights_text}",
        f"student: {student.name}, class_num {student.class_num} ({student.key})",
    ]
    if not c.is_distillation(cfg):
        lines.append("note: plain Arch: dump-teacher uses it as the teacher, train trains it")
    loaders = cfg.get("DataLoader") or {}
    for split in ("Train", "Eval"):
        if split not in loaders:
            lines.append(f"{split.lower()} list: none (DataLoader.{split} not given)")
            continue
        d = c.data_spec(cfg, split)
        given = c.get(cfg, f"DataLoader.{split}.dataset.transform_ops")
        appended = " (ToCHWImage appended, as PaddleClas's dataset transposes to CHW)"
        lines += [
            f"{split.lower()} list: {d.cls_label_path} (image_root {d.image_root}), batch "
            f"{d.batch_size}, shuffle {d.shuffle}, drop_last {d.drop_last}, workers "
            f"{d.num_workers}",
            f"{split.lower()} transforms: {_ops_text(d.transform_ops)}"
            + (appended if len(d.transform_ops) > len(given) else ""),
        ]
        if split == "Train":
            from offline_ssld.data.transforms import Pipeline, build_ops

            names = Pipeline(build_ops(d.transform_ops, d.key)).param_names
            lines.append(
                f"train view params stored per view: {len(names)}"
                + (f" ({', '.join(names)})" if names else "")
            )
    lines.append(
        f"cache: {off['cache_dir']}, views {off['views']}, codec {describe_codec(off)}"
        + f", format {off['format']}, shard_size {off['shard_size']}, seed {off['seed']}, "
        f"teacher batch {off['batch_size']}"
    )
    loss_train = (cfg.get("Loss") or {}).get("Train")
    if loss_train:
        loss = build_loss(loss_train)
        terms = iter(loss.terms)
        mapped = []
        for i, entry in enumerate(loss_train):
            ((name, _),) = entry.items()
            if name == "GTFusion":
                continue
            kind, weight, kwargs = next(terms)
            extra = "".join(
                f", {k} {v}" if isinstance(v, bool) else f", {k} {v:g}" for k, v in kwargs.items()
            )
            mapped.append(f"Loss.Train.{i}.{name} -> {kind} (weight {weight:g}{extra})")
        if loss.gt_alpha is not None:
            mapped.append(f"GTFusion alpha {loss.gt_alpha:g} with ground-truth CE")
        lines.append("losses (train-student): " + "; ".join(mapped))
    else:
        lines.append("losses (train-student): none (Loss.Train not given)")
    lines += [
        *describe_optimizer(cfg),
        f"epochs: {glob.get('epochs', 1)}, eval every {glob.get('eval_interval', 1)}, save "
        f"every {glob.get('save_interval', 1)}, output_dir {glob.get('output_dir', 'output')}, "
        f"seed {glob.get('seed', 0)}, device {glob.get('device', 'gpu')}",
        "not read: Infer (PaddleClas predict settings); mixed precision is O1 on GPU, off on CPU",
    ]
    return lines


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
    from offline_ssld.config import check_supported, dump_yaml

    cfg = _load(configs, overrides)
    check_supported(cfg)
    click.echo(dump_yaml(cfg), nl=False)
    click.echo("\n# what each stage takes from this config:")
    for line in overlay_summary(cfg):
        click.echo(f"#   {line}")


if __name__ == "__main__":
    main()
