"""Stage 2 and its baselines: one training loop over any source of targets (targets.py).

offline (the cache), online (the teacher in the loop) and supervised (labels) share the data
path, optimizer, schedule, evaluation and checkpoints, so a benchmark between them compares
like with like; the loop itself never asks which one it runs.

Under `python -m paddle.distributed.launch` the same loop is data-parallel: each rank takes
its slice of the epoch's global permutation (batch_size per rank, as PaddleClas's per-card
batch), the model is wrapped in paddle.DataParallel, evaluation counts are summed over the
ranks, and rank 0 alone writes checkpoints (of the unwrapped model) and metrics.jsonl.

Precision and BatchNorm follow PaddleClas's engine: AMP (O1 with its GradScaler) when the
config's AMP section enables it and the device is a GPU, fp32 otherwise; Arch.use_sync_bn
turns the student's BatchNorm layers into SyncBatchNorm when launched on several GPUs.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paddle
from tqdm import tqdm

from offline_ssld import distributed as dist
from offline_ssld.checkpoint import (
    has_checkpoint,
    keep_metrics_through,
    paddleclas_names,
    recover_all,
    resume_checkpoint,
    save_checkpoint,
)
from offline_ssld.config import loading, paddleclas, specs
from offline_ssld.data.lists import read_list
from offline_ssld.data.loader import BatchLoader
from offline_ssld.data.samplers import EpochBatches, epoch_views
from offline_ssld.data.transforms import Pipeline, build_ops
from offline_ssld.data.views import AugmentDataset, ImageSource, ReplayDataset
from offline_ssld.errors import ConfigError
from offline_ssld.metrics import Metric, build_metrics
from offline_ssld.models import build_model, load_weights, select_device
from offline_ssld.optim import build_optimizer
from offline_ssld.targets import TARGET_SOURCES, OfflineCache

MODES = tuple(TARGET_SOURCES)


# ------------------------------------------------------------------------ data


def _source(cfg: dict, split: str, class_num: int) -> tuple[ImageSource, Pipeline, specs.DataSpec]:
    """A split's images, pipeline and loader settings: train and eval read lists one way."""
    spec = specs.data_spec(cfg, split)
    pipeline = Pipeline(
        build_ops(spec.transform_ops, f"{spec.key}.transform_ops"), f"{spec.key}.transform_ops"
    )
    samples = read_list(spec.cls_label_path, class_num, spec.delimiter, spec.multilabel)
    source = ImageSource(spec.image_root, spec.cls_label_path, samples, spec.label_ratio)
    return source, pipeline, spec


# ------------------------------------------------------------------------- loop


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Paddle's global random state (CPU and the current device) as on entry, on exit:
    whatever the block draws leaves the stream of the code after it untouched."""
    devices = {"cpu", paddle.get_device().split(":")[0]}
    states = {device: paddle.get_rng_state(device) for device in devices}
    try:
        yield
    finally:
        for device, state in states.items():
            paddle.set_rng_state(state, device)


@dataclass
class TrainResult:
    """What a run reports (CLI summary, benchmarks); per-epoch detail is in metrics.jsonl.
    best_top1 and last_top1 hold the main eval value, `metric` (top-1 unless Metric.Eval's
    first entry is another metric, as PaddleClas picks its best model by it)."""

    best_top1: float
    last_top1: float
    epochs: int
    train_seconds: list[float]
    images_per_second: list[float]
    output_dir: Path
    metric: str


def _batch_norms(model: paddle.nn.Layer) -> list[paddle.nn.Layer]:
    from paddle.nn.layer.norm import _BatchNormBase

    return [m for m in model.sublayers() if isinstance(m, (paddle.nn.BatchNorm, _BatchNormBase))]


def recalibrate_batch_norm(model: paddle.nn.Layer, loader: BatchLoader, batches: int) -> int:
    """Recompute every BatchNorm's running statistics as the plain mean over the first
    `batches` training batches of each batch's statistics (its mean and biased variance, as
    Paddle's BatchNorm takes them), with the weights as they are now: the "precise BN" of
    fvcore and Detectron2. Like theirs, the variance is the mean of the per-batch variances,
    without the spread of the batch means that the variance of the pooled batches adds.

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


