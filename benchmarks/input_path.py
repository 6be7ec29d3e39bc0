"""The input path at ImageNet shape: ours, PaddleClas's own DataLoader and the bare floor.

Images: --images generated JPEGs with ImageNet's size spread (most 333-500 px a side, a tail
of large ones up to 2,500 px), natural-image-like 1/f content at quality 75-90 (~70 KiB at
500x375), written once under --image-dir and reused by later runs with the same count.

Modes, each one epoch over the list at 1 and 2 loader workers, interleaved over --rounds
rounds in rotated order (others may share the machine: compare ratios within a round):

  ours      `train-student --data-only` (offline_ssld.train.data_only) on a cache of the
            list whose views were drawn by the training pipeline, as dump-teacher draws them
  dump      dump-teacher's input path (DumpDataset through the same loader, no teacher),
            --views views per image, counted in views/s
  paddleclas  PaddleClas's `ppcls.data.build_dataloader` from its own source tree over the
            same list and ops (see tests/paddleclas_source.py)
  floor     one process, no loader: libjpeg-turbo decode (Pillow) of the whole JPEG, the
            stored crop box resized to 224 with cv2, uint8 out

Two op lists: PaddleClas's standard ImageNet train ops (DecodeImage, RandCropImage 224,
RandFlipImage, NormalizeImage) and a strong one (bicubic PIL RandCropImage, TimmAutoAugment
rand-m9-mstd0.5, NormalizeImage, RandomErasing), as PaddleClas's SSLD/PULC recipes use.

    python benchmarks/input_path.py --images 1000 --rounds 2
"""

from __future__ import annotations

import copy
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, reproduce_command, rotated  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks/results/input_path.json"
ASSUMED_GPU_IMAGES_PER_S = {
    "ResNet50_vd": 2500,
    "MobileNetV3_large_x1_0": 6000,
    "PPLCNet_x1_0": 8000,
    "MobileNetV3_small_x1_0": 10000,
}
"""Training img/s of one A100 with AMP at 224 px, per student: ASSUMPTIONS (no GPU here),
the order of magnitude NVIDIA's and PaddleClas's published training speeds give. Only the
cores-per-GPU table uses them."""
CLASSES = 1000
BATCH = 64
_NORMALIZE = {
    "NormalizeImage": {
        "scale": "1.0/255.0",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "order": "",
    }
}
OPS = {
    "standard": [
        {"DecodeImage": {"to_rgb": True, "channel_first": False}},
        {"RandCropImage": {"size": 224}},
        {"RandFlipImage": {"flip_code": 1}},
        _NORMALIZE,
    ],
    "strong": [
        {"DecodeImage": {"to_rgb": True, "channel_first": False}},
        {"RandCropImage": {"size": 224, "interpolation": "bicubic", "backend": "pil"}},
        {"RandFlipImage": {"flip_code": 1}},
        {
            "TimmAutoAugment": {
                "config_str": "rand-m9-mstd0.5",
                "interpolation": "bicubic",
                "img_size": 224,
            }
        },
        _NORMALIZE,
        {
            "RandomErasing": {
                "EPSILON": 0.25,
                "sl": 0.02,
                "sh": 1.0 / 3.0,
                "r1": 0.3,
                "attempt": 10,
                "use_log_aspect": True,
                "mode": "pixel",
            }
        },
    ],
}


# --------------------------------------------------------------------------------------------
# images


