"""`inspect` and `verify`: what a cache holds, and whether it is whole and still true.

Both work from the cache directory alone: the manifest records where the images, transforms
and teacher weights were, so `verify --teacher-check` can re-run the teacher without a config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from offline_ssld.cache.fingerprint import (
    dataset_fingerprint,
    expected_identity,
    first_difference,
    order_fingerprint,
    teacher_fingerprint,
)
from offline_ssld.cache.format import file_checksum, load_manifest, shard_name
from offline_ssld.cache.reader import CacheReader
from offline_ssld.errors import CacheError


def inspect_cache(cache_dir: str | Path) -> dict:
    """Summary numbers of a cache, plus one row per shard."""
    reader = CacheReader(cache_dir, require_complete=False)
    m = reader.manifest
    correct = labeled = 0
    entropy_sum = 0.0
    shards = []
    for number, info in enumerate(m.shards):
        cols = reader.load_shard(number)
        probs = reader.codec.decode({c.name: cols[c.name] for c in reader.codec.columns()})
        labels = cols["label"][:, 0]
        mask = labels >= 0
        correct += int((probs.argmax(axis=1)[mask] == labels[mask]).sum())
        labeled += int(mask.sum())
        entropy_sum += float(-(probs * np.log(np.clip(probs, 1e-12, None))).sum())
        shards.append(
            {
                "name": info.name,
                "rows": info.rows,
                "images": info.images,
                "bytes": info.bytes,
                "checksum": info.checksum[:16],
            }
        )
    rows = m.rows
    total_bytes = sum(s.bytes for s in m.shards)
    return {
        "cache_dir": str(cache_dir),
        "complete": m.complete,
        "backend": m.backend,
        "images": m.num_images,
        "rows": rows,
        "views": m.views,
        "classes": m.num_classes,
        "codec": m.codec,
        "payload_bytes_per_row": reader.codec.bytes_per_row(),
        "file_bytes_per_row": round(total_bytes / rows, 1) if rows else 0,
        "total_bytes": total_bytes,
        "teacher": m.teacher,
        "teacher_top1": round(correct / labeled, 4) if labeled else None,
        "labeled_rows": labeled,
        "mean_entropy": round(entropy_sum / rows, 4) if rows else None,
        "skipped": len(m.skipped),
        "shards": shards,
    }


@dataclass
class VerifyReport:
    problems: list[str] = field(default_factory=list)
    shards_ok: int = 0
    teacher_checked: int = 0
    teacher_max_diff: float | None = None
    tolerance: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_cache(cache_dir: str | Path, teacher_check: int = 0, seed: int = 0) -> VerifyReport:
    """Check every shard (presence, checksum, row count, columns) and optionally the teacher."""
    cache_dir = Path(cache_dir)
    report = VerifyReport()
    manifest = load_manifest(cache_dir)  # a damaged manifest raises, naming the field
    if not manifest.complete:
        report.problems.append(
            f"incomplete: {len(manifest.shards)} of {manifest.num_shards} shards written"
        )
    listed = {s.name for s in manifest.shards}
    suffix = shard_name(0, manifest.backend)[len("shard-00000") :]
    for path in sorted(cache_dir.glob(f"shard-*{suffix}")):  # not a loop over num_shards
        if path.name not in listed:
            report.problems.append(f"{path.name}: on disk but not in the manifest")
    if first_difference(manifest, {"fingerprints.teacher": teacher_fingerprint(manifest.teacher)}):
        report.problems.append("manifest: field 'teacher' does not match 'fingerprints.teacher'")
    reader = CacheReader(cache_dir, require_complete=False)
    keys: list[bytes] = []
    for number, info in enumerate(manifest.shards):
        path = cache_dir / info.name
        if not path.exists():
            report.problems.append(f"{info.name}: missing")
            continue
        size = path.stat().st_size
        if size != info.bytes:
            report.problems.append(
                f"{info.name}: size mismatch ({size} bytes, manifest field 'bytes' says "
                f"{info.bytes}): damaged or replaced"
            )
            continue
        if file_checksum(path) != info.checksum:
            report.problems.append(f"{info.name}: checksum mismatch (damaged or replaced)")
            continue
        try:
            columns = reader.load_shard(number, verify=False)
        except CacheError as exc:
            report.problems.append(f"{info.name}: {exc}")
            continue
        keys += [k.tobytes() for k in columns["key"][:: manifest.views]]
        report.shards_ok += 1
    if manifest.complete and report.ok:  # the fingerprints must describe the stored images
        stored = {
            "fingerprints.order": order_fingerprint(keys),
            "fingerprints.dataset": dataset_fingerprint(keys),
        }
        for name, value in stored.items():
            if first_difference(manifest, {name: value}):
                report.problems.append(f"manifest: field '{name}' does not match the shards")
    if teacher_check and report.ok:
        _teacher_check(reader, teacher_check, seed, report)
    return report


def _teacher_check(reader: CacheReader, count: int, seed: int, report: VerifyReport) -> None:
    """Re-run the teacher on `count` random stored views, replaying their parameters."""
    import paddle

    from offline_ssld.config.specs import ModelSpec
    from offline_ssld.data.lists import content_key
    from offline_ssld.data.transforms import Pipeline, build_ops
    from offline_ssld.models import build_model, load_weights

    m = reader.manifest
    src = m.source
    pipeline = Pipeline(build_ops(src["transform_ops"], "manifest.source.transform_ops"))
    args = tuple(
        sorted(
            (k, tuple(v) if isinstance(v, list) else v)
            for k, v in m.teacher.get("args", {}).items()
        )
    )
    spec = ModelSpec(
        m.teacher["name"], m.teacher["class_num"], src["teacher_weights"], "teacher", args
    )
    diff = first_difference(m, expected_identity(spec, pipeline))
    if diff is not None and diff.field == "fingerprints.transforms":
        report.problems.append("transforms: this offline-ssld replays views differently")
        return
    if diff is not None:
        report.problems.append(f"teacher: weights file {spec.pretrained} changed since the dump")
        return
    model = build_model(spec)
    load_weights(model, str(spec.pretrained), "manifest.source.teacher_weights", allow_pickle=False)
    model.eval()
    rng = np.random.default_rng(seed)
    total = m.rows
    picks = sorted(rng.choice(total, size=min(count, total), replace=False).tolist())
    starts = np.cumsum([0] + [s.rows for s in m.shards])
    worst = 0.0
    root = Path(src["image_root"])
    with paddle.no_grad():
        for flat in picks:
            number = int(np.searchsorted(starts, flat, side="right") - 1)
            row = flat - int(starts[number])
            cols = reader.load_shard(number)
            path = root / str(cols["path"][row])
            data = path.read_bytes()
            if content_key(data) != cols["key"][row].tobytes():
                report.problems.append(f"{path}: image changed since the dump")
                return
            x = pipeline.replay(data, cols["params"][row])
            logits = model(paddle.to_tensor(x[None])).astype("float32").numpy()
            payload = {c.name: cols[c.name][row : row + 1] for c in reader.codec.columns()}
            worst = max(worst, float(reader.codec.compare(payload, logits)))
    report.teacher_checked = len(picks)
    report.teacher_max_diff = worst
    report.tolerance = reader.codec.tolerance()
    if worst > report.tolerance:
        report.problems.append(
            f"teacher check: largest difference {worst:.4g} exceeds the {m.codec['name']} "
            f"codec's tolerance {report.tolerance:.4g}"
        )
