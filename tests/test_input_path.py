"""The fast input path: libjpeg-turbo decoding at a reduced DCT scale fused with the crop,
batches handed over in shared memory, and caches of the old pixel path refused."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from offline_ssld.data import decode, transforms
from offline_ssld.data.loader import BatchLoader
from offline_ssld.data.shm import Arena, Placed
from offline_ssld.data.transforms import DecodeImage, Pipeline, RandCropImage, build_ops
from offline_ssld.errors import CacheError, ConfigError
from tests.helpers import scene


def _jpeg(w: int, h: int, seed: int = 0, quality: int = 85) -> bytes:
    img = cv2.resize(scene(np.random.default_rng(seed)), (w, h), interpolation=cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def _ops(backend: str = "cv2", interpolation: str = "bilinear", size: int = 32) -> list:
    return [
        {"DecodeImage": {"to_rgb": True, "channel_first": False}},
        {"RandCropImage": {"size": size, "interpolation": interpolation, "backend": backend}},
        {"RandFlipImage": {"flip_code": 1}},
        {"NormalizeImage": {"order": ""}},
    ]


def test_jpeg_decodes_with_libjpeg_turbo_and_png_as_before():
    data = _jpeg(120, 90)
    got = DecodeImage("d").apply(data, ())
    assert np.array_equal(got, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    bgr = DecodeImage("d", to_rgb=False).apply(data, ())
    assert np.array_equal(bgr, got[..., ::-1])
    # PaddleClas's DecodeImage (cv2.imdecode): the OpenCV wheel's libjpeg-turbo, same pixels
    assert np.array_equal(bgr, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    ok, png = cv2.imencode(".png", scene(np.random.default_rng(1)))
    cv2_rgb = cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(DecodeImage("d").apply(png.tobytes(), ()), cv2_rgb)


def test_exif_rotated_jpeg_keeps_opencvs_rotation():
    """OpenCV applies an EXIF orientation; Pillow does not, so such a JPEG stays on OpenCV."""
    im = Image.fromarray(scene(np.random.default_rng(2), 40, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    data = buf.getvalue()
    assert decode.exif_orientation(data) == 6 and decode.jpeg_size(data) is None
    assert DecodeImage("d").apply(data, ()).shape == (60, 40, 3)  # rotated, as OpenCV gives


@pytest.mark.parametrize(
    ("backend", "interpolation"),
    [("cv2", "bilinear"), ("cv2", "random"), ("cv2", "area"), ("pil", "bicubic")],
)
def test_fused_views_replay_bit_for_bit_at_every_scale(backend, interpolation, monkeypatch):
    """draw (dump-teacher) and replay (train-student) give the same pixels, and large crops
    of a large image are decoded at a reduced scale (never for 'area', which cv2.warpAffine
    lacks)."""
    scales: list[int] = []
    real = decode.decode_rgb
    monkeypatch.setattr(
        decode, "decode_rgb", lambda data, size, s: scales.append(s) or real(data, size, s)
    )  # fmt: skip
    pipeline = Pipeline(build_ops(_ops(backend, interpolation), "ops"))
    data = _jpeg(640, 480)
    for view in range(12):
        x, params = pipeline.draw(data, np.random.default_rng(view))
        assert np.array_equal(pipeline.replay(data, params), x)
    if interpolation == "area":
        assert set(scales) == {1}
    else:
        assert max(scales) >= 4


def test_views_of_one_image_share_each_scales_decode(monkeypatch):
    """dump-teacher draws several views of an image: one decode per DCT scale, not per view."""
    calls: list[int] = []
    real = decode.decode_rgb
    monkeypatch.setattr(
        decode, "decode_rgb", lambda data, size, s: calls.append(s) or real(data, size, s)
    )  # fmt: skip
    pipeline = Pipeline(build_ops(_ops(), "ops"))
    data, memo = _jpeg(640, 480), {}
    drawn = [pipeline.draw(data, np.random.default_rng(view), memo) for view in range(16)]
    assert sorted(calls) == sorted(set(calls)) and len(calls) == len(memo) > 1
    for x, params in drawn:
        assert np.array_equal(pipeline.replay(data, params), x)


@pytest.mark.parametrize(("backend", "interpolation"), [("cv2", "bilinear"), ("pil", "bicubic")])
def test_reduced_scale_crop_is_the_same_picture(backend, interpolation):
    """A crop decoded at 1/4 matches the full-resolution crop resized (geometry exact to a
    fraction of a pixel): a box off by a reduced pixel would differ far more."""
    data = _jpeg(1024, 768, seed=3, quality=95)
    crop = RandCropImage("c", size=64, interpolation=interpolation, backend=backend)
    full = DecodeImage("d").apply(data, ())
    for box in [(100, 80, 512, 400), (7, 13, 333, 290), (400, 300, 600, 460)]:
        fused = crop.apply_jpeg(data, (1024, 768), box, {})
        assert decode.reduction(box[2], box[3], 64, 64, interpolation, backend) >= 4
        x, y, w, h = box
        reference = np.asarray(
            Image.fromarray(full).resize((64, 64), Image.Resampling.BOX, box=(x, y, x + w, y + h))
        )
        diff = np.abs(fused.astype(int) - reference.astype(int)).mean()
        assert diff < 4, (box, diff)


def test_fused_crop_refuses_a_box_outside_the_image():
    pipeline = Pipeline(build_ops(_ops(), "ops"))
    with pytest.raises(CacheError, match="RandCropImage params do not fit"):
        pipeline.replay(_jpeg(100, 80), np.array([90, 0, 20, 20, 0], np.int32))


class _Varying:
    """Items whose second batch is larger than the first sample promised."""

    def __getitem__(self, i: int):
        side = 2 if i < 3 else 40
        return np.full((side, side), i, np.float32), np.int64(i)


def test_shared_memory_batches_equal_the_thread_path_and_oversize_falls_back():
    batches = [[0, 1, 2], [3, 4], [5]]
    via_thread = [[t.numpy() for t in b] for b in BatchLoader(_Varying(), batches[:1], 0)]
    via_workers = [[t.numpy() for t in b] for b in BatchLoader(_Varying(), batches, 2, 2)]
    assert np.array_equal(via_workers[0][0], via_thread[0][0])
    assert via_workers[1][0].shape == (2, 40, 40)  # did not fit its slot: pickled instead
    assert [b[1].tolist() for b in via_workers] == batches


def test_arena_places_what_fits_and_views_read_it_back():
    arena = Arena(2, Arena.slot_size((np.zeros((1, 4, 4), np.uint8),), 3))
    fields = (np.arange(48, dtype=np.uint8).reshape(3, 4, 4), np.arange(3), np.zeros(1000))
    placed = arena.put(1, fields)
    assert isinstance(placed[0], Placed) and placed[0].offset == arena.slot_bytes
    assert isinstance(placed[2], np.ndarray)  # too large for the slot
    back = arena.get(placed)
    for a, b in zip(back, fields, strict=True):
        assert np.array_equal(a, b)
    arena.close()


def test_cache_of_the_old_pixel_path_is_refused(project, monkeypatch):
    """A cache dumped before JPEGs decoded through libjpeg-turbo at reduced scale (transforms
    version 1) replays other pixels: opening it for training must fail, naming the ops."""
    from offline_ssld.config.loading import load_config
    from offline_ssld.errors import CacheError
    from tests.helpers import open_for_training, plan_cache, write_cache

    config, tmp = project
    cache = tmp / "old-cache"
    overrides = [f"Offline.cache_dir={cache}"]
    with monkeypatch.context() as old:
        old.setattr(transforms, "TRANSFORMS_VERSION", 1)
        write_cache(plan_cache(config, *overrides), cache)
    with pytest.raises(CacheError, match="transform"):
        open_for_training(load_config([str(config)], overrides))


@pytest.mark.skipif(decode.simplejpeg is None, reason="simplejpeg is not installed")
def test_simplejpeg_and_pillow_decode_the_same_pixels_at_every_scale(monkeypatch):
    """Either decoder may be installed where a cache is dumped or replayed: they must agree."""
    gray = cv2.imencode(".jpg", scene(np.random.default_rng(4), 203, 301)[..., 0])[1].tobytes()
    for data in (_jpeg(517, 389, seed=5), _jpeg(1201, 803, seed=6, quality=75), gray):
        size = decode.jpeg_size(data)
        assert size is not None
        for scale in decode.SCALES:
            fast = decode.decode_rgb(data, size, scale)
            with monkeypatch.context() as without:
                without.setattr(decode, "simplejpeg", None)
                assert decode.jpeg_size(data) == size
                assert np.array_equal(decode.decode_rgb(data, size, scale), fast), scale


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"scale": "1.0/255.0", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        {"scale": 0.00392157, "mean": [0.48, 0.46, 0.41], "std": [0.23, 0.22, 0.23]},
        {"output_fp16": True},
    ],
)
def test_normalize_lookup_gives_the_arithmetics_bits(args):
    """NormalizeImage looks 8-bit pixels up in a table built with its float32 arithmetic; the
    result, and the fused NormalizeImage + ToCHWImage step, equal that arithmetic bit for bit."""
    norm = transforms.NormalizeImage("n", order="", **args)
    img = np.random.default_rng(0).integers(0, 256, (37, 29, 3), dtype=np.uint8)
    img[0, :3] = [[0, 0, 0], [255, 255, 255], [1, 128, 254]]
    arithmetic = (img.astype(np.float32) * norm._scale - norm._mean) / norm._std
    expected = arithmetic.astype(np.float16 if norm.output_fp16 else np.float32)
    assert np.array_equal(norm.apply(img, ()), expected)
    assert np.array_equal(norm.apply_chw(img), expected.transpose(2, 0, 1))
    pipeline = Pipeline(build_ops([*_ops()[:3], {"NormalizeImage": {"order": "", **args}},
                                   {"ToCHWImage": None}], "ops"))  # fmt: skip
    x, params = pipeline.draw(_jpeg(90, 70), np.random.default_rng(1))
    assert x.shape == (3, 32, 32) and x.flags.c_contiguous


def test_gpu_decoder_asked_for_on_a_cpu_machine_falls_back_with_one_line(monkeypatch, capsys):
    import paddle

    from offline_ssld.data import gpu_decode

    if gpu_decode.nvjpeg_missing() is None:
        pytest.skip("nvJPEG can run here: the fallback is for machines without it")
    monkeypatch.setattr(gpu_decode, "_noticed", False)
    monkeypatch.setenv(gpu_decode.ENV, "gpu")
    assert gpu_decode.select_decoder() == "cpu"
    assert gpu_decode.select_decoder() == "cpu"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decoding JPEGs on the CPU" in err[0]
    assert "CPU build" in err[0] or not paddle.is_compiled_with_cuda()
    monkeypatch.setenv(gpu_decode.ENV, "tpu")
    with pytest.raises(ConfigError, match="OFFLINE_SSLD_DECODER: expected one of cpu, gpu"):
        gpu_decode.select_decoder()


def test_gpu_decoder_where_nvjpeg_could_run_stops_clearly(monkeypatch):
    from offline_ssld.data import gpu_decode

    monkeypatch.setattr(gpu_decode, "nvjpeg_missing", lambda: None)
    monkeypatch.setenv(gpu_decode.ENV, "gpu")
    with pytest.raises(ConfigError, match="not built yet"):
        gpu_decode.select_decoder()


def test_damaged_jpeg_replays_like_the_dump_drew_it():
    """A truncated JPEG libjpeg-turbo refuses falls back to OpenCV's partial decode, the same
    way for every view in the dump (sharing decodes) and in replay (one view at a time)."""
    data = _jpeg(640, 480, seed=7)
    data = data[: len(data) * 2 // 3]
    pipeline = Pipeline(build_ops(_ops(), "ops"))
    memo: dict = {}
    drawn = [pipeline.draw(data, np.random.default_rng(view), memo) for view in range(8)]
    assert "pixels" in memo  # the OpenCV fallback ran
    for x, params in drawn:
        assert np.array_equal(pipeline.replay(data, params), x)


def test_tensors_outlive_the_shared_slot_they_came_from():
    """Batches are read from slots the next batches overwrite: every tensor handed out must
    still hold its own values after the whole epoch went through the same slots."""
    items = _Varying()
    batches = [[i] for i in range(3)] * 6
    got = list(BatchLoader(items, batches, 2, 1))
    assert [int(label) for _, label in got] == [b[0] for b in batches]
    for (x, _label), indices in zip(got, batches, strict=True):
        assert float(x.numpy().mean()) == indices[0] and x.stop_gradient


def test_file_read_asks_for_its_size_yet_reads_growth_up_to_the_cap(tmp_path, monkeypatch):
    """read_regular asks for the size fstat gave (a read of the cap allocated the cap first);
    a file longer than that size by the time it is read is still read whole, up to the cap."""
    import os

    from offline_ssld import io as lists
    from offline_ssld.errors import DataError

    path = tmp_path / "img.jpg"
    path.write_bytes(bytes(range(256)) * 40)
    assert lists.read_regular(path, "w", 1 << 20) == path.read_bytes()
    real_fstat = os.fstat

    class Shrunk:
        def __init__(self, st):
            self.st_mode, self.st_size = st.st_mode, 100  # as if it grew after the fstat

    monkeypatch.setattr(lists.os, "fstat", lambda fd: Shrunk(real_fstat(fd)))
    assert lists.read_regular(path, "w", 1 << 20) == path.read_bytes()
    with pytest.raises(DataError, match="grew above the limit of 5000 bytes"):
        lists.read_regular(path, "w", 5000)
