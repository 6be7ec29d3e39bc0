"""Stage 1, dump-teacher: run the teacher once over `views` augmented views of every image.

Order of work: everything that can be checked without the teacher (config, list, transforms,
weights, every image readable, with a known image header or a trial decode) is checked first,
so a bad input fails in seconds, not after an hour of inference. That pass probes each image
(lists.probe_images: its size, first 16 KiB and last 4 KiB, so it grows with the list, not
with the bytes); it decodes only files whose header it does not recognise, so the loader's
decode is the only one for PNG/JPEG/BMP/WebP. Only files whose probes are equal are hashed
before the teacher runs, to find identical images (one set of rows serves them all). Every
other content key is computed by the loader from the bytes it reads for the teacher, which
must have the probe the plan found (else the file changed: refused, naming it); `dataset`
and `order` are fingerprinted from the shards' key columns when the cache becomes whole.
The plan (which image is in which shard) is fixed by the list, so a resume is checked
against the list's fingerprint and the shards already committed. Batches never cross a
shard, so a resumed dump sees exactly the batches an uninterrupted one would.

A cache grows by parts (cache/format.py): a list that adds images to a whole cache dumps only
the images the cache lacks (found by the relative paths its rows store, like train-student's
list lookup), into new shards after the existing ones, under the same teacher,
transforms, codec, views and seed (any other is refused, naming the field). The extended
manifest is written first, listing the part and the old shards, so a killed extension is
resumed like any dump; images the list drops stay in the cache (--overwrite alone deletes).

Under `python -m paddle.distributed.launch` the work is split by shard: rank 0 opens the
cache (identity check, adoption of committed shards) and alone writes the manifest; every
rank takes missing[rank::world] of the sorted missing shards and commits them; at the end
rank 0 adopts the other ranks' shards and writes the final manifest. A killed rank is
resumed by running the same launch command: only missing shards are reassigned.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
import paddle
from tqdm import tqdm

from offline_ssld import distributed as dist
from offline_ssld.cache.codecs import Codec, build_codec
from offline_ssld.cache.fingerprint import (
    dataset_fingerprint,
    first_difference,
    list_fingerprint,
    manifest_field,
    order_fingerprint,
    teacher_fingerprint,
    teacher_identity,
    transforms_fingerprint,
)
from offline_ssld.cache.format import (
    MANIFEST,
    Manifest,
    load_manifest,
    narrowest_int,
    param_column,
    shard_name,
    split_path,
)
from offline_ssld.cache.reader import CacheReader, path_hash
from offline_ssld.cache.writer import BackgroundWriter, adopt_shards, fingerprint_keys, open_cache
from offline_ssld.config import loading, paddleclas, specs
from offline_ssld.config.offline import OfflineSpec
from offline_ssld.data.lists import Sample, probe_images, probe_key, read_image_bytes, read_list
from offline_ssld.data.loader import BatchLoader
from offline_ssld.data.samplers import ShardBatches
from offline_ssld.data.transforms import DecodeImage, Pipeline, build_ops
from offline_ssld.data.views import DumpDataset, ImageSource
from offline_ssld.errors import CacheError, ConfigError, DataError
from offline_ssld.io import content_key
from offline_ssld.models import build_model, load_teacher, load_weights, select_device


class KeysOnRead(Sequence[bytes]):
    """The content keys of a plan's images, read and hashed only when one is asked for: the
    dump itself never asks (its loader hashes the bytes it reads for the teacher); tools
    that build shards without a loader (tests, benchmarks) do."""

    def __init__(self, source: ImageSource, base: int = 0) -> None:
        self.source, self.base = source, base

    def __len__(self) -> int:
        return self.base + len(self.source.samples)

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not self.base <= index < len(self):
            raise IndexError(f"image {index} is not in this dump part")
        return content_key(self.source.read(index - self.base))


@dataclass
class DumpPlan:
    """What a dump will compute, fixed before the teacher runs. Image i of the cache (storage
    order) is `source.samples[i - base]` for i >= base; the first `base` are already in it
    (an extension). `probes[i - base]` is that image's `lists.probe_key`, which the loader
    checks the bytes it reads against; `keys[i]` is its content key."""

    source: ImageSource
    keys: Sequence[bytes]
    pipeline: Pipeline
    codec: Codec
    manifest: Manifest
    base: int = 0
    extends: Manifest | None = None  # the whole cache on disk that this plan adds a part to
    probes: list[bytes] = dataclasses.field(default_factory=list)
    # image base + i's duplicates in the list: (their paths, the content key they share)
    twins: dict[int, tuple[list[str], bytes]] = dataclasses.field(default_factory=dict)

    def path(self, image: int) -> str:
        """The relative path of image `image` of this part: what its shard's rows store."""
        return self.source.samples[image - self.base].path


