"""`offline-ssld select`: SSLD's unlabeled set, chosen from a pool by the cached teacher.

PaddleClas's SSLD recipe mines unlabeled images in steps: drop the pool images that
duplicate the evaluation set, run the teacher over the pool, keep for each class the K
images predicted as that class with the highest scores. With a teacher cache of the pool
(the config's training list, `dump-teacher`), the teacher never runs here:

- prediction: an image's prediction is the mean over its stored views of the teacher's
  probabilities (each view decoded by the cache's codec, so fp16, topk and sampled caches
  all give a distribution; an ensemble's views are combined by Offline.ensemble first).
  The views are the teacher's own test-time augmentation of the image, and the mean of
  probabilities is the ensemble rule `mean_probs`: class = argmax, score = its mean
  probability;
- duplicates: a pool image is never selected when its content key (BLAKE3 of the file, the
  cache's key) equals an excluded image's, or it is a near copy of one: its pHash within
  NEAR_DISTANCE bits of one of the excluded image's crop variants (a small one's also
  resized to the pool's sizes), its coarse thumbnail
  within GATE_MAD, and both images, decoded again, within MATCH_SCORE once aligned
  (near_duplicates.py);
- top-k: each class keeps its K highest-scoring remaining images predicted as it (ties by
  list order).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from offline_ssld.atomic import atomic_write, write_text_atomic
from offline_ssld.cached import open_cached
from offline_ssld.data.lists import Sample, read_image_bytes, read_list
from offline_ssld.errors import DataError
from offline_ssld.io import content_key
from offline_ssld.near_duplicates import (
    GATE_MAD,
    MATCH_SCORE,
    NEAR_DISTANCE,
    HashIndex,
    coarse_mad,
    crop_variants,
    decode_gray,
    fingerprint,
    resample_sizes,
    resampled_variants,
    verify,
)
from offline_ssld.plots import histogram_png

THREADS = 8  # file reads, BLAKE3 and cv2 decode/resize/DCT release the GIL
# What the selected list gives as each image's label. PaddleClas's ImageNetDataset needs a
# label column, and its SSLD docs mark unlabeled images with 0; offline-ssld reads a line
# with a label as labeled and a bare path as unlabeled (data/lists.py).
LABELS = ("zero", "teacher", "none")


@dataclass(frozen=True)
class Duplicate:
    """A pool image refused as a copy of an excluded image (the closest one, exact first)."""

    pool_path: str
    pool_line: int
    kind: str  # "exact" (same content key) or "near" (pHash candidate, verified on pixels)
    distance: int  # Hamming bits to the nearest crop variant; 0 for exact
    score: float  # near_duplicates.match_score of the pair (<= MATCH_SCORE); 0 for exact
    excluded_list: str
    excluded_line: int
    excluded_path: str


@dataclass(frozen=True)
class Excluded:
    """One image of an --exclude list: where it is listed, its key, its hashes and its
    coarse thumbnail."""

    list_path: str
    sample: Sample
    key: bytes
    variants: list[int]
    coarse: np.ndarray
    shape: tuple[int, int]  # (h, w): small images are also searched as resized to pool sizes


@dataclass
class Selection:
    """What `select` chose and refused, and where it wrote it."""

    out: Path
    summary_md: Path
    summary_json: Path
    histogram: Path
    selected: int
    listed: int  # pool images in the list
    in_cache: int  # of them, with cached teacher outputs
    short: list[int]  # classes with fewer than K selected
    duplicates: list[Duplicate]


def output_paths(out: Path) -> tuple[Path, Path, Path]:
    """The summary files written beside the list: NAME.summary.md/.json, NAME.scores.png."""
    return (
        out.with_suffix(".summary.md"),
        out.with_suffix(".summary.json"),
        out.with_suffix(".scores.png"),
    )


def _threaded(func, items: list) -> list:
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(func, items, chunksize=16))


def read_excluded(lists: list[str], root: str | Path, delimiter: str | None) -> list[Excluded]:
    """Every image of the exclude lists (paths relative to `root`), hashed both ways; an
    unreadable list, line or image is an error naming the file and line."""
    out: list[Excluded] = []
    for list_path in lists:
        samples = read_list(list_path, None, delimiter)

        def one(sample: Sample, list_path: str = list_path) -> Excluded:
            data = read_image_bytes(root, sample, list_path)
            gray = _decode(data, list_path, sample)
            return Excluded(
                list_path,
                sample,
                content_key(data),
                crop_variants(gray),
                fingerprint(gray)[1],
                (gray.shape[0], gray.shape[1]),
            )

        out += _threaded(one, samples)
    return out


def _decode(data: bytes, list_path: str | Path, sample: Sample) -> np.ndarray:
    try:
        return decode_gray(data)
    except DataError as exc:
        raise DataError(f"{list_path}:{sample.line}: {sample.path}: {exc}") from None


def pool_hashes(
    image_root: str | Path, samples: list[Sample], list_path: str | Path
) -> tuple[np.ndarray, np.ndarray, Counter]:
    """(pHash, coarse thumbnail) of every pool image, and how many pool images have each size
    (h, w): one read and decode each, in threads."""

    def one(sample: Sample) -> tuple[int, np.ndarray, tuple[int, int]]:
        gray = _decode(read_image_bytes(image_root, sample, list_path), list_path, sample)
        return (*fingerprint(gray), (gray.shape[0], gray.shape[1]))

    prints = _threaded(one, samples)
    sizes = Counter(p[2] for p in prints)
    return (
        np.array([p[0] for p in prints], dtype=np.uint64),
        np.stack([p[1] for p in prints]),
        sizes,
    )


def with_resampled_variants(
    excluded: list[Excluded], pool_sizes: Counter, read_gray: Callable[[int], np.ndarray]
) -> list[Excluded]:
    """`excluded`, each small image's variants extended with its resizes to the pool's sizes
    (near_duplicates.resample_sizes), decoding it again (`read_gray`: by position)."""

    def one(position: int) -> Excluded:
        image = excluded[position]
        sizes = resample_sizes(image.shape, pool_sizes)
        if not sizes:
            return image
        extra = resampled_variants(read_gray(position), sizes)
        return replace(image, variants=sorted(set(image.variants) | set(extra)))

    return _threaded(one, list(range(len(excluded))))


def find_duplicates(
    pool: list[Sample],
    keys: list[bytes],
    hashes: np.ndarray,
    coarse: np.ndarray,
    excluded: list[Excluded],
    read_pool: Callable[[int], np.ndarray],
    read_excluded_gray: Callable[[int], np.ndarray],
) -> dict[int, Duplicate]:
    """Pool position -> its closest excluded image: exact by content key, else near
    (`hashes`, `coarse`: the pool's fingerprints; the readers decode a pool or excluded image
    by position again, called only for candidates that pass the coarse gate)."""
    found: dict[int, Duplicate] = {}

    def record(position: int, kind: str, distance: int, score: float, image: Excluded) -> None:
        found[position] = Duplicate(
            pool[position].path,
            pool[position].line,
            kind,
            distance,
            round(score, 4),
            image.list_path,
            image.sample.line,
            image.sample.path,
        )

    by_key = {image.key: image for image in excluded}
    for pos, key in enumerate(keys):
        if key in by_key:
            record(pos, "exact", 0, 0.0, by_key[key])
    owner = np.repeat(np.arange(len(excluded)), [len(e.variants) for e in excluded])
    queries = np.array([h for e in excluded for h in e.variants], dtype=np.uint64)
    query, near, distance = HashIndex(hashes).search(queries, NEAR_DISTANCE)
    # One candidate per (pool, excluded) pair, at its least distance; not already exact.
    order = np.lexsort((owner[query], near, distance))
    pairs = np.c_[near, owner[query], distance][order]
    pairs = pairs[np.unique(pairs[:, :2], axis=0, return_index=True)[1]]
    pairs = pairs[[int(p) not in found for p in pairs[:, 0]]]
    gate = np.array([e.coarse for e in excluded])
    if len(pairs):
        pairs = pairs[coarse_mad(coarse[pairs[:, 0]], gate[pairs[:, 1]]) <= GATE_MAD]
    firsts = np.unique(pairs[:, 0], return_index=True)[1]  # pairs are sorted by pool

    def check(mine: np.ndarray) -> list[tuple[float, int, int]]:
        """(score, distance, excluded) of one pool image's verified candidates."""
        gray = read_pool(int(mine[0, 0]))
        scores = [(verify(read_excluded_gray(int(e)), gray), int(d), int(e)) for _, e, d in mine]
        return [s for s in scores if s[0] <= MATCH_SCORE]

    groups = np.split(pairs, firsts[1:]) if len(pairs) else []
    for mine, matches in zip(groups, _threaded(check, groups), strict=True):
        if matches:  # the best score, then the least distance, then exclude-list order
            score, dist, image = min(matches)
            record(int(mine[0, 0]), "near", dist, score, excluded[image])
    return found


