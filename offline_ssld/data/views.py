"""Views: which augmented view of which image, and the datasets that produce them.

A view is fixed by (seed, content key, view index): its random parameters are drawn from a
generator seeded by exactly those, so dump-teacher can cut its work anywhere and resume, and
train-student never draws anything: it replays the parameters stored in the cache.

With a batch op (data/batchops.py) a view is mixed with a partner image's unmixed view of the
same index: dump-teacher draws the mix and computes the partner's view from the partner's own
generator, train-student replays both from the cache. The partner is read by the path the
cache stores for it, under the training config's image_root, so it need not be in the
training list (a subset of the cache), only in the cache.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import paddle

from offline_ssld.data.gpu_decode import select_decoder
from offline_ssld.data.lists import MAX_IMAGE_BYTES, Sample, probe_key, read_image_bytes
from offline_ssld.data.transforms import Pipeline, _BadParams
from offline_ssld.errors import CacheError, ConfigError, DataError
from offline_ssld.io import content_key, inside, read_regular

if TYPE_CHECKING:  # listed.py imports this module
    from offline_ssld.cache.reader import CacheReader
    from offline_ssld.data.listed import ListedImages


def view_rng(seed: int, key: bytes, view: int) -> np.random.Generator:
    words = np.frombuffer(key, dtype=np.uint32).tolist()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, view, *words])))


MIX_STREAM = 0x4D4958  # "MIX"


def mix_rng(seed: int, key: bytes, view: int) -> np.random.Generator:
    """The generator of a view's batch-op draws, apart from `view_rng` so that an image's
    unmixed view (its own, and the one it lends as a partner) is the same with or without
    batch ops."""
    words = np.frombuffer(key, dtype=np.uint32).tolist()
    sequence = np.random.SeedSequence([seed, view, *words, MIX_STREAM])
    return np.random.Generator(np.random.PCG64(sequence))


class ImageSource:
    """Reads list samples and checks their bytes against the content key they were hashed to.

    With `label_ratio` (PaddleClas MultiLabelDataset's option) each label is the attribute
    vector stacked with the list's mean of each attribute, which PaddleClas's weight_ratio
    losses read as (B, 2, C)."""

    def __init__(
        self,
        image_root: str | Path,
        list_path: str | Path,
        samples: list[Sample],
        label_ratio: bool = False,
    ):
        self.image_root = Path(image_root)
        self.list_path = Path(list_path)
        self.samples = samples
        self.ratio = (
            np.array([s.attributes for s in samples]).mean(0).astype(np.float32)
            if label_ratio
            else None
        )

    def label(self, index: int) -> np.int64 | np.ndarray:
        """The class (int64), or the attribute vector (float32, with the ratio if asked)."""
        sample = self.samples[index]
        if not sample.attributes:
            return np.int64(sample.label)
        attributes = np.array(sample.attributes, dtype=np.float32)
        return attributes if self.ratio is None else np.stack([attributes, self.ratio])

    def read(self, index: int) -> bytes:
        return read_image_bytes(self.image_root, self.samples[index], self.list_path)

    def where(self, index: int) -> str:
        sample = self.samples[index]
        return f"{self.list_path}:{sample.line}: {sample.path}"


class DumpDataset(paddle.io.Dataset):
    """Item (image, view) -> (teacher input, drawn params, item number, content key) for
    dump-teacher. The content key is computed here, from the bytes read for the teacher: the
    dump has no hashing pass of its own."""

    def __init__(
        self,
        source: ImageSource,
        probes: list[bytes],
        pipeline: Pipeline,
        seed: int,
        views: int,
        items: list[int],
        base: int = 0,
    ):
        """`source` lists the images from `base` on (an extension dumps only those) and
        `probes[i]` is the `lists.probe_key` its planning found for image base + i: bytes
        read with another probe have changed since, and are refused, naming the file."""
        select_decoder()  # the CPU path; a one-line notice if the GPU was asked for
        self.source, self.probes, self.pipeline = source, probes, pipeline
        self.seed, self.views, self.items, self.base = seed, views, items, base
        self._decoded: tuple[int, bytes, bytes, dict] | None = None  # (image, data, key, memo)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int):
        item = self.items[position]
        image, view = divmod(item, self.views)
        if self._decoded is None or self._decoded[0] != image:
            # Items are image-major, so a worker's batch holds consecutive views of an image:
            # it is read and hashed once for all of them, and decoded once per DCT scale.
            line = image - self.base
            data = self._read(line)
            self._decoded = (image, data, content_key(data), {})
        _, data, key, memo = self._decoded
        try:
            x, params = self.pipeline.draw(data, view_rng(self.seed, key, view), memo)
        except DataError as exc:
            raise DataError(f"{self.source.where(image - self.base)}: {exc}") from None
        mix = self.pipeline.mix
        if mix is not None:
            # Partners come from this dump part: their bytes are in the list being dumped.
            partners = range(self.base, self.base + len(self.probes))
            drawn = mix.draw_mix(x.shape, partners, mix_rng(self.seed, key, view))
            packed = mix.pack(drawn)
            partner = self._unmixed(drawn.partner, view) if drawn.kind else None
            try:
                x = mix.apply((x, partner), packed)
            except _BadParams as exc:
                where = self.source.where(image - self.base)
                raise DataError(
                    f"{where}: {mix.key} with {self.source.where(drawn.partner - self.base)}: "
                    f"{exc} (batch ops need views of one shape)"
                ) from None
            params = np.concatenate([params, np.array(packed, np.int32)])
        return x, params, np.int64(item), np.frombuffer(key, np.uint8)

    def _read(self, line: int) -> bytes:
        data = self.source.read(line)  # its errors name the file already
        if probe_key(data) != self.probes[line]:
            raise DataError(f"{self.source.where(line)}: file changed while dumping")
        return data

    def _unmixed(self, image: int, view: int) -> np.ndarray:
        """Image `image`'s unmixed view `view`, as its own dump draws it (the same generator)."""
        line = image - self.base
        data = self._read(line)
        try:
            return self.pipeline.draw(data, view_rng(self.seed, content_key(data), view))[0]
        except DataError as exc:
            raise DataError(f"{self.source.where(line)}: {exc}") from None


class ReplayDataset(paddle.io.Dataset):
    """train-student offline: image -> (the stored view, replayed; teacher target; label).

    `listed` (data/listed.py) holds each list image's cache row and content key, found
    before the first batch. The image bytes are read anyway, so they are hashed here and an
    image whose key is not the cached one (changed since the dump) stops training with its
    name. With `timed`, each item also carries the seconds spent in each of `STAGES` (for
    `train-student --data-only`).
    """

    STAGES = ("read image", "content key", "row lookup", "read view", "decode+replay", "target")

    def __init__(
        self,
        source: ImageSource,
        pipeline: Pipeline,
        reader: CacheReader,
        listed: ListedImages,
        timed: bool = False,
    ):
        select_decoder()
        self.source, self.pipeline, self.reader = source, pipeline, reader
        self.listed = listed
        self.views = np.zeros(len(source.samples), dtype=np.int64)
        self.timed = timed

    def set_epoch_views(self, views: np.ndarray) -> None:
        self.views = views

    def __len__(self) -> int:
        return len(self.source.samples)

    def __getitem__(self, index: int):
        return tuple(field[0] for field in self.get_batch([index]))

    def get_batch(self, indices: list[int]) -> tuple[np.ndarray, ...]:
        """The collated batch of `indices`; the targets are decoded for the whole batch at
        once (BatchLoader calls this instead of collating single items)."""
        xs, payloads, labels, timings = [], [], [], []
        for index in indices:
            clock = [time.perf_counter()]
            data = self.source.read(index)
            clock.append(time.perf_counter())
            self.listed.check(index, data)
            clock.append(time.perf_counter())
            number, image = self.listed.rows[0, index]
            clock.append(time.perf_counter())
            view = int(self.views[index])
            params, payload = self.reader.read_view(int(number), int(image), view)
            clock.append(time.perf_counter())
            xs.append(self._replay(index, data, params, view))
            clock.append(time.perf_counter())
            payloads.append(payload)
            labels.append(self.source.label(index))
            timings.append(np.diff(clock))
        start = time.perf_counter()
        target = self.reader.decode(payloads, target=True)
        decode = (time.perf_counter() - start) / max(len(indices), 1)
        fields = (np.stack(xs), target, np.stack(labels))
        if not self.timed:
            return fields
        return (*fields, np.array([[*t, decode] for t in timings]))

    def _replay(self, index: int, data: bytes, params: np.ndarray, view: int) -> np.ndarray:
        """The stored view, mixed again with its partner's when the pipeline has a batch op."""
        mix = self.pipeline.mix
        if mix is None:
            return self.pipeline.replay(data, params)
        own, packed = self.pipeline.split(params)
        x = self.pipeline.replay_view(data, own)
        try:
            drawn = mix.unpack(packed)
            partner = self._partner(drawn.partner, view, index) if drawn.kind else None
            return mix.apply((x, partner), packed)
        except _BadParams as exc:
            raise CacheError(
                f"{self.reader.cache_dir}: {self.source.where(index)} view {view}: stored "
                f"{mix.name} params do not fit: {exc}"
            ) from None

    def _partner(self, image: int, view: int, index: int) -> np.ndarray:
        """Cache image `image`'s unmixed view `view`, read by the path the cache stores under
        this config's image_root and checked against its stored key."""
        reader, where = self.reader, f"{self.source.where(index)} view {view}"
        if not 0 <= image < reader.stored_images:
            raise CacheError(
                f"{reader.cache_dir}: {where} mixes with cache image {image}, which the cache "
                f"does not hold ({reader.stored_images} images)"
            )
        number, local = reader.locate(image)
        path = reader.path_at(number, local)
        what = f"partner {path} of {where}"
        data = read_regular(
            inside(self.source.image_root, path, what), what, MAX_IMAGE_BYTES, DataError
        )
        if content_key(data) != reader.key_at(number, local):
            raise DataError(f"{what}: the file changed since the dump (its content key differs)")
        params, _ = reader.read_view(number, local, view)
        return self.pipeline.replay_view(data, self.pipeline.split(params)[0])


class AugmentDataset(paddle.io.Dataset):
    """Online and supervised training: a fresh view per image per epoch (seeded), and eval."""

    def __init__(self, source: ImageSource, pipeline: Pipeline, seed: int):
        if pipeline.mix is not None:
            raise ConfigError(
                f"{pipeline.mix.key}: batch ops are replayed from a cache only (train-student "
                "with Offline.cache); remove it for online or supervised training"
            )
        self.source, self.pipeline, self.seed = source, pipeline, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source.samples)

    def __getitem__(self, index: int):
        data = self.source.read(index)
        try:
            if self.pipeline.is_random:
                rng = np.random.Generator(
                    np.random.PCG64(np.random.SeedSequence([self.seed, self.epoch, index]))
                )
                x, _ = self.pipeline.draw(data, rng)
            else:
                x = self.pipeline.apply_fixed(data)
        except DataError as exc:
            raise DataError(f"{self.source.where(index)}: {exc}") from None
        return x, self.source.label(index)