def grad_scaler(amp: specs.AmpSpec) -> paddle.amp.GradScaler:
    """The loss scaler of PaddleClas's build_scaler (ppcls/utils/amp.py): AMP.scale_loss as
    the initial scale and AMP.use_dynamic_loss_scaling; Paddle's defaults for the rest."""
    return paddle.amp.GradScaler(
        init_loss_scaling=amp.scale_loss, use_dynamic_loss_scaling=amp.use_dynamic_loss_scaling
    )


def autocast(amp: specs.AmpSpec | None) -> Any:
    """paddle.amp.auto_cast with the AMP section's level and use_promote, as PaddleClas's
    AutoCast; fp32 (a no-op context) when `amp` is None."""
    if amp is None:
        return contextlib.nullcontext()
    return paddle.amp.auto_cast(level=amp.level, use_promote=amp.use_promote)


def run_amp(amp: specs.AmpSpec, device: str, announce: bool) -> specs.AmpSpec | None:
    """The AMP settings this run computes with: the section's when enabled on a GPU, else
    None (fp32). Paddle's CPU training has no fp16, so a configured AMP on CPU trains fp32,
    said once (`announce`)."""
    if amp.enabled and device != "gpu" and announce:
        print(
            "offline-ssld: AMP is configured but the device is cpu; training in fp32",
            file=sys.stderr,
        )
    return amp if amp.enabled and device == "gpu" else None


def sync_batch_norm(model: paddle.nn.Layer, requested: bool, device: str) -> paddle.nn.Layer:
    """Arch.use_sync_bn as PaddleClas's build_model applies it (ppcls/arch/__init__.py):
    every BatchNorm layer becomes a SyncBatchNorm sharing its parameters, on GPU only (on
    CPU PaddleClas ignores the setting). Only when launched on several processes: in one
    process SyncBatchNorm computes what BatchNorm does."""
    if requested and device == "gpu" and dist.is_distributed():
        return paddle.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def evaluate(
    model: paddle.nn.Layer,
    loader: BatchLoader,
    metrics: list[Metric],
    fp16: specs.AmpSpec | None = None,
) -> dict[str, float]:
    """The values of `metrics` (Metric.Eval) over the loader's images, the first metric's
    main value first; launched, each rank sums its slice into the metrics' states and the
    states are summed over the ranks, so every rank returns the values of the whole list.
    With `fp16` (AMP.use_fp16_test on a GPU) the forward runs under its autocast."""
    model.eval()
    for metric in metrics:
        metric.state[:] = 0.0
    with paddle.no_grad(), autocast(fp16):
        for x, label in loader:
            logits = model(x)
            for metric in metrics:
                metric.update(logits, label.numpy())
    sizes = [len(m.state) for m in metrics]
    summed = dist.all_reduce_sum([v for m in metrics for v in m.state.tolist()])
    values: dict[str, float] = {}
    for metric, start, size in zip(metrics, np.cumsum([0, *sizes]), sizes, strict=False):
        metric.state[:] = summed[start : start + size]
        values.update(metric.values())
    return values


def eval_metrics(cfg: dict, class_num: int) -> list[Metric]:
    """Metric.Eval of the config (top-1 when absent)."""
    return build_metrics(
        loading.get(cfg, "Metric.Eval", None), class_num, specs.is_multilabel(cfg), "Metric.Eval"
    )


def make_eval_loader(cfg: dict, class_num: int) -> BatchLoader:
    """The eval list in order; launched, this rank's slice of it (no padding)."""
    source, pipeline, spec = _source(cfg, "Eval", class_num)
    dataset = AugmentDataset(source, pipeline, seed=0)
    batches = EpochBatches(
        len(dataset), spec.batch_size, False, False, 0, dist.rank(), dist.world_size(), pad=False
    )
    return BatchLoader(dataset, batches, spec.num_workers)


@dataclass
class DataOnlyResult:
    images: int
    seconds: float
    images_per_second: float
    startup_seconds: float
    stages: dict[str, float]  # seconds per image spent in each stage, summed over workers
    workers: int
    in_memory_images_per_second: float | None = None


def _data_epoch(
    dataset: ReplayDataset, sampler: EpochBatches, workers: int, progress: bool
) -> tuple[int, float, np.ndarray]:
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


