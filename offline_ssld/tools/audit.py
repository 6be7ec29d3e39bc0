"""`inspect` and `verify`: what a cache holds, and whether it is whole and still true.

Both work from the cache directory alone. `verify --teacher-check` also re-runs the teacher,
and takes what it runs from the user's config (`-c`), never from the manifest: the teacher
weights the config names (hashed and compared with the cache's teacher fingerprint), its
transforms (compared with the cache's) and its image_root, under which the paths a shard
stores are read only through the list reader's checks (`data/lists.py`).
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
)
from offline_ssld.cache.format import cache_file, file_checksum, load_manifest, shard_name
from offline_ssld.cache.reader import CacheReader
from offline_ssld.errors import CacheError, ConfigError


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


def verify_cache(
    cache_dir: str | Path, teacher_check: int = 0, seed: int = 0, cfg: dict | None = None
) -> VerifyReport:
    """Check the manifest (its checksums and stored specs) and every shard (presence,
    checksum, row count, columns); with `teacher_check`, re-run the teacher of `cfg`."""
    cache_dir = Path(cache_dir)
    if teacher_check and cfg is None:
        raise ConfigError(
            "verify --teacher-check: needs the teacher's config (-c FILE): the teacher weights, "
            "transforms and image_root are taken from it, never from the cache"
        )
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
    reader = CacheReader(cache_dir, require_complete=False)  # re-derives the stored specs
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
        try:
            checksum = file_checksum(cache_file(cache_dir, info.name), info.bytes)
        except CacheError as exc:
            report.problems.append(f"{info.name}: {exc}")
            continue
        if checksum != info.checksum:
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
        assert cfg is not None  # checked above
        _teacher_check(reader, teacher_check, seed, report, cfg)
    return report


def _teacher_check(
    reader: CacheReader, count: int, seed: int, report: VerifyReport, cfg: dict
) -> None:
    """Re-run the config's teacher on `count` random stored views, replaying their
    parameters, on images read under the config's image_root."""
    import paddle

    from offline_ssld.config import specs
    from offline_ssld.config.offline import offline_spec
    from offline_ssld.data.lists import Sample, read_image_bytes
    from offline_ssld.data.transforms import Pipeline, build_ops
    from offline_ssld.io import content_key
    from offline_ssld.models import build_model, load_weights

    m = reader.manifest
    if m.teacher.get("ensemble"):
        report.problems.append("teacher check: a merged ensemble cache has no single teacher")
        return
    teacher = specs.teacher_spec(cfg)
    data = specs.data_spec(cfg, "Train")
    pipeline = Pipeline(build_ops(data.transform_ops, f"{data.key}.transform_ops"))
    if teacher.pretrained is None or not Path(teacher.pretrained).is_file():
        raise ConfigError(
            "Offline.teacher_weights: verify --teacher-check needs the teacher weights file the "
            f"cache was dumped with (got {teacher.pretrained!r})"
        )
    diff = first_difference(m, expected_identity(teacher, pipeline))
    if diff is not None:
        report.problems.append(f"teacher check: the cache holds {diff}")
        return
    model = build_model(teacher)
    load_weights(
        model,
        teacher.pretrained,
        "Offline.teacher_weights",
        offline_spec(cfg).allow_pickle_weights,
    )
    model.eval()
    rng = np.random.default_rng(seed)
    total = m.rows
    picks = sorted(rng.choice(total, size=min(count, total), replace=False).tolist())
    starts = np.cumsum([0] + [s.rows for s in m.shards])
    worst = 0.0
    with paddle.no_grad():
        for flat in picks:
            number = int(np.searchsorted(starts, flat, side="right") - 1)
            row = flat - int(starts[number])
            cols = reader.load_shard(number)
            shard = reader.cache_dir / m.shards[number].name
            sample = Sample(str(cols["path"][row]), -1, row)
            try:  # the list reader's checks: inside image_root, a regular file, capped
                data_bytes = read_image_bytes(data.image_root, sample, shard, CacheError)
            except CacheError as exc:
                report.problems.append(f"teacher check: {exc}")
                return
            if content_key(data_bytes) != cols["key"][row].tobytes():
                report.problems.append(f"{shard}:{row}: {sample.path}: image changed since dump")
                return
            x = pipeline.replay(data_bytes, cols["params"][row])
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