def _precheck(pipeline: Pipeline) -> DecodeImage:
    first = pipeline.ops[0] if pipeline.ops else None
    if not isinstance(first, DecodeImage):
        raise ConfigError("DataLoader.Train.dataset.transform_ops.0: must be DecodeImage")
    return first


def plan_dump(cfg: dict) -> DumpPlan:
    """Validate every input and fix the manifest of the cache this config produces."""
    return _plan(cfg, paddleclas.check_supported(cfg))


def _plan(cfg: dict, offline: OfflineSpec) -> DumpPlan:
    teacher = specs.teacher_spec(cfg)
    data = specs.data_spec(cfg, "Train")
    pipeline = Pipeline(build_ops(data.transform_ops, f"{data.key}.transform_ops"))
    try:
        codec = build_codec(offline.codec, teacher.class_num, **dict(offline.codec_settings))
    except ValueError as exc:
        raise ConfigError(f"Offline.codec: {exc}") from None
    samples = read_list(data.cls_label_path, teacher.class_num, data.delimiter, data.multilabel)
    if teacher.pretrained is None:
        raise ConfigError(
            "Offline.teacher_weights: no teacher weights given (set Offline.teacher_weights or "
            "the Teacher entry's pretrained); a random teacher would teach nothing"
        )
    # Check the weights against the backbone before reading any image.
    load_weights(
        build_model(teacher),
        teacher.pretrained,
        "Offline.teacher_weights",
        offline.allow_pickle_weights,
    )
    decode = _precheck(pipeline)
    results = probe_images(
        data.image_root, samples, data.cls_label_path, decode.vouch, decode.precheck
    )
    skipped: list[dict] = []
    readable: list[tuple[Sample, bytes]] = []
    for sample, result in zip(samples, results, strict=True):
        if isinstance(result, DataError):
            if not offline.skip_bad:
                raise DataError(f"{result} (pass --skip-bad to record and skip bad images)")
            skipped.append({"path": sample.path, "line": sample.line, "reason": str(result)})
        else:
            readable.append((sample, result))
    source = ImageSource(data.image_root, data.cls_label_path, [])
    kept, probes, twins = _drop_duplicates(source, readable)
    source.samples = kept
    identity = teacher_identity(teacher, teacher.pretrained)
    manifest = Manifest(
        backend=offline.backend,
        views=offline.views,
        seed=offline.seed,
        num_classes=teacher.class_num,
        images_per_shard=max(1, offline.shard_size // offline.views),
        param_names=list(pipeline.param_names),
        param_ranges=[list(r) for r in pipeline.param_ranges],
        codec=codec.settings(),
        fingerprints={
            "teacher": teacher_fingerprint(identity),
            "transforms": transforms_fingerprint(pipeline),
            "dataset": dataset_fingerprint([]),  # no part is whole yet: see fingerprint_keys
            "order": order_fingerprint([]),
            "list": list_fingerprint(kept),
        },
        teacher=identity,
        num_images=len(kept),
        skipped=skipped,
        source={
            "image_root": str(Path(data.image_root).resolve()),
            "cls_label_path": str(Path(data.cls_label_path).resolve()),
            "transform_ops": data.transform_ops,
            "teacher_weights": str(Path(teacher.pretrained).resolve()),
        },
    )
    return DumpPlan(
        source, KeysOnRead(source), pipeline, codec, manifest, probes=probes, twins=twins
    )


def _drop_duplicates(
    source: ImageSource, readable: list[tuple[Sample, bytes]]
) -> tuple[list[Sample], list[bytes], dict[int, tuple[list[str], bytes]]]:
    """(samples, probes, twins): the first of each set of identical files, in list order
    (one set of teacher rows serves them all). Only files whose probes are equal (the same
    size, head and tail: rare but for copies) are read and hashed in full to decide."""
    by_probe: dict[bytes, list[int]] = {}
    for i, (_, probe) in enumerate(readable):
        by_probe.setdefault(probe, []).append(i)
    first_of: dict[int, int] = {}  # a duplicate's position -> its first copy's position
    shared: dict[int, bytes] = {}  # a first copy with duplicates -> their content key
    for group in by_probe.values():
        if len(group) < 2:
            continue
        keys: dict[bytes, int] = {}
        for i in group:
            sample = readable[i][0]
            data = read_image_bytes(source.image_root, sample, source.list_path)
            if probe_key(data) != readable[i][1]:
                raise DataError(
                    f"{source.list_path}:{sample.line}: {sample.path}: file changed while dumping"
                )
            key = content_key(data)
            if key in keys:
                first_of[i] = keys[key]
                shared[keys[key]] = key
            else:
                keys[key] = i
    kept: list[Sample] = []
    probes: list[bytes] = []
    number: dict[int, int] = {}
    twins: dict[int, tuple[list[str], bytes]] = {}
    for i, (sample, probe) in enumerate(readable):
        if i in first_of:
            twins[number[first_of[i]]][0].append(sample.path)
            continue
        number[i] = len(kept)
        if i in shared:
            twins[len(kept)] = ([], shared[i])
        kept.append(sample)
        probes.append(probe)
    return kept, probes, twins


# What an extension must share with the cache it extends: the rows of both parts are then
# the same function of (image, view), whichever dump wrote them.
EXTEND_FIELDS = (
    "fingerprints.teacher",
    "fingerprints.transforms",
    "codec",
    "views",
    "seed",
    "backend",
    "images_per_shard",
)


def plan_against_cache(plan: DumpPlan, cache_dir: Path, overwrite: bool) -> DumpPlan:
    """The dump `plan`'s list asks of the cache on disk: all of it (no cache, --overwrite, or
    the resume of an interrupted first dump, checked by open_cache), or the images its whole
    parts lack, as a new part (or the rest of that part, when an extension was killed).

    An image is held when the whole parts hold a row dumped from its relative path (read
    from the path columns, no image is read; train-student checks the bytes against the
    row's key when it reads them), or a row of the bytes of a duplicate of it in the list."""
    if overwrite or not (cache_dir / MANIFEST).exists():
        return plan
    old = load_manifest(cache_dir)
    expected = {f: manifest_field(plan.manifest, f) for f in EXTEND_FIELDS}
    diff = first_difference(old, expected)
    if diff is not None:
        raise CacheError(f"{cache_dir} holds a cache of {diff}; pass --overwrite to replace it")
    whole = len(old.parts) if old.complete else len(old.parts) - 1
    if whole == 0:
        return plan
    reader = CacheReader(cache_dir, require_complete=False)
    held = _HeldPaths(reader, old.shards_of_parts(whole))
    base = sum(old.parts[:whole])
    new: list[int] = []
    for i, sample in enumerate(plan.source.samples):
        twins, key = plan.twins.get(i, ([], b""))
        if held(sample.path) or (any(map(held, twins)) and reader.lookup(key) is not None):
            continue
        new.append(i)
    source = _with(plan.source, [plan.source.samples[i] for i in new])
    if old.complete and not new:  # every image is in the cache: nothing to do, nothing deleted
        return dataclasses.replace(
            plan, keys=KeysOnRead(source, base), base=base, manifest=old, source=source, probes=[]
        )
    root = plan.manifest.source["image_root"]
    if root != old.source["image_root"]:
        raise ConfigError(
            f"DataLoader.Train.dataset.image_root: {root} is not the cache's image_root "
            f"{old.source['image_root']} (manifest source.image_root); an extension's paths "
            "are relative to the same root"
        )
    listed = {s["path"] for s in old.skipped}
    manifest = dataclasses.replace(
        old,
        parts=[*old.parts[:whole], len(new)],
        num_images=base + len(new),
        fingerprints={**old.fingerprints, "list": list_fingerprint(source.samples)},
        source=plan.manifest.source,
        skipped=old.skipped + [s for s in plan.manifest.skipped if s["path"] not in listed],
        shards=[],
        complete=False,
    )
    if not old.complete and manifest.fingerprints["list"] != old.fingerprints.get("list"):
        raise CacheError(
            f"{cache_dir}: an extension by {old.parts[-1]} images is unfinished and this list "
            "asks for another; finish it with the list that started it, or pass --overwrite "
            "to replace the cache"
        )
    return dataclasses.replace(
        plan,
        keys=KeysOnRead(source, base),
        base=base,
        manifest=manifest,
        source=source,
        extends=old if old.complete else None,
        probes=[plan.probes[i] for i in new],
        twins={},
    )


class _HeldPaths:
    """Whether the first `shards` shards of a cache hold a row dumped from a relative path:
    path hashes (reader.path_index) narrow it down, the stored path decides."""

    def __init__(self, reader: CacheReader, shards: int) -> None:
        self.reader = reader
        self.hashes, self.images = reader.path_index(shards)

    def __call__(self, path: str) -> bool:
        wanted = np.uint64(path_hash(path))
        position = int(self.hashes.searchsorted(wanted))
        while position < len(self.hashes) and self.hashes[position] == wanted:
            if self.reader.path_at(*self.reader.locate(int(self.images[position]))) == path:
                return True
            position += 1
        return False


def _with(source: ImageSource, samples: list[Sample]) -> ImageSource:
    return ImageSource(source.image_root, source.list_path, samples)


def shard_columns(
    plan: DumpPlan,
    shard: int,
    items: np.ndarray,
    params: np.ndarray,
    logits: np.ndarray,
    keys: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Columns of one shard, one row per image (format.py); the codec's randomness (sampled)
    is seeded by seed and shard. `items` are the shard's views in image-major order, `keys`
    their content keys (items x 16, as the loader computed them; default `plan.keys`)."""
    manifest = plan.manifest
    views = manifest.views
    images = items[::views] // views
    if not np.array_equal(items, np.arange(items[0], items[0] + len(items))) or items[0] % views:
        raise AssertionError("a shard's views arrive whole and in order")  # ShardBatches does
    rng = np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([manifest.seed, 0xC0DEC, shard]))
    )
    samples = [plan.source.samples[i - plan.base] for i in images]
    dirs, names = zip(*(split_path(s.path) for s in samples), strict=True)
    if keys is None:
        keys = np.stack([np.frombuffer(plan.keys[i], dtype=np.uint8) for i in images])
    else:
        keys = keys[::views]
    columns = {
        "key": keys,
        "path_dir": np.array(dirs, dtype=object),
        "path_name": np.array(names, dtype=object),
    }
    labels = [s.label for s in samples]
    columns["label"] = np.array(labels, narrowest_int(-1, manifest.num_classes - 1))[:, None]
    params = params.reshape(len(images), views, -1)
    for p, (name, (lo, hi)) in enumerate(
        zip(manifest.param_names, manifest.param_ranges, strict=True)
    ):
        values = params[:, :, p]
        if values.size and (values.min() < lo or values.max() > hi):
            raise AssertionError(f"{name} drew a value outside its declared range [{lo}, {hi}]")
        columns[param_column(name)] = values.astype(narrowest_int(lo, hi))
    for name, values in plan.codec.encode(logits, rng).items():
        columns[name] = values.reshape(len(images), -1)
    return columns


@dataclass
class DumpResult:
    manifest: Manifest
    shards_written: int
    images_per_second: float
    seconds: float


def _follow(cache_dir: Path, manifest: Manifest) -> Manifest:
    """A non-zero rank's view of the cache that rank 0 opened (and only rank 0 writes)."""
    old = load_manifest(cache_dir)
    diff = first_difference(old, manifest)
    if diff:
        raise CacheError(f"{cache_dir} holds a cache of {diff}; pass --overwrite to replace it")
    manifest.fingerprints = old.fingerprints
    manifest.shards = old.shards
    manifest.skipped = old.skipped if old.skipped else manifest.skipped
    manifest.complete = old.complete
    manifest.dump_id = old.dump_id  # the shards this rank writes carry rank 0's dump id
    return manifest


def run_dump(cfg: dict, overwrite: bool = False, progress: bool = True) -> DumpResult:
    """Dump the missing shards; under the launcher, this rank's share of them.

    `shards_written` and `images_per_second` (views/s) count the shards of all ranks."""
    device = select_device(loading.get(cfg, "Global.device", "gpu"))
    dist.init()
    offline = paddleclas.check_supported(cfg)
    cache_dir = Path(offline.single_cache("dump-teacher"))
    plan = plan_against_cache(_plan(cfg, offline), cache_dir, overwrite)
    dist.barrier()  # every rank planned from the cache as it was
    if dist.is_main():
        manifest = open_cache(cache_dir, plan.manifest, overwrite, None, plan.extends, plan.path)
    dist.barrier()
    if not dist.is_main():
        manifest = _follow(cache_dir, plan.manifest)
    done = {s.name for s in manifest.shards}
    views = manifest.views
    missing = [j for j in range(manifest.num_shards) if shard_name(j, manifest.backend) not in done]
    if not missing:  # every rank reads the same manifest, so all return here together
        return DumpResult(manifest, 0, 0.0, 0.0)
    spans = {j: manifest.shard_span(j) for j in missing}
    total = sum((stop - first) * views for first, stop in spans.values())
    todo = missing[dist.rank() :: dist.world_size()]
    shard_items = [list(range(spans[j][0] * views, spans[j][1] * views)) for j in todo]
    teacher = load_teacher(cfg) if todo else None
    writer = BackgroundWriter(cache_dir, manifest, update_manifest=dist.is_main())
    start = time.perf_counter()
    try:
        if todo:
            _dump_shards(cfg, offline, device, plan, teacher, todo, shard_items, writer, progress)
    finally:
        manifest = writer.close()
    if dist.is_distributed():
        dist.barrier()  # every rank's shards are committed
        if dist.is_main():
            if adopt_shards(cache_dir, manifest, paths=plan.path) and manifest.complete:
                fingerprint_keys(cache_dir, manifest)
            manifest.save(cache_dir)
            if not manifest.complete:  # a shard of another rank failed its check
                raise CacheError(
                    f"{cache_dir}: {manifest.num_shards - len(manifest.shards)} shards are "
                    "missing after all ranks finished; run the same command to resume"
                )
        dist.barrier()  # the final manifest is written
        if not dist.is_main():
            manifest = _follow(cache_dir, manifest)
    seconds = time.perf_counter() - start
    return DumpResult(manifest, len(missing), total / seconds, seconds)


def _dump_shards(
    cfg: dict,
    offline: OfflineSpec,
    device: str,
    plan: DumpPlan,
    teacher: paddle.nn.Layer,
    todo: list[int],
    shard_items: list[list[int]],
    writer: BackgroundWriter,
    progress: bool,
) -> None:
    """Run the teacher over the items of shards `todo` and submit each shard when whole."""
    views = plan.manifest.views
    items = [i for chunk in shard_items for i in chunk]
    workers = offline.num_workers
    if workers is None:
        workers = specs.data_spec(cfg, "Train").num_workers
    dataset = DumpDataset(
        plan.source, plan.probes, plan.pipeline, plan.manifest.seed, views, items, plan.base
    )
    batches = ShardBatches(shard_items, offline.batch_size)
    loader = BatchLoader(dataset, batches, workers)
    pending: list[tuple[np.ndarray, ...]] = []
    shard_queue = list(zip(todo, shard_items, strict=True))
    where = f" {dist.rank()}/{dist.world_size()}" if dist.is_distributed() else ""
    bar = tqdm(
        total=len(items),
        unit="view",
        desc=f"dump-teacher{where}",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        with paddle.no_grad():
            for x, params, item, key in loader:
                with paddle.amp.auto_cast(enable=device == "gpu"):
                    logits = teacher(x)
                logits = logits.astype("float32").numpy()
                pending.append((item.numpy(), params.numpy(), logits, key.numpy()))
                bar.update(len(pending[-1][0]))
                shard, wanted = shard_queue[0]
                if sum(len(p[0]) for p in pending) == len(wanted):
                    got = [np.concatenate(c) for c in zip(*pending, strict=True)]
                    columns = shard_columns(plan, shard, *got)
                    writer.submit(shard, columns, len(wanted) // views)
                    pending.clear()
                    shard_queue.pop(0)
    finally:
        bar.close()