def top_k(pred: np.ndarray, score: np.ndarray, allowed: np.ndarray, k: int) -> list[int]:
    """Positions kept: per class, the k highest scores among the allowed images predicted
    as it (ties by position); grouped by class, best first."""
    kept: list[int] = []
    for c in np.unique(pred[allowed]):
        members = np.flatnonzero(allowed & (pred == c))
        order = np.lexsort((members, -score[members]))
        kept += members[order[:k]].tolist()
    return kept


def select(
    cfg: dict,
    per_class: int,
    exclude: list[str],
    out: str | Path,
    exclude_root: str | Path | None = None,
    labels: str = "zero",
    overwrite: bool = False,
) -> Selection:
    """Choose the pool's top `per_class` images per predicted class, none of them a copy
    of an --exclude image, and write the list and its summary (see the module docstring)."""
    out = Path(out)
    summary_md, summary_json, histogram = output_paths(out)
    if not overwrite:
        for path in (out, summary_md, summary_json, histogram):
            if path.exists():
                raise DataError(f"{path}: already exists; pass --overwrite to replace it")
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")
    cached = open_cached(cfg)
    spec = cached.spec
    excluded = read_excluded(exclude, exclude_root or spec.image_root, spec.delimiter)
    samples, keys, preds, scores = [], [], [], []
    for sample, key, _params, probs in cached:
        mean = probs.mean(axis=0)
        samples.append(sample)
        keys.append(key)
        preds.append(int(mean.argmax()))
        scores.append(float(mean.max()))
    if not samples:
        raise DataError(f"{spec.cls_label_path}: none of its images is in the cache")
    duplicates: dict[int, Duplicate] = {}
    if excluded:  # pHashing costs a read and decode of every pool image
        hashes, coarse, sizes = pool_hashes(spec.image_root, samples, spec.cls_label_path)
        root = exclude_root or spec.image_root

        def read_pool(position: int) -> np.ndarray:
            sample = samples[position]
            return decode_gray(read_image_bytes(spec.image_root, sample, spec.cls_label_path))

        def read_excluded_gray(position: int) -> np.ndarray:
            image = excluded[position]
            return decode_gray(read_image_bytes(root, image.sample, image.list_path))

        searched = with_resampled_variants(excluded, sizes, read_excluded_gray)
        duplicates = find_duplicates(
            samples, keys, hashes, coarse, searched, read_pool, read_excluded_gray
        )
    pred, score = np.array(preds), np.array(scores)
    allowed = np.ones(len(samples), dtype=bool)
    allowed[list(duplicates)] = False
    kept = top_k(pred, score, allowed, per_class)

    classes = cached.ensemble.num_classes
    write_text_atomic(
        out, "".join(_line(samples[i].path, pred[i], labels, spec.delimiter) for i in kept)
    )

    counts = np.bincount(pred[kept], minlength=classes)
    available = np.bincount(pred[allowed], minlength=classes)
    predicted = np.bincount(pred, minlength=classes)
    lowest = np.full(classes, np.inf)
    np.minimum.at(lowest, pred[kept], score[kept])
    short = [c for c in range(classes) if counts[c] < per_class]
    per_class_rows = [
        {
            "class": c,
            "predicted": int(predicted[c]),
            "after_exclusion": int(available[c]),
            "selected": int(counts[c]),
            "lowest_selected_score": round(float(lowest[c]), 6) if counts[c] else None,
        }
        for c in range(classes)
    ]
    dupes = sorted(duplicates.values(), key=lambda d: (d.kind != "exact", d.distance, d.pool_line))
    summary = {
        "targets": cached.describe,
        "pool_list": spec.cls_label_path,
        "image_root": str(spec.image_root),
        "prediction": "argmax of the mean over stored views of the teacher's probabilities",
        "per_class": per_class,
        "labels_written": labels,
        "listed": len(cached.samples),
        "in_cache": len(samples),
        "selected": len(kept),
        "classes": per_class_rows,
        "short_of_k": short,
        "exclude_lists": [
            {
                "path": path,
                "root": str(exclude_root or spec.image_root),
                "images": sum(e.list_path == path for e in excluded),
            }
            for path in exclude
        ],
        "near_distance": NEAR_DISTANCE,
        "gate_mad": GATE_MAD,
        "match_score": MATCH_SCORE,
        "duplicates": [asdict(d) for d in dupes],
    }
    atomic_write(
        histogram,
        lambda tmp: histogram_png(
            score[kept],
            tmp,
            "teacher score (mean probability of the predicted class)",
            "selected images",
            marker=(1.0 / classes, "uniform 1/C"),
        ),
    )
    write_text_atomic(summary_json, json.dumps(summary, indent=1) + "\n")
    write_text_atomic(summary_md, _markdown(summary, out, histogram))
    return Selection(
        out,
        summary_md,
        summary_json,
        histogram,
        len(kept),
        len(cached.samples),
        len(samples),
        short,
        dupes,
    )