def data_only(
    cfg: dict, progress: bool = True, in_memory_reference: bool = False
) -> DataOnlyResult:
    """One epoch of train-student's data path without the student: read, key, look up, read
    the view, decode and replay, decode the target, batch, in the configured loader workers.

    With `in_memory_reference` the same epoch runs again with every cache column copied into
    memory first, so the cost of reading the cache from disk shows as a ratio."""
    paddleclas.check_supported(cfg)
    seed = int((cfg.get("Global") or {}).get("seed", 0))
    dist.init()
    start = time.perf_counter()
    student_spec = specs.student_spec(cfg)
    source, pipeline, spec = _source(cfg, "Train", student_spec.class_num)
    targets = OfflineCache(cfg, source, pipeline, student_spec, seed)
    dataset = ReplayDataset(source, pipeline, targets.reader, targets.listed, timed=True)
    dataset.set_epoch_views(epoch_views(seed, 0, len(dataset), targets.views))
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
        dataset.reader.load_into_memory()
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
    offline = paddleclas.check_supported(cfg)
    glob = cfg.get("Global") or {}
    seed = int(glob.get("seed", 0))
    epochs = int(glob.get("epochs", 1))
    out = Path(glob.get("output_dir", "output"))
    out.mkdir(parents=True, exist_ok=True)
    device = select_device(glob.get("device"))
    dist.init()
    main = dist.is_main()  # writes checkpoints, metrics.jsonl, VisualDL and progress
    paddle.seed(seed)
    # Like for like: the student's init is the seed's first draw in every mode, and a target
    # source (the online teacher's random init before its weights load) draws from a copy
    # of the stream, so online, offline and supervised runs of a seed start identically.
    student_spec = specs.student_spec(cfg)
    model = build_model(student_spec)
    source, pipeline, spec = _source(cfg, "Train", student_spec.class_num)
    with preserved_rng():
        targets = TARGET_SOURCES[mode](cfg, source, pipeline, student_spec, seed)
    sampler = EpochBatches(
        len(targets.dataset),
        spec.batch_size,
        spec.shuffle,
        spec.drop_last,
        seed,
        dist.rank(),
        dist.world_size(),
    )
    provenance = {"targets": targets.provenance()} if targets.provenance() else {}
    loader = BatchLoader(targets.dataset, sampler, spec.num_workers)
    eval_loader = make_eval_loader(cfg, student_spec.class_num)
    metrics = eval_metrics(cfg, student_spec.class_num)
    best_key = f"best_{metrics[0].main}"  # best_top1 unless Metric.Eval starts otherwise
    model = sync_batch_norm(model, specs.use_sync_bn(cfg), device)
    if glob.get("pretrained_model"):
        load_weights(model, f"{glob['pretrained_model']}.safetensors", "Global.pretrained_model")
    elif student_spec.pretrained and specs.is_distillation(cfg):  # SSLD's fine-tuning stage
        load_weights(
            model,
            student_spec.pretrained,
            str(student_spec.weights_key),
            offline.allow_pickle_weights,
        )
    optimizer, scheduler = build_optimizer(cfg, model.parameters(), len(sampler), epochs)
    amp = run_amp(specs.amp_spec(cfg), device, main)
    scaler = grad_scaler(amp) if amp is not None else None
    fp16_eval = amp if amp is not None and amp.use_fp16_test else None

    start_epoch, best = 0, -1.0
    metrics_path = out / "metrics.jsonl"
    # .pdparams keys and optimizer state as PaddleClas names them for this config's Arch.
    prefix = f"{student_spec.key.rsplit('.', 1)[-1]}." if specs.is_distillation(cfg) else ""
    names = paddleclas_names(cfg, prefix)
    if main:
        recover_all(out)  # a checkpoint write a kill cut short: finished or discarded
    dist.barrier()
    # Global.checkpoints (PaddleClas's resume: ours or its files), else --resume: latest.
    checkpoints = glob.get("checkpoints") or (
        out / "latest" if resume and has_checkpoint(out, "latest") else None
    )
    if checkpoints:
        allow = offline.allow_pickle_weights
        info = resume_checkpoint(checkpoints, model, optimizer, names, scaler, allow)
        start_epoch, best = int(info["epoch"]), float(info.get(best_key, -1.0))
        if main:
            keep_metrics_through(metrics_path, start_epoch)
    elif main and metrics_path.exists():
        metrics_path.unlink()
    vdl = visualdl_writer(glob, out) if main else None
    # Forward and backward through `net`; checkpoints and eval use the plain `model`.
    net = paddle.DataParallel(model) if dist.is_distributed() else model

    eval_interval = int(glob.get("eval_interval", 1))
    save_interval = int(glob.get("save_interval", 1))
    start_eval_epoch = int(glob.get("start_eval_epoch", 0))  # PaddleClas: eval after it
    last, seconds, speeds = float("nan"), [], []
    for epoch in range(start_epoch, min(epochs, stop_after or epochs)):
        paddle.seed(seed + epoch)  # dropout etc.: each epoch reproducible after --resume
        sampler.set_epoch(epoch)
        targets.set_epoch(epoch)
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
            x = batch[0]
            with autocast(amp):
                loss = targets.loss(net(x), batch)
            if scaler is not None:  # PaddleClas's train_epoch: scale, backward, step, update
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
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
        loss_sum, images = dist.all_reduce_sum([loss_sum, seen])  # over all ranks
        seconds.append(train_seconds)
        speeds.append(images / train_seconds)
        record = {
            "epoch": epoch + 1,
            "mode": mode,
            "loss": loss_sum / max(images, 1),
            "lr": float(optimizer.get_lr()),
            "train_seconds": round(train_seconds, 3),
            "images_per_second": round(images / train_seconds, 2),
            **provenance,
        }
        due = (epoch + 1) % eval_interval == 0 and epoch + 1 > start_eval_epoch
        metric = 0.0  # this epoch's eval value for .pdstates, 0.0 when none (as PaddleClas)
        if due or epoch + 1 == epochs:
            recalibrate_batch_norm(model, loader, offline.precise_bn_batches)
            values = evaluate(model, eval_loader, metrics, fp16_eval)
            record.update({name: round(value, 5) for name, value in values.items()})
            last = metric = values[metrics[0].main]
            if last > best:
                best = last
                if main:
                    info = {"epoch": epoch + 1, **values, **provenance}
                    save_checkpoint(out, "best_model", model, optimizer, info, names, scaler, last)
        record[best_key] = round(best, 5)
        if not main:
            continue
        # The epoch's line before its checkpoint: --resume drops lines past the checkpoint.
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        # As PaddleClas: `latest` after every epoch, `epoch_N` every save_interval epochs.
        state = {"epoch": epoch + 1, best_key: best, "mode": mode, **provenance}
        if save_interval > 0 and (epoch + 1) % save_interval == 0:
            tag = f"epoch_{epoch + 1}"
            save_checkpoint(out, tag, model, optimizer, state, names, scaler, metric)
        save_checkpoint(out, "latest", model, optimizer, state, names, scaler, metric)
        if vdl is not None:
            for key in ("loss", "lr", *values, "images_per_second"):
                if key in record:
                    vdl.add_scalar(f"{mode}/{key}", record[key], epoch + 1)
        if progress:
            print(json.dumps(record), file=sys.stderr)
    if vdl is not None:
        vdl.close()
    dist.barrier()  # ranks leave together, after rank 0's last checkpoint
    return TrainResult(best, last, epochs, seconds, speeds, out, metrics[0].main)