def _natural(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """An RGB picture with a natural image's 1/f^a spectrum, channels correlated."""
    alpha = rng.uniform(1.15, 1.35)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amp = f**-alpha
    shape = (h, w // 2 + 1)
    shared = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    out = np.empty((h, w, 3), np.float32)
    for c in range(3):
        own = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
        plane = np.fft.irfft2((0.8 * shared + 0.45 * own) * amp, s=(h, w))
        out[..., c] = (plane - plane.mean()) / (plane.std() + 1e-9)
    return np.clip(128 + 45 * out, 0, 255).astype(np.uint8)


def _size(rng: np.random.Generator) -> tuple[int, int]:
    """ImageNet-like: mostly 500 on the long side and 333-375 on the short; some 300-500
    both ways; a tail of large images."""
    u = rng.random()
    if u < 0.8:
        long, short = 500, int(rng.integers(333, 376))
    elif u < 0.92:
        long, short = int(rng.integers(300, 501)), int(rng.integers(250, 501))
    else:
        long = int(rng.integers(800, 2501))
        short = int(long * rng.uniform(0.6, 0.8))
    return (long, short) if rng.random() < 0.7 else (short, long)


def write_images(root: Path, count: int, seed: int = 0) -> Path:
    """`count` JPEGs under root and a PaddleClas list of them (reused when already there)."""
    import cv2

    listing = root / f"train_list_{count}_{seed}.txt"
    if listing.exists():
        return listing
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        rel = f"train/n{i % 100:08d}/{i:06d}.JPEG"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        w, h = _size(rng)
        quality = int(rng.integers(75, 91))
        ok, buf = cv2.imencode(".jpg", _natural(rng, w, h), [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        (root / rel).write_bytes(buf.tobytes())
        lines.append(f"{rel} {i % CLASSES}")
    part = listing.with_suffix(".part")
    part.write_text("\n".join(lines) + "\n", encoding="utf-8")
    part.rename(listing)
    return listing


def image_stats(root: Path, listing: Path) -> dict:
    from offline_ssld.data.transforms import _header_size

    sizes, nbytes = [], []
    for line in listing.read_text().splitlines():
        data = (root / line.split()[0]).read_bytes()
        nbytes.append(len(data))
        sizes.append(_header_size(data))
    long = np.array([max(s) for s in sizes])
    typical = [n for n, s in zip(nbytes, sizes, strict=True) if max(s) == 500]
    return {
        "count": len(sizes),
        "mean_kib": float(np.mean(nbytes) / 1024),
        "median_kib_500px": float(np.median(typical) / 1024) if typical else None,
        "median_long_side": float(np.median(long)),
        "share_long_side_over_1000": float(np.mean(long > 1000)),
    }


# --------------------------------------------------------------------------------------------
# the modes


def _our_config(root: Path, listing: Path, cache: Path, ops: list, workers: int, views: int):
    from benchmarks.data_only import data_only_config

    cfg = data_only_config(root, listing, cache, BATCH, workers, views)
    cfg["DataLoader"]["Train"]["dataset"]["transform_ops"] = copy.deepcopy(ops)
    return cfg


def build_cache(root: Path, listing: Path, cache: Path, ops: list, views: int) -> None:
    from benchmarks.synthetic import ImageSet, write_synthetic_cache
    from offline_ssld.data.lists import read_list
    from offline_ssld.data.views import ImageSource
    from offline_ssld.io import content_key

    source = ImageSource(root, listing, read_list(listing, CLASSES))
    keys = [content_key(source.read(i)) for i in range(len(source.samples))]
    write_synthetic_cache(
        cache, "fp16", CLASSES, len(keys), views, "arrow",
        images=ImageSet(source, keys, ops), teacher_name="ResNet18",
    )  # fmt: skip


def run_ours(cfg: dict) -> dict:
    from offline_ssld.train import data_only

    r = data_only(cfg, progress=False)
    stages = {k: v * 1e6 for k, v in r.stages.items()}
    per_image = 1e6 / r.images_per_second
    return {
        "images_per_s": r.images_per_second,
        "stage_us_per_image": stages,
        # wall time per image of one worker's share, minus what its stages account for
        "outside_stages_us_per_image": per_image * r.workers - sum(stages.values()),
    }


def run_dump(root: Path, listing: Path, ops: list, workers: int, views: int) -> dict:
    from offline_ssld.data.lists import probe_key, read_list
    from offline_ssld.data.loader import BatchLoader
    from offline_ssld.data.transforms import Pipeline, build_ops
    from offline_ssld.data.views import DumpDataset, ImageSource

    source = ImageSource(root, listing, read_list(listing, CLASSES))
    probes = [probe_key(source.read(i)) for i in range(len(source.samples))]
    items = list(range(len(probes) * views))
    dataset = DumpDataset(source, probes, Pipeline(build_ops(ops, "ops")), 0, views, items)
    batches = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
    start = time.perf_counter()
    for _ in BatchLoader(dataset, batches, workers):
        pass
    return {"views_per_s": len(items) / (time.perf_counter() - start)}


def run_paddleclas(src: Path, root: Path, listing: Path, ops: list, workers: int) -> dict:
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    from ppcls.data import build_dataloader
    from ppcls.utils import logger

    logger.init_logger()  # PaddleClas's own tools call this first; its ops log through it

    config = {
        "Train": {
            "dataset": {
                "name": "ImageNetDataset",
                "image_root": str(root),
                "cls_label_path": str(listing),
                "transform_ops": copy.deepcopy(ops),
            },
            "sampler": {
                "name": "DistributedBatchSampler",
                "batch_size": BATCH,
                "drop_last": False,
                "shuffle": True,
            },
            "loader": {"num_workers": workers, "use_shared_memory": True},
        }
    }
    loader = build_dataloader(config, "Train", "cpu", seed=0)
    images = 0
    start = time.perf_counter()
    for batch in loader:
        images += int(batch[0].shape[0])
    return {"images_per_s": images / (time.perf_counter() - start)}


def run_floor(root: Path, listing: Path, boxes: list[tuple[int, int, int, int]]) -> dict:
    """Bare full-size decode (libjpeg-turbo: simplejpeg if installed, else Pillow) and a
    crop-resize to 224 of each stored box, uint8 out, in one process; and each decoder's time
    for a whole JPEG."""
    import cv2
    from PIL import Image

    try:
        from offline_ssld.data.decode import simplejpeg
    except ImportError:  # a baseline run of the code before data/decode.py
        simplejpeg = None

    def pillow(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))

    fastest = pillow if simplejpeg is None else lambda d: simplejpeg.decode_jpeg(d, "RGB")
    paths = [root / line.split()[0] for line in listing.read_text().splitlines()]
    datas = [p.read_bytes() for p in paths]
    start = time.perf_counter()
    for data, (x, y, w, h) in zip(datas, boxes, strict=True):
        img = fastest(data)
        cv2.resize(img[y : y + h, x : x + w], (224, 224), interpolation=cv2.INTER_LINEAR)
    result = {"images_per_s": len(datas) / (time.perf_counter() - start)}

    decoders = {
        "opencv": lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR),
        "pillow": pillow,
    }
    if simplejpeg is not None:
        decoders["simplejpeg"] = lambda d: simplejpeg.decode_jpeg(d, "RGB")
    result["decode_us_per_image"] = {}
    for name, fn in decoders.items():
        start = time.perf_counter()
        for data in datas:
            fn(data)
        result["decode_us_per_image"][name] = (time.perf_counter() - start) / len(datas) * 1e6
    return result


def run_handover(repeats: int = 5) -> dict:
    """What the training process spends per batch to take one over, two ways: a float32
    batch the workers normalised, copied into a tensor; or a uint8 batch copied in and
    normalised there (NormalizeImage + ToCHWImage per image, as fast as this code does it)."""
    from offline_ssld.data.loader import _cpu_tensor
    from offline_ssld.data.transforms import NormalizeImage

    norm = NormalizeImage("NormalizeImage", order="")
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (BATCH, 224, 224, 3), dtype=np.uint8)
    f32 = np.stack([norm.apply_chw(img) for img in u8])

    def uint8_then_normalise() -> None:
        pixels = _cpu_tensor(u8[:]).numpy()
        _cpu_tensor(np.stack([norm.apply_chw(img) for img in pixels]))

    ways = {  # each from a view of a shared slot, as the loader gets it
        "float32 from the workers": lambda: _cpu_tensor(f32[:]),
        "uint8, normalised in the training process": uint8_then_normalise,
    }
    out = {}
    for name, fn in ways.items():
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        out[name] = (time.perf_counter() - start) / repeats * 1e3
    return {"ms_per_batch": out}


def stored_boxes(cache: Path, count: int) -> list[tuple[int, int, int, int]]:
    """Each image's view-0 crop box, as the cache stores it."""
    from offline_ssld.cache.reader import CacheReader

    reader = CacheReader(cache)
    boxes = []
    for image in range(count):
        number, local = reader.locate(image)
        params, _ = reader.read_view(number, local, 0)
        boxes.append(tuple(int(v) for v in np.asarray(params).reshape(-1)[:4]))
    return boxes


# --------------------------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--images", type=click.IntRange(min=64), default=1000, show_default=True)
@click.option("--views", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--image-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(tempfile.gettempdir()) / "imagenet_shape",
    show_default=True,
)
@click.option(
    "--modes",
    default="ours,dump,paddleclas,floor,handover",
    show_default=True,
    help="comma-separated subset of ours,dump,paddleclas,floor,handover",
)
@click.option(
    "--baseline",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="an earlier input_path.json (e.g. of the code before a change) shown beside this run",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True
)
def main(images, views, rounds, image_dir, modes, baseline, out) -> None:
    """Time the input path at ImageNet shape: ours, PaddleClas's DataLoader, the floor.

    \b
    Example:
      python benchmarks/input_path.py --images 1000 --rounds 2
    """
    from offline_ssld.config.specs import data_spec
    from tests.paddleclas_source import SourceMissing, find_source

    wanted = modes.split(",")
    command = reproduce_command()
    image_dir.mkdir(parents=True, exist_ok=True)
    listing = write_images(image_dir, images)
    src = None
    if "paddleclas" in wanted:
        try:
            src = find_source()
        except SourceMissing as exc:
            raise click.ClickException(str(exc)) from None
    loads = [os.getloadavg()]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="input_path-") as tmp:
        caches, resolved = {}, {}
        for name, ops in OPS.items():
            caches[name] = Path(tmp) / name / "cache"
            # the ops as train-student resolves them (a ToCHWImage after an HWC NormalizeImage)
            cfg = _our_config(image_dir, listing, caches[name], ops, 1, views)
            resolved[name] = data_spec(cfg, "Train").transform_ops
            build_cache(image_dir, listing, caches[name], resolved[name], views)
        boxes = stored_boxes(caches["standard"], images)
        jobs = []
        for name, ops in OPS.items():
            for workers in (1, 2):
                if "ours" in wanted:
                    cfg = _our_config(image_dir, listing, caches[name], ops, workers, views)
                    jobs.append(("ours", name, workers, lambda cfg=cfg: run_ours(cfg)))
                if "paddleclas" in wanted:
                    jobs.append(
                        (
                            "paddleclas", name, workers,
                            lambda ops=ops, w=workers: run_paddleclas(
                                src, image_dir, listing, ops, w
                            ),
                        )
                    )  # fmt: skip
                if "dump" in wanted and name == "standard":
                    jobs.append(
                        (
                            "dump", name, workers,
                            lambda w=workers: run_dump(
                                image_dir, listing, resolved["standard"], w, views
                            ),
                        )
                    )  # fmt: skip
        if "floor" in wanted:
            jobs.append(("floor", "standard", 1, lambda: run_floor(image_dir, listing, boxes)))
        if "handover" in wanted:
            jobs.append(("handover", "standard", 1, run_handover))
        for r in range(rounds):
            order = rotated(list(range(len(jobs))), r, rounds)
            for j in order:
                mode, ops_name, workers, job = jobs[j]
                result = job()
                loads.append(os.getloadavg())
                runs.append(
                    {"round": r, "mode": mode, "ops": ops_name, "workers": workers, **result}
                )
                click.echo(json.dumps(runs[-1]), err=True)
    report = {
        "benchmark": "input_path",
        "command": command,
        "options": {"images": images, "views": views, "rounds": rounds, "batch": BATCH},
        "images": image_stats(image_dir, listing),
        "ops": OPS,
        "machine": machine_info(),
        "load_average": loads,
        "runs": runs,
    }
    if baseline is not None:
        before = json.loads(baseline.read_text(encoding="utf-8"))
        report["baseline"] = {k: before[k] for k in ("command", "load_average", "runs")}
        report["baseline"]["revision"] = before.get("revision")
    report["revision"] = _revision()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    click.echo(render_input_path(report))


