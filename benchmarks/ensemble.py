"""Teacher ensembles from caches on Fashion-MNIST, in ONE run.

Trains 2-3 teachers (`--teachers NAME:SEED,...`: architectures and/or seeds), dumps each to
its own cache with the same views (same Offline.seed, transforms and view count), then for
each student seed trains the same student for the same epochs from each teacher alone and
from the ensemble of all caches (Offline.cache_dir as a list), interleaved seed by seed,
their order rotated from seed to seed. The ensemble/single training-time ratio comes from the
same interleaved runs (the loop's epoch seconds, eval excluded): an ensemble reads and
combines one row per member for each image, a teacher alone one.

`--teacher-images N` is SSLD's data recipe: the teachers learn from the labels of the first N
train images, the students distill on all of them (DML reads no labels, so the others act as
unlabeled images), where the teacher should matter more than with every label at hand.
`--teacher-split disjoint` gives each teacher its own N images instead (teacher i the rows
i*N..(i+1)*N): members that know different images, a diversity that seeds of one
architecture on one labeled part may lack.

The ensemble teacher itself is scored too (`ensemble_teacher_top1`): the members' val
probabilities combined by the students' rule, which no single cache shows.

Writes benchmarks/results/ensemble.json; `benchmarks/report.py` renders the README table.

    python benchmarks/ensemble.py --images 4000 --teacher-epochs 3 --epochs 3 --seeds 0,1,2
    python benchmarks/ensemble.py --teacher-images 1000 --teacher-split disjoint
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, mean_ci, recipe, reproduce_command, rotated  # noqa: E402
from pipelines.fashion_mnist import PRESETS, overrides, prepare  # noqa: E402

TEACHER_CONFIGS = {
    "resnet18": ("resnet18_teacher.yaml", "ResNet18"),
    "resnet50_vd": ("resnet50_vd_teacher.yaml", "ResNet50_vd"),
}
STUDENT_CONFIG = "mnv3_x0_35_student.yaml"
SPLITS = ("shared", "disjoint")


def labeled_rows(members: int, images: int, n: int | None, split: str) -> list[tuple[int, int]]:
    """The train-list rows [start, stop) each teacher learns from."""
    if n is None:
        return [(0, images)] * members
    if split == "shared":
        return [(0, n)] * members
    if members * n > images:
        raise click.BadParameter(
            f"{members} disjoint parts of {n} need {members * n} train images, "
            f"--images is {images}",
            param_hint="--teacher-images",
        )
    return [(i * n, (i + 1) * n) for i in range(members)]


def mixture_top1(cfgs: list[dict], rule: str) -> float:
    """Val top-1 of the teachers' probabilities combined by `rule` at equal weights (the
    ensemble the students distill from); `cfgs` evaluate one teacher each."""
    import paddle

    from offline_ssld.config import specs
    from offline_ssld.config.offline import offline_spec
    from offline_ssld.ensemble import combine
    from offline_ssld.models import build_model, load_weights
    from offline_ssld.train import make_eval_loader

    models = []
    for cfg in cfgs:
        model = build_model(specs.student_spec(cfg))
        weights = cfg["Global"]["pretrained_model"]
        load_weights(model, f"{weights}.safetensors", "Global.pretrained_model")
        model.eval()
        models.append(model)
    temperature = offline_spec(cfgs[0]).ensemble_temperature
    loader = make_eval_loader(cfgs[0], specs.student_spec(cfgs[0]).class_num)
    hits = total = 0
    with paddle.no_grad():
        for x, label in loader:
            probs = np.stack([paddle.nn.functional.softmax(m(x), axis=-1).numpy() for m in models])
            q = combine(probs, np.full(len(models), 1 / len(models)), rule, temperature)
            hits += int((q.argmax(axis=-1) == label.numpy().reshape(-1)).sum())
            total += len(q)
    return hits / total


def parse_teachers(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        name, _, seed = item.partition(":")
        if name not in TEACHER_CONFIGS or not seed.isdigit():
            raise click.BadParameter(
                f"{item!r}: expected NAME:SEED with NAME in {', '.join(TEACHER_CONFIGS)}"
            )
        out.append((name, int(seed)))
    if not 1 <= len(out) <= 4 or len(set(out)) != len(out):
        raise click.BadParameter("give 2-3 distinct teachers, e.g. resnet18:0,resnet18:1")
    return out


@click.command()
@click.option("--images", type=int, default=4000, show_default=True, help="Train images.")
@click.option("--val-images", type=int, default=1000, show_default=True)
@click.option(
    "--teachers",
    default="resnet18:0,resnet18:1,resnet18:2",
    show_default=True,
    help="NAME:SEED,... (NAME: resnet18 or resnet50_vd; SEED: its training seed).",
)
@click.option(
    "--teacher-images",
    type=int,
    default=None,
    help="Teachers train on N train images (default: all), the first N unless "
    "--teacher-split disjoint; students on all.",
)
@click.option(
    "--teacher-split",
    type=click.Choice(SPLITS),
    default="shared",
    show_default=True,
    help="With --teacher-images: every teacher on the first N, or teacher i on rows i*N..(i+1)*N.",
)
@click.option("--teacher-epochs", type=int, default=3, show_default=True)
@click.option("--epochs", type=int, default=3, show_default=True, help="Student epochs.")
@click.option("--views", type=int, default=4, show_default=True, help="Views per cache.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Student seeds.")
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Training batch of teacher and students (default: each config's own, its lr tuned to it).",
)
@click.option("--rule", type=click.Choice(["mean_probs", "mean_logits"]), default="mean_probs")
@click.option("--workdir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Converted images and lists (default data/fashion_mnist/ensemble-<images>-<val>).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Results JSON (default benchmarks/results/ensemble.json).",
)
@click.option("--quiet", is_flag=True)
def main(
    images,
    val_images,
    teachers,
    teacher_images,
    teacher_split,
    teacher_epochs,
    epochs,
    views,
    seeds,
    batch_size,
    rule,
    workdir,
    data_dir,
    out,
    quiet,
):
    """Students from each teacher alone vs from the ensemble of their caches, across seeds,
    at the same student cost; plus the ensemble/single training-time ratio.

    \b
    Example:
      python benchmarks/ensemble.py --images 4000 --teacher-epochs 3 --epochs 3 --seeds 0,1,2
      python benchmarks/ensemble.py --teacher-images 1000 --teacher-split disjoint
    """
    from offline_ssld.config.loading import load_config
    from offline_ssld.dump import run_dump
    from offline_ssld.train import evaluate_config, train

    members = parse_teachers(teachers)
    if teacher_images is not None and not 0 < teacher_images <= images:
        raise click.BadParameter(
            f"must be in 1..{images} (--images)", param_hint="--teacher-images"
        )
    rows = labeled_rows(len(members), images, teacher_images, teacher_split)
    seed_list = [int(s) for s in seeds.split(",")]
    preset = dataclasses.replace(
        PRESETS["small"],
        train_images=images,
        val_images=val_images,
        teacher_epochs=teacher_epochs,
        student_epochs=epochs,
        views=views,
        batch_size=batch_size,
    )
    subset = "" if teacher_images is None else f"-t{teacher_images}"
    if teacher_split == "disjoint" and teacher_images is not None:
        subset += "-disjoint"
    workdir = (workdir or ROOT / "output" / "bench" / f"ensemble-{images}{subset}").resolve()
    data_dir = (
        data_dir or ROOT / "data" / "fashion_mnist" / f"ensemble-{images}-{val_images}"
    ).resolve()
    out = out or ROOT / "benchmarks" / "results" / "ensemble.json"
    progress = not quiet
    prepare(data_dir, preset)
    common = overrides(data_dir, workdir, preset)
    train_lines = (data_dir / "train_list.txt").read_text().splitlines()
    config_dir = ROOT / "configs" / "fashion_mnist"
    results: dict = {
        "machine": machine_info(),
        "command": reproduce_command(),
        "settings": {
            **dataclasses.asdict(preset),
            "teacher_images": teacher_images or images,
            "teacher_split": teacher_split,
            "teacher_rows": rows,
            "seeds": seed_list,
            "rule": rule,
            "student_recipe": recipe(load_config([str(config_dir / STUDENT_CONFIG)], common)),
        },
        "teachers": {},
        "runs": {},
    }

    caches = {}
    eval_cfgs = []
    for (name, seed), (start, stop) in zip(members, rows, strict=True):
        tag = f"{name}-s{seed}"
        cfg_file, arch = TEACHER_CONFIGS[name]
        teacher_list: list[str] = []  # the teacher's training list; its dump covers all images
        part = ""
        if (start, stop) != (0, images):
            part = f"-rows{start}-{stop}"
            labeled = data_dir / f"train_list_rows{start}-{stop}.txt"
            labeled.write_text("\n".join(train_lines[start:stop]) + "\n")
            teacher_list = [f"DataLoader.Train.dataset.cls_label_path={labeled}"]
        # The rows in the names: a --workdir reused with other --teacher-images never finds
        # the teachers (and caches) of the other rows complete.
        tdir = workdir / f"teacher_{tag}{part}"
        cache_dir = workdir / f"cache_{tag}{part}"
        tcfg_overrides = [
            *common,
            f"Global.epochs={teacher_epochs}",
            f"Global.seed={seed}",
            f"Global.output_dir={tdir}",
            f"Offline.teacher_weights={tdir / 'best_model.safetensors'}",
            f"Offline.cache_dir={cache_dir}",
            "Offline.seed=0",  # the view seed: the same for every member, so views line up
        ]
        tcfg = load_config([str(config_dir / cfg_file)], tcfg_overrides)
        click.echo(f"== teacher {tag}", err=True)
        info = tdir / "latest.json"
        if not (info.exists() and json.loads(info.read_text())["epoch"] == teacher_epochs):
            train(
                load_config([str(config_dir / cfg_file)], [*tcfg_overrides, *teacher_list]),
                "supervised",
                resume=True,
                progress=progress,
            )
        eval_cfg = load_config(
            [str(config_dir / cfg_file)],
            [*common, f"Global.pretrained_model={tdir / 'best_model'}", f"Offline.ensemble={rule}"],
        )
        eval_cfgs.append(eval_cfg)
        top1 = evaluate_config(eval_cfg)["top1"]
        click.echo(f"== dump {tag}", err=True)
        tick = time.perf_counter()
        run_dump(tcfg, progress=progress)
        results["teachers"][tag] = {
            "arch": arch,
            "seed": seed,
            "rows": [start, stop],
            "recipe": recipe(tcfg),
            "top1": round(top1, 5),
            "dump_seconds": round(time.perf_counter() - tick, 2),
        }
        caches[tag] = (cache_dir, tdir / "best_model.safetensors")
    results["ensemble_teacher_top1"] = round(mixture_top1(eval_cfgs, rule), 5)

    def student(out_dir: Path, seed: int, cache_dir: str, teacher_w: Path) -> dict:
        cfg = load_config(
            [str(config_dir / STUDENT_CONFIG)],
            [
                *common,
                f"Global.epochs={epochs}",
                f"Global.seed={seed}",
                f"Global.output_dir={out_dir}",
                f"Arch.models.0.Teacher.pretrained={teacher_w}",
                f"Offline.cache_dir={cache_dir}",
                f"Offline.ensemble={rule}",
            ],
        )
        mode = "ensemble" if cache_dir.startswith("[") else "offline"
        res = train(cfg, mode, progress=progress)
        return {
            "top1": round(res.best_top1, 5),
            "last_top1": round(res.last_top1, 5),
            "epoch_seconds": [round(s, 3) for s in res.train_seconds],
        }

    everything = repr([str(c) for c, _ in caches.values()])
    sources = {tag: (str(cache), weights) for tag, (cache, weights) in caches.items()}
    sources["ensemble"] = (everything, next(iter(caches.values()))[1])
    modes = list(sources)
    results["order"] = {}
    for i, seed in enumerate(seed_list):
        # Rotated from round to round, so a drift in machine load does not fall on one mode.
        order = rotated(modes, i, len(seed_list))
        results["order"][str(seed)] = order
        runs: dict = {}
        for mode in order:
            click.echo(f"== student seed {seed} from {mode}", err=True)
            runs[mode] = student(workdir / f"s{seed}_{mode}", seed, *sources[mode])
        results["runs"][str(seed)] = {mode: runs[mode] for mode in modes}

    def last(mode: str) -> list[float]:
        return [results["runs"][str(s)][mode]["last_top1"] for s in seed_list]

    # Last-epoch top-1 (no epoch chosen on the validation set), as codec_accuracy and ssld_pool.
    summary: dict = {"metric": "last_top1", "top1": {mode: mean_ci(last(mode)) for mode in modes}}
    summary["paired"] = {
        f"ensemble_minus_{tag}": mean_ci(
            [round(e - t, 5) for e, t in zip(last("ensemble"), last(tag), strict=True)]
        )
        for tag in caches
    }
    summary["seeds_ensemble_above_every_member"] = sum(
        all(
            results["runs"][str(s)]["ensemble"]["last_top1"]
            > results["runs"][str(s)][t]["last_top1"]
            for t in caches
        )
        for s in seed_list
    )
    single = [
        s
        for seed in seed_list
        for tag in caches
        for s in results["runs"][str(seed)][tag]["epoch_seconds"]
    ]
    ensemble = [
        s for seed in seed_list for s in results["runs"][str(seed)]["ensemble"]["epoch_seconds"]
    ]
    summary["median_epoch_seconds"] = {
        "single": round(statistics.median(single), 3),
        "ensemble": round(statistics.median(ensemble), 3),
    }
    summary["time_ratio"] = round(statistics.median(ensemble) / statistics.median(single), 4)
    summary["members"] = len(caches)
    best_single = max(caches, key=lambda t: summary["top1"][t]["mean"])
    summary["ensemble_minus_best_single"] = round(
        summary["top1"]["ensemble"]["mean"] - summary["top1"][best_single]["mean"], 5
    )
    summary["best_single"] = best_single
    results["summary"] = summary
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    click.echo(json.dumps(summary, indent=1))
    click.echo(f"results: {out}")


if __name__ == "__main__":
    main()
