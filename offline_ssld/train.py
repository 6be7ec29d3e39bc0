"""Stage 2 and its baselines: one trainer, three sources of targets.

- offline:    teacher probabilities decoded from the cache, on the replayed cached view;
- online:     the teacher runs on the same augmented batch (PaddleClas DistillationModel);
- supervised: ground-truth labels only (how the pipelines train their teachers).

All three share the data path, optimizer, schedule, evaluation and checkpoints, so a
benchmark between them compares like with like.

Under `python -m paddle.distributed.launch` the same loop is data-parallel: each rank takes
its slice of the epoch's global permutation (batch_size per rank, as PaddleClas's per-card
batch), the model is wrapped in paddle.DataParallel, evaluation counts are summed over the
ranks, and rank 0 alone writes checkpoints (of the unwrapped model) and metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from offline_ssld import config as cfgmod
from offline_ssld import distributed as dist
from offline_ssld.atomic import atomic_write
from offline_ssld.cache.reader import CacheReader
from offline_ssld.data.lists import read_list
from offline_ssld.data.loader import BatchLoader
from offline_ssld.data.transforms import Pipeline, build_ops
from offline_ssld.data.views import AugmentDataset, ImageSource, ReplayDataset, epoch_views
from offline_ssld.errors import CacheError, ConfigError
from offline_ssld.losses import DistillLoss, build_loss, gt_ce_loss, needs_dense_target
from offline_ssld.models import (
    build_model,
    load_teacher,
    load_weights,
    save_weights,
    select_device,
    teacher_fingerprint,
    teacher_identity,
)

MODES = ("offline", "online", "supervised")


# ---------------------------------------------------------------- optimizer and schedule


def build_optimizer(cfg: dict, parameters, steps_per_epoch: int, epochs: int):
    """PaddleClas `Optimizer` section: Momentum, lr Cosine/Piecewise with warmup, L2."""
    opt = cfgmod.get(cfg, "Optimizer")
    if opt.get("name", "Momentum") != "Momentum":
        raise ConfigError(f"Optimizer.name: {opt.get('name')!r}; supported: Momentum")
    lr_cfg = dict(opt.get("lr") or {})
    name = lr_cfg.pop("name", "Cosine")
    base = float(lr_cfg.pop("learning_rate", 0.1))
    warmup_epoch = lr_cfg.pop("warmup_epoch", 0)
    warmup_start = float(lr_cfg.pop("warmup_start_lr", 0.0))
    total = steps_per_epoch * epochs
    warmup = int(round(warmup_epoch * steps_per_epoch))
    if name == "Cosine":
        eta_min = float(lr_cfg.pop("eta_min", 0.0))
        sched = paddle.optimizer.lr.CosineAnnealingDecay(base, max(1, total - warmup), eta_min)
    elif name == "Piecewise":
        decay_epochs = lr_cfg.pop("decay_epochs")
        values = lr_cfg.pop("values")
        sched = paddle.optimizer.lr.PiecewiseDecay(
            [int(e * steps_per_epoch) - warmup for e in decay_epochs], values
        )
        base = values[0]
    else:
        raise ConfigError(f"Optimizer.lr.name: {name!r}; supported: Cosine, Piecewise")
    lr_cfg.pop("by_epoch", None)
    if lr_cfg:
        raise ConfigError(f"Optimizer.lr.{sorted(lr_cfg)[0]}: unsupported key for {name}")
    if warmup:
        sched = paddle.optimizer.lr.LinearWarmup(sched, warmup, warmup_start, base)
    reg = opt.get("regularizer") or {}
    decay = None
    if reg:
        if reg.get("name", "L2") != "L2":
            raise ConfigError(f"Optimizer.regularizer.name: {reg.get('name')!r}; supported: L2")
        decay = paddle.regularizer.L2Decay(float(reg.get("coeff", 0.0)))
    extra = set(opt) - {"name", "momentum", "lr", "regularizer", "no_weight_decay_name"}
    if extra:
        raise ConfigError(f"Optimizer.{sorted(extra)[0]}: unsupported key")
    optimizer = paddle.optimizer.Momentum(
        learning_rate=sched,
        momentum=float(opt.get("momentum", 0.9)),
        parameters=parameters,
        weight_decay=decay,
    )
    return optimizer, sched


# ------------------------------------------------------------------------ data


class EpochBatches:
    """Batch sampler whose order is a pure function of (seed, epoch): resumable exactly.

    With `world` > 1 rank `rank` takes order[rank::world] of the epoch's global order; with
    `pad` that order is first wrapped round to a multiple of `world`, so every rank gets the
    same number of samples and batches (as paddle's DistributedBatchSampler); evaluation
    passes pad=False so no image is counted twice."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        rank: int = 0,
        world: int = 1,
        pad: bool = True,
    ):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside [0, {world})")
        self.size, self.batch_size = size, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world, self.pad = rank, world, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _samples(self) -> int:
        """How many samples this rank gets per epoch."""
        if self.world == 1:
            return self.size
        if self.pad:
            return math.ceil(self.size / self.world)
        return len(range(self.rank, self.size, self.world))

    def __iter__(self):
        order = np.arange(self.size)
        if self.shuffle:
            seq = np.random.SeedSequence([self.seed, 0x0DE2, self.epoch])
            order = np.random.Generator(np.random.PCG64(seq)).permutation(self.size)
        if self.world > 1:
            if self.pad:
                order = np.resize(order, self._samples() * self.world)  # wraps round
            order = order[self.rank :: self.world]
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            yield order[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        if self.drop_last:
            return self._samples() // self.batch_size
        return math.ceil(self._samples() / self.batch_size)


def _source(cfg: dict, split: str, class_num: int) -> tuple[ImageSource, Pipeline, cfgmod.DataSpec]:
    spec = cfgmod.data_spec(cfg, split)
    pipeline = Pipeline(
        build_ops(spec.transform_ops, f"{spec.key}.transform_ops"), f"{spec.key}.transform_ops"
    )
    samples = read_list(spec.cls_label_path, class_num)
    return ImageSource(spec.image_root, spec.cls_label_path, samples), pipeline, spec


def open_matching_cache(cfg: dict, pipeline: Pipeline) -> CacheReader:
    """The cache named by Offline.cache_dir, refused if it belongs to another teacher or
    other transforms than this config (naming the differing field)."""
    cache_dir = cfg["Offline"]["cache_dir"]
    reader = CacheReader(cache_dir)
    m = reader.manifest
    if m.fingerprints["transforms"] != pipeline.fingerprint():
        raise CacheError(
            f"{cache_dir}: cache was dumped with other transforms (fingerprints.transforms); "
            "DataLoader.Train.dataset.transform_ops must equal the dump's"
        )
    teacher = cfgmod.teacher_spec(cfg)
    for field in ("name", "class_num"):
        if m.teacher[field] != getattr(teacher, field):
            raise CacheError(
                f"{cache_dir}: cache holds another teacher (teacher.{field}: cache has "
                f"{m.teacher[field]!r}, config gives {getattr(teacher, field)!r})"
            )
    if teacher.pretrained and Path(teacher.pretrained).is_file():
        identity = teacher_identity(teacher, teacher.pretrained)
        if teacher_fingerprint(identity) != m.fingerprints["teacher"]:
            raise CacheError(
                f"{cache_dir}: cache holds another teacher (fingerprints.teacher: the weights "
                f"file {teacher.pretrained} differs from the one dumped)"
            )
    return reader


# ------------------------------------------------------------------- checkpoints


def _param_names(model) -> dict[str, str]:
    """Paddle's generated parameter name (e.g. conv2d_204.w_0, differs per model instance)
    -> the structured name from state_dict() (stable), used to key optimizer state."""
    return {p.name: k for k, p in model.state_dict().items()}


def _rename(key: str, names: dict[str, str]) -> str:
    for generated in sorted(names, key=len, reverse=True):
        if key.startswith(generated + "_"):
            return f"{names[generated]}::{key[len(generated) + 1 :]}"
    raise KeyError(key)


def _save_optimizer(optimizer, model, path: Path) -> None:
    state = optimizer.state_dict()
    names = _param_names(model)
    tensors = {
        _rename(k, names): np.ascontiguousarray(v.numpy())
        for k, v in state.items()
        if isinstance(v, paddle.Tensor)
    }
    scheduler = state.get("LR_Scheduler", {})
    save_file(tensors, str(path), metadata={"LR_Scheduler": json.dumps(scheduler, default=float)})


def _load_optimizer(optimizer, model, path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata() or {}
    generated = {k: p.name for k, p in model.state_dict().items()}
    state: dict = {}
    for key, value in load_file(str(path)).items():
        structured, _, suffix = key.partition("::")
        if structured not in generated:
            raise ConfigError(f"--resume: {path} holds state for unknown parameter {structured}")
        state[f"{generated[structured]}_{suffix}"] = paddle.to_tensor(value)
    state["LR_Scheduler"] = json.loads(meta.get("LR_Scheduler", "{}"))
    optimizer.set_state_dict(state)


def save_checkpoint(out: Path, tag: str, model, optimizer, info: dict) -> None:
    """`tag`.safetensors (weights), .opt.safetensors (optimizer), .json (epoch, metrics);
    plus .pdparams/.pdopt for PaddleClas tools (written, never read back: they are pickles).
    Each file is replaced atomically, the .json last."""
    text = json.dumps(info, indent=1) + "\n"
    save_weights(model, out / f"{tag}.safetensors")
    opt_path = out / f"{tag}.opt.safetensors"
    atomic_write(opt_path, lambda p: _save_optimizer(optimizer, model, p))
    atomic_write(out / f"{tag}.pdparams", lambda p: paddle.save(model.state_dict(), str(p)))
    atomic_write(out / f"{tag}.pdopt", lambda p: paddle.save(optimizer.state_dict(), str(p)))
    atomic_write(out / f"{tag}.json", lambda p: p.write_text(text))


def _keep_metrics_through(path: Path, epoch: int) -> None:
    """On --resume from `epoch`, drop the lines of later epochs (a killed run logs an epoch
    before checkpointing it) and a line cut short, so each epoch appears once."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["epoch"]) <= epoch:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write(path, lambda p: p.write_text("".join(kept)))


# ------------------------------------------------------------------------- loop


@dataclass
class TrainResult:
    best_top1: float
    last_top1: float
    epochs: int
    train_seconds: list[float]
    images_per_second: list[float]
    output_dir: Path


def _labels_of(cfg: dict, mode: str) -> DistillLoss | None:
    if mode == "supervised":
        return None
    return build_loss(cfgmod.get(cfg, "Loss.Train"))


def _batch_norms(model) -> list:
    from paddle.nn.layer.norm import _BatchNormBase

    return [m for m in model.sublayers() if isinstance(m, (paddle.nn.BatchNorm, _BatchNormBase))]


def recalibrate_batch_norm(model, loader, batches: int) -> int:
    """Recompute every BatchNorm's running statistics as the plain mean over the first
    `batches` training batches, with the weights as they are now ("precise BN").

    The running statistics PaddleClas evaluates with are an exponential average (momentum
    0.9) of the last ~10 batches, each taken with other weights. With few or small batches,
    or feature maps of 1x1 at the last stages, that estimate is noisy, and eval top-1 then
    swings between epochs by tens of points although the weights barely move. Returns the
    number of batches used (0: nothing to do)."""
    layers = _batch_norms(model)
    if batches <= 0 or not layers:
        return 0
    saved = [layer._momentum for layer in layers]
    model.train()
    used = 0
    try:
        with paddle.no_grad():
            for batch in loader:
                for layer in layers:  # running = m*running + (1-m)*batch: a cumulative mean
                    layer._momentum = used / (used + 1)
                model(batch[0])
                used += 1
                if used >= batches:
                    break
    finally:
        for layer, momentum in zip(layers, saved, strict=True):
            layer._momentum = momentum
    return used


def evaluate(model, loader) -> float:
    """Top-1 over the loader's images; launched, each rank counts its slice and the counts
    are summed, so every rank returns the top-1 of the whole eval list."""
    model.eval()
    correct = total = 0
    with paddle.no_grad():
        for x, label in loader:
            pred = model(x).argmax(axis=1)
            mask = label >= 0
            correct += int(((pred == label) & mask).astype("int64").sum())
            total += int(mask.astype("int64").sum())
    correct, total = dist.all_reduce_sum([correct, total])
    return correct / total if total else float("nan")


def make_eval_loader(cfg: dict, class_num: int):
    """The eval list in order; launched, this rank's slice of it (no padding)."""
    source, pipeline, spec = _source(cfg, "Eval", class_num)
    dataset = AugmentDataset(source, pipeline, seed=0)
    batches = EpochBatches(
        len(dataset), spec.batch_size, False, False, 0, dist.rank(), dist.world_size(), pad=False
    )
    return BatchLoader(dataset, batches, spec.num_workers)


def _open_offline(
    cfg: dict, pipeline: Pipeline, student_spec, loss_fn: DistillLoss | None
) -> tuple[CacheReader, int]:
    """The verified, indexed cache of an offline run and the number of views it uses."""
    reader = open_matching_cache(cfg, pipeline)
    if reader.manifest.num_classes != student_spec.class_num:
        raise CacheError(
            f"{reader.cache_dir}: cache has {reader.manifest.num_classes} classes, "
            f"{student_spec.key}.class_num is {student_spec.class_num}"
        )
    if reader.manifest.codec["name"] == "sampled" and needs_dense_target(loss_fn):
        raise ConfigError(
            "Loss.Train: codec 'sampled' gives an unbiased target only for losses linear "
            "in it (DistillationCELoss, KLDivLoss with temperature 1); use codec fp16/topk"
        )
    views_used = cfg["Offline"]["views"]
    if not isinstance(views_used, int) or not 1 <= views_used <= reader.views:
        raise ConfigError(
            f"Offline.views: {views_used!r}; this cache holds {reader.views} views per image "
            "and train-student uses the first Offline.views of them"
        )
    reader.verify_all()  # before the first batch; the loader workers inherit the result
    reader.index()  # built once here from the key columns, shared by the loader workers
    return reader, views_used


@dataclass
class DataOnlyResult:
    images: int
    seconds: float
    images_per_second: float
    startup_seconds: float
    stages: dict[str, float]  # seconds per image spent in each stage, summed over workers
    workers: int
    in_memory_images_per_second: float | None = None


def _data_epoch(dataset: ReplayDataset, sampler, workers: int, progress: bool):
    """(images, seconds, stage seconds summed) of one pass of the loader over `sampler`."""
    loader = BatchLoader(dataset, sampler, workers)
    images, stages = 0, np.zeros(len(ReplayDataset.STAGES))
    start = time.perf_counter()
    with tqdm(total=len(sampler), unit="batch", disable=not progress, file=sys.stderr) as bar:
        for batch in loader:
            images += batch[0].shape[0]
            stages += batch[-1].numpy().sum(axis=0)
            bar.update(1)
    return images, time.perf_counter() - start, stages


def data_only(cfg: dict, progress: bool = True, in_memory_reference: bool = False):
    """One epoch of train-student's data path without the student: read, key, look up, read
    the view, decode and replay, decode the target, batch, in the configured loader workers.

    With `in_memory_reference` the same epoch runs again with every cache column copied into
    memory first, so the cost of reading the cache from disk shows as a ratio."""
    cfgmod.check_supported(cfg)
    seed = int((cfg.get("Global") or {}).get("seed", 0))
    dist.init()
    start = time.perf_counter()
    student_spec = cfgmod.student_spec(cfg)
    source, pipeline, spec = _source(cfg, "Train", student_spec.class_num)
    reader, views_used = _open_offline(cfg, pipeline, student_spec, _labels_of(cfg, "offline"))
    dataset = ReplayDataset(source, pipeline, reader, timed=True)
    dataset.set_epoch_views(epoch_views(seed, 0, len(dataset), views_used))
    sampler = EpochBatches(
        len(dataset),
        spec.batch_size,
        spec.shuffle,
        spec.drop_last,
        seed,
        dist.rank(),
        dist.world_size(),
    )
    startup = time.perf_counter() - start
    images, seconds, stages = _data_epoch(dataset, sampler, spec.num_workers, progress)
    result = DataOnlyResult(
        images,
        seconds,
        images / seconds if seconds else 0.0,
        startup,
        dict(zip(ReplayDataset.STAGES, (stages / max(images, 1)).tolist(), strict=True)),
        spec.num_workers,
    )
    if in_memory_reference:
        reader.load_into_memory()
        again, memory_seconds, _ = _data_epoch(dataset, sampler, spec.num_workers, progress)
        result.in_memory_images_per_second = again / memory_seconds if memory_seconds else 0.0
    return result


def train(
    cfg: dict, mode: str, resume: bool = False, progress: bool = True, stop_after: int | None = None
) -> TrainResult:
    """Train the student (or, supervised, the Arch model) and return its metrics.

    `stop_after` ends the run after that epoch while keeping the schedule of Global.epochs,
    so a long run can be done in slices with --resume (and interruption can be tested)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    cfgmod.check_supported(cfg)
    glob = cfg.get("Global") or {}
    seed = int(glob.get("seed", 0))
    epochs = int(glob.get("epochs", 1))
    out = Path(glob.get("output_dir", "output"))
    out.mkdir(parents=True, exist_ok=True)
    device = select_device(glob.get("device"))
    dist.init()
    main = dist.is_main()  # writes checkpoints, metrics.jsonl, VisualDL and progress
    paddle.seed(seed)

    student_spec = cfgmod.student_spec(cfg)
    loss_fn = _labels_of(cfg, mode)
    source, pipeline, spec = _source(cfg, "Train", student_spec.class_num)
    reader = teacher = None
    if mode == "offline":
        reader, views_used = _open_offline(cfg, pipeline, student_spec, loss_fn)
        dataset = ReplayDataset(source, pipeline, reader)
    else:
        dataset = AugmentDataset(source, pipeline, seed)
        if mode == "online":
            teacher = load_teacher(cfg)
            bn_mode = cfg["Offline"]["online_teacher_bn"]
            if bn_mode not in ("train", "eval"):
                raise ConfigError("Offline.online_teacher_bn: expected train or eval")
            teacher.train() if bn_mode == "train" else teacher.eval()

    sampler = EpochBatches(
        len(dataset),
        spec.batch_size,
        spec.shuffle,
        spec.drop_last,
        seed,
        dist.rank(),
        dist.world_size(),
    )
    loader = BatchLoader(dataset, sampler, spec.num_workers)
    eval_loader = make_eval_loader(cfg, student_spec.class_num)
    model = build_model(student_spec)
    if glob.get("pretrained_model"):
        load_weights(model, f"{glob['pretrained_model']}.safetensors", "Global.pretrained_model")
    optimizer, scheduler = build_optimizer(cfg, model.parameters(), len(sampler), epochs)
    scaler = paddle.amp.GradScaler() if device == "gpu" else None

    start_epoch, best = 0, -1.0
    metrics_path = out / "metrics.jsonl"
    if resume and (out / "latest.json").exists():
        info = json.loads((out / "latest.json").read_text())
        load_weights(model, out / "latest.safetensors", "--resume")
        _load_optimizer(optimizer, model, out / "latest.opt.safetensors")
        start_epoch, best = int(info["epoch"]), float(info["best_top1"])
        if main:
            _keep_metrics_through(metrics_path, start_epoch)
    elif main and metrics_path.exists():
        metrics_path.unlink()
    vdl = _visualdl(glob, out) if main else None
    # Forward and backward through `net`; checkpoints and eval use the plain `model`.
    net = paddle.DataParallel(model) if dist.is_distributed() else model

    eval_interval = int(glob.get("eval_interval", 1))
    save_interval = int(glob.get("save_interval", 1))
    last, seconds, speeds = float("nan"), [], []
    for epoch in range(start_epoch, min(epochs, stop_after or epochs)):
        paddle.seed(seed + epoch)  # dropout etc.: each epoch reproducible after --resume
        sampler.set_epoch(epoch)
        if reader is not None:
            dataset.set_epoch_views(epoch_views(seed, epoch, len(dataset), views_used))
        else:
            dataset.set_epoch(epoch)
        model.train()
        bar = tqdm(
            total=len(sampler),
            desc=f"{mode} {epoch + 1}/{epochs}",
            unit="batch",
            disable=not (progress and main),
            file=sys.stderr,
            dynamic_ncols=True,
        )
        tick, seen, loss_sum = time.perf_counter(), 0, 0.0
        for batch in loader:
            x, labels = batch[0], batch[-1]
            with paddle.amp.auto_cast(enable=scaler is not None):
                logits = net(x)
                if mode == "supervised":
                    loss = gt_ce_loss(logits, labels)
                else:
                    if mode == "offline":
                        target = batch[1]
                    else:
                        with paddle.no_grad():
                            target = F.softmax(teacher(x).astype("float32"), axis=-1)
                    loss, _ = loss_fn(logits.astype("float32"), target, labels)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.minimize(optimizer, loss)
            else:
                loss.backward()
                optimizer.step()
            optimizer.clear_grad()
            scheduler.step()
            seen += x.shape[0]
            loss_sum += float(loss) * x.shape[0]
            elapsed = time.perf_counter() - tick
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{seen / elapsed:.0f}")
            bar.update(1)
        bar.close()
        train_seconds = time.perf_counter() - tick
        loss_sum, seen = dist.all_reduce_sum([loss_sum, seen])  # over all ranks
        seconds.append(train_seconds)
        speeds.append(seen / train_seconds)
        record = {
            "epoch": epoch + 1,
            "mode": mode,
            "loss": loss_sum / max(seen, 1),
            "lr": float(optimizer.get_lr()),
            "train_seconds": round(train_seconds, 3),
            "images_per_second": round(seen / train_seconds, 2),
        }
        if (epoch + 1) % eval_interval == 0 or epoch + 1 == epochs:
            recalibrate_batch_norm(model, loader, cfg["Offline"]["precise_bn_batches"])
            last = evaluate(model, eval_loader)
            record["top1"] = round(last, 5)
            if last > best:
                best = last
                if main:
                    info = {"epoch": epoch + 1, "top1": last}
                    save_checkpoint(out, "best", model, optimizer, info)
        record["best_top1"] = round(best, 5)
        if not main:
            continue
        # The epoch's line before its checkpoint: --resume drops lines past the checkpoint.
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if (epoch + 1) % save_interval == 0 or epoch + 1 == epochs:
            save_checkpoint(
                out,
                "latest",
                model,
                optimizer,
                {"epoch": epoch + 1, "best_top1": best, "mode": mode},
            )
        if vdl is not None:
            for key in ("loss", "lr", "top1", "images_per_second"):
                if key in record:
                    vdl.add_scalar(f"{mode}/{key}", record[key], epoch + 1)
        if progress:
            print(json.dumps(record), file=sys.stderr)
    if vdl is not None:
        vdl.close()
    dist.barrier()  # ranks leave together, after rank 0's last checkpoint
    return TrainResult(best, last, epochs, seconds, speeds, out)


def _visualdl(glob: dict, out: Path):
    if not glob.get("use_visualdl"):
        return None
    try:
        from visualdl import LogWriter
    except ImportError:
        raise ConfigError(
            "Global.use_visualdl: VisualDL is not installed (pip install visualdl)"
        ) from None
    return LogWriter(logdir=str(out / "vdl"))


def evaluate_config(cfg: dict) -> float:
    """`eval`: top-1 of Global.pretrained_model on the Eval list."""
    cfgmod.check_supported(cfg)
    glob = cfg.get("Global") or {}
    select_device(glob.get("device"))
    dist.init()
    spec = cfgmod.student_spec(cfg)
    weights = glob.get("pretrained_model")
    if not weights:
        raise ConfigError("Global.pretrained_model: required (path without .safetensors)")
    model = build_model(spec)
    load_weights(model, f"{weights}.safetensors", "Global.pretrained_model")
    return evaluate(model, make_eval_loader(cfg, spec.class_num))