def _revision() -> str | None:
    """The git commit the measured code is at (None outside a checkout)."""
    import subprocess

    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or None


# --------------------------------------------------------------------------------------------
# rendering


def _median(runs: list[dict], mode: str, ops: str, workers: int, key: str) -> float | None:
    values = [
        r[key]
        for r in runs
        if r["mode"] == mode and r["ops"] == ops and r["workers"] == workers and key in r
    ]
    return float(np.median(values)) if values else None


def _ratio_in_rounds(runs: list[dict], a: tuple, b: tuple, key_a: str, key_b: str) -> float | None:
    """Median over rounds of the ratio a/b measured in the same round."""
    ratios = []
    for r in sorted({run["round"] for run in runs}):
        pick = [run for run in runs if run["round"] == r]
        va = _median(pick, *a, key_a)
        vb = _median(pick, *b, key_b)
        if va and vb:
            ratios.append(va / vb)
    return float(np.median(ratios)) if ratios else None


def render_input_path(results: dict) -> str:
    """Markdown table and sentences from an input_path.json (nothing typed by hand)."""
    runs = results["runs"]
    rows = [
        "| ops | workers | ours (img/s) | PaddleClas DataLoader (img/s) | ours / PaddleClas "
        "| dump (views/s) |",
        "|---|---|---|---|---|---|",
    ]

    def fmt(v: float | None, spec: str = ".0f") -> str:
        return "n/a" if v is None else format(v, spec)

    for ops in results["ops"]:
        for workers in (1, 2):
            ours = _median(runs, "ours", ops, workers, "images_per_s")
            theirs = _median(runs, "paddleclas", ops, workers, "images_per_s")
            ratio = _ratio_in_rounds(
                runs, ("ours", ops, workers), ("paddleclas", ops, workers),
                "images_per_s", "images_per_s",
            )  # fmt: skip
            dump = _median(runs, "dump", ops, workers, "views_per_s")
            rows.append(
                f"| {ops} | {workers} | {fmt(ours)} | {fmt(theirs)} | {fmt(ratio, '.2f')}x "
                f"| {fmt(dump)} |"
            )
    text = ["\n".join(rows), ""]
    floor = _median(runs, "floor", "standard", 1, "images_per_s")
    ours1 = _median(runs, "ours", "standard", 1, "images_per_s")
    scaling = _ratio_in_rounds(
        runs, ("ours", "standard", 2), ("ours", "standard", 1), "images_per_s", "images_per_s"
    )
    if floor is not None:
        share = f" (ours with 1 worker runs at {ours1 / floor:.0%} of it)" if ours1 else ""
        text.append(
            f"The floor, a libjpeg-turbo decode of the whole JPEG and a crop-resize to 224 in "
            f"one process (no reduced-scale decoding, no flip or normalising), runs at "
            f"{floor:.0f} img/s{share}."
        )
    floors = [r for r in runs if r["mode"] == "floor" and "decode_us_per_image" in r]
    if floors:
        names = list(floors[0]["decode_us_per_image"])
        each = {n: float(np.median([r["decode_us_per_image"][n] for r in floors])) for n in names}
        listed = ", ".join(f"{n} {v:.0f} µs" for n, v in each.items())
        text.append(f"Decoding a whole JPEG of the set, per image: {listed}.")
    handovers = [r for r in runs if r["mode"] == "handover"]
    if handovers:
        ways = {
            n: float(np.median([r["ms_per_batch"][n] for r in handovers]))
            for n in handovers[0]["ms_per_batch"]
        }
        listed = "; ".join(f"{n}: {v:.1f} ms" for n, v in ways.items())
        text.append(
            f"The training process's cost of taking over a batch of {results['options']['batch']}"
            f" on this CPU: {listed}."
        )
    if scaling is not None:
        text.append(f"With the standard ops, 2 workers give {scaling:.2f}x the img/s of 1.")
    stages = [
        r for r in runs if r["mode"] == "ours" and r["ops"] == "standard" and r["workers"] == 1
    ]
    if stages:
        keys = list(stages[0]["stage_us_per_image"])
        mean = {k: float(np.median([s["stage_us_per_image"][k] for s in stages])) for k in keys}
        outside = float(np.median([s["outside_stages_us_per_image"] for s in stages]))
        parts = ", ".join(f"{k} {v:.0f} µs" for k, v in mean.items())
        text.append(
            f"Per image with 1 worker (standard ops): {parts}; outside the stages "
            f"(hand-over, batching, normalising in the training process) {outside:.0f} µs."
        )
    if ours1:
        text.append(
            "\nCores per GPU the input path needs (standard ops; measured img/s of one worker "
            "on one core, GPU speeds ASSUMED, not measured here):\n"
        )
        text.append("| student | assumed GPU img/s | cores (ours) | cores (PaddleClas) |")
        text.append("|---|---|---|---|")
        theirs1 = _median(runs, "paddleclas", "standard", 1, "images_per_s")
        for student, need in ASSUMED_GPU_IMAGES_PER_S.items():
            theirs = f"{need / theirs1:.0f}" if theirs1 else "n/a"
            text.append(f"| {student} | {need} | {need / ours1:.0f} | {theirs} |")
        text.append("")
    base = results.get("baseline")
    if base:
        text.extend(_render_baseline(base["runs"], runs, base.get("revision")))
    loads = [load[0] for load in results["load_average"]]
    info = results["images"]
    typical = (
        f" ({info['median_kib_500px']:.0f} KiB the median of those 500 px on the long side)"
        if info.get("median_kib_500px")
        else ""
    )
    text.append(
        f"{info['count']} generated JPEGs, {info['mean_kib']:.0f} KiB on average"
        f"{typical}, median long side {info['median_long_side']:.0f} px, "
        f"{info['share_long_side_over_1000']:.0%} above 1,000 px; batch "
        f"{results['options']['batch']}; {results['options']['rounds']} interleaved rounds "
        f"(medians shown, ratios taken within a round); 1-minute load average "
        f"{min(loads):.1f} to {max(loads):.1f} on {results['machine']['nproc']} cores."
    )
    text.append(f"\nReproduce: `{results['command']}`")
    return "\n".join(text) + "\n"