def visualdl_writer(glob: dict, out: Path) -> Any:
    """A VisualDL LogWriter when Global.use_visualdl asks for one (imported only then)."""
    if not glob.get("use_visualdl"):
        return None
    try:
        from visualdl import LogWriter
    except ImportError:
        raise ConfigError(
            "Global.use_visualdl: VisualDL is not installed (pip install visualdl)"
        ) from None
    return LogWriter(logdir=str(out / "vdl"))


def evaluate_config(cfg: dict) -> dict[str, float]:
    """`eval`: Metric.Eval's values of Global.pretrained_model on the Eval list."""
    paddleclas.check_supported(cfg)
    glob = cfg.get("Global") or {}
    device = select_device(glob.get("device"))
    dist.init()
    amp = run_amp(specs.amp_spec(cfg), device, False)
    fp16 = amp if amp is not None and amp.use_fp16_test else None
    spec = specs.student_spec(cfg)
    weights = glob.get("pretrained_model")
    if not weights:
        raise ConfigError("Global.pretrained_model: required (path without .safetensors)")
    model = build_model(spec)
    load_weights(model, f"{weights}.safetensors", "Global.pretrained_model")
    loader = make_eval_loader(cfg, spec.class_num)
    return evaluate(model, loader, eval_metrics(cfg, spec.class_num), fp16)