def _line(path: str, pred: int, labels: str, delimiter: str | None) -> str:
    """One list line: the path, then the label column `labels` asks for (see LABELS)."""
    if labels == "none":
        return f"{path}\n"
    return f"{path}{delimiter or ' '}{0 if labels == 'zero' else pred}\n"


def _markdown(summary: dict, out: Path, histogram: Path) -> str:
    s = summary
    lines = [
        "# Selected unlabeled images",
        "",
        f"Pool `{s['pool_list']}` (`{s['image_root']}`): {s['listed']} images listed, "
        f"{s['in_cache']} with teacher outputs in {s['targets']}.",
        f"Prediction: {s['prediction']}. Each class keeps its {s['per_class']} highest scores.",
        f"Wrote {s['selected']} images to `{out}` (label column: {s['labels_written']}).",
        "",
        "| class | predicted | after exclusion | selected | lowest selected score |",
        "|---|---|---|---|---|",
    ]
    for row in s["classes"]:
        low = (
            "n/a" if row["lowest_selected_score"] is None else f"{row['lowest_selected_score']:.4f}"
        )
        lines.append(
            f"| {row['class']} | {row['predicted']} | {row['after_exclusion']} | "
            f"{row['selected']} | {low} |"
        )
    short = ", ".join(str(c) for c in s["short_of_k"]) or "none"
    lines += [
        "",
        f"Classes short of {s['per_class']}: {short}.",
        "",
        f"![score histogram]({histogram.name})",
        "",
        "## Excluded duplicates",
        "",
    ]
    for e in s["exclude_lists"]:
        lines.append(f"- `{e['path']}`: {e['images']} images (root `{e['root']}`)")
    lines += [
        "",
        f"{len(s['duplicates'])} pool images refused: exact (same content key) or near (pHash "
        f"within {s['near_distance']} bits of a 5% crop variant, then the pixels compared: "
        f"score = worst 4x4-block mean difference / 255 once aligned, at most "
        f"{s['match_score']}).",
        "",
    ]
    if s["duplicates"]:
        lines += [
            "| pool image (line) | kind | distance | score | excluded image (list:line) |",
            "|---|---|---|---|---|",
        ]
        for d in s["duplicates"]:
            lines.append(
                f"| `{d['pool_path']}` ({d['pool_line']}) | {d['kind']} | {d['distance']} | "
                f"{d['score']:.4f} | "
                f"`{d['excluded_path']}` ({d['excluded_list']}:{d['excluded_line']}) |"
            )
    return "\n".join(lines) + "\n"