def _render_baseline(before: list[dict], after: list[dict], revision: str | None) -> list[str]:
    """Before/after: img/s of each (ops, workers) and the 1-worker stage breakdown."""
    at = f" (revision {revision})" if revision else ""
    lines = [
        f"\nBefore and after, ours{at} (baseline: an earlier run of this benchmark):\n",
        "| ops | workers | before (img/s) | after (img/s) | speed-up |",
        "|---|---|---|---|---|",
    ]
    for ops in ("standard", "strong"):
        for workers in (1, 2):
            b = _median(before, "ours", ops, workers, "images_per_s")
            a = _median(after, "ours", ops, workers, "images_per_s")
            if a and b:
                lines.append(f"| {ops} | {workers} | {b:.0f} | {a:.0f} | {a / b:.2f}x |")
    lines += ["", "| stage (1 worker, standard ops) | before (µs/image) | after (µs/image) |"]
    lines.append("|---|---|---|")

    def stages(runs: list[dict]) -> dict[str, float]:
        picked = [
            r for r in runs if r["mode"] == "ours" and r["ops"] == "standard" and r["workers"] == 1
        ]
        if not picked:
            return {}
        out = {
            k: float(np.median([r["stage_us_per_image"][k] for r in picked]))
            for k in picked[0]["stage_us_per_image"]
        }
        out["outside the stages"] = float(
            np.median([r["outside_stages_us_per_image"] for r in picked])
        )
        return out

    b, a = stages(before), stages(after)
    for key in a:
        lines.append(f"| {key} | {b.get(key, float('nan')):.0f} | {a[key]:.0f} |")
    lines.append("")
    return lines


if __name__ == "__main__":
    main()
