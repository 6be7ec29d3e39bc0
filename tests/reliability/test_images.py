"""Odd images decode like PaddleClas or fail with one clear line."""

from __future__ import annotations

import shutil
import struct
import zlib
from collections import Counter

import cv2
import numpy as np

from offline_ssld.cache.format import load_manifest
from offline_ssld.data.transforms import MAX_IMAGE_PIXELS, DecodeImage
from offline_ssld.errors import DataError
from offline_ssld.io import content_key
from offline_ssld.tools.audit import verify_cache
from tests.reliability.common import HOSTILE, dump_cli, one_error_line, row_ids


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _palette_png(indices: np.ndarray, palette: np.ndarray, transparent: bool = False) -> bytes:
    h, w = indices.shape
    raw = b"".join(b"\0" + indices[y].astype(np.uint8).tobytes() for y in range(h))
    chunks = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
    chunks += _png_chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    if transparent:
        chunks += _png_chunk(b"tRNS", bytes([0, 128] + [255] * (len(palette) - 2)))
    chunks += _png_chunk(b"IDAT", zlib.compress(raw))
    return b"\x89PNG\r\n\x1a\n" + chunks + _png_chunk(b"IEND", b"")


def _huge_png(w: int, h: int) -> bytes:
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    idat = _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + _png_chunk(b"IEND", b"")


def _huge_jpeg(w: int, h: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, h, w, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xd9"


def odd_images() -> dict[str, bytes]:
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (18, 22, 3), dtype=np.uint8)

    def enc(ext: str, img: np.ndarray) -> bytes:
        ok, buf = cv2.imencode(ext, img)
        assert ok
        return buf.tobytes()

    jpeg, png = enc(".jpg", rgb), enc(".png", rgb)
    return {
        "gray.png": enc(".png", rgb[..., 0]),
        "gray.jpg": enc(".jpg", rgb[..., 0]),
        "gray16.png": enc(".png", rgb[..., 0].astype(np.uint16) * 257),
        "rgb16.png": enc(".png", rgb.astype(np.uint16) * 257),
        "rgba.png": enc(".png", np.dstack([rgb, rgb[..., 0]])),
        "palette.png": _palette_png(rng.integers(0, 16, (18, 22)), rng.integers(0, 256, (16, 3))),
        "palette_trns.png": _palette_png(
            rng.integers(0, 16, (18, 22)), rng.integers(0, 256, (16, 3)), transparent=True
        ),
        "bmp.bmp": enc(".bmp", rgb),
        "truncated_half.jpg": jpeg[: len(jpeg) // 2],
        "truncated_header.jpg": jpeg[:150],
        "truncated_half.png": png[: len(png) // 2],
        "truncated_header.png": png[:40],
        "zero_bytes.png": b"",
        "text.png": b"this is not an image\n",
        "huge_header_100000x100000.png": _huge_png(100_000, 100_000),
        "huge_header_65535x65535.jpg": _huge_jpeg(65_535, 65_535),
    }


def test_odd_images_decode_like_paddleclas_or_fail_clearly(project, rlog):
    config, tmp = project
    good = (tmp / "train_list.txt").read_text().splitlines()
    odd = odd_images()
    (tmp / "images" / "odd").mkdir()
    decode = DecodeImage("k", to_rgb=True)
    expected_bad, outcomes, failures = [], Counter(), []
    for name, data in odd.items():
        (tmp / "images" / "odd" / name).write_bytes(data)
        # PaddleClas: cv2.imdecode(data, IMREAD_COLOR) then BGR -> RGB.
        try:
            reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:  # PaddleClas would stop with this cv2 error
            reference = None
        header_pixels = 10**10 if name.startswith("huge") else 0
        try:
            out = decode.apply(data, ())
        except DataError as exc:
            if reference is not None and header_pixels <= MAX_IMAGE_PIXELS:
                failures.append(f"{name}: refused ({exc}) though cv2 decodes it")
            outcomes[f"refused: {str(exc).split(' (')[0]}"] += 1
            expected_bad.append(name)
            continue
        same = reference is not None and np.array_equal(
            out, cv2.cvtColor(reference, cv2.COLOR_BGR2RGB)
        )
        if not (same and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3):
            failures.append(f"{name}: decoded differently from PaddleClas's DecodeImage")
        outcomes["decoded as PaddleClas would (3 channels uint8)"] += 1
    # dump-teacher: each bad image alone is a one-line error naming list:line and the file...
    listing = tmp / "odd_list.txt"
    for name in expected_bad:
        listing.write_text("\n".join([*good, f"odd/{name} 1"]) + "\n")
        shutil.rmtree(tmp / "cache", ignore_errors=True)
        line = one_error_line(
            dump_cli(config, f"DataLoader.Train.dataset.cls_label_path={listing}")
        )
        if line is None or "odd_list.txt:25:" not in line or name not in line:
            failures.append(f"{name}: dump error is not one line naming it: {line}")
    # ...and with --skip-bad all of them are recorded in the manifest, the rest dumped.
    listing.write_text("\n".join([*good, *(f"odd/{n} 1" for n in odd)]) + "\n")
    shutil.rmtree(tmp / "cache", ignore_errors=True)
    result = dump_cli(
        config, f"DataLoader.Train.dataset.cls_label_path={listing}", flags=("--skip-bad",)
    )
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp / "cache")
    skipped = sorted(s["path"] for s in manifest.skipped)
    if skipped != sorted(f"odd/{n}" for n in expected_bad):
        failures.append(f"--skip-bad recorded {skipped}")
    decodable = len(odd) - len(expected_bad)
    if manifest.num_images != 24 + decodable or not verify_cache(tmp / "cache").ok:
        failures.append(f"--skip-bad cache holds {manifest.num_images} images")
    keys = {k for k, _ in row_ids(tmp / "cache")}
    for name in set(odd) - set(expected_bad):
        if content_key(odd[name]) not in keys:
            failures.append(f"{name}: decodable but not in the cache")
    rlog.record(
        HOSTILE,
        "Images: grayscale 8/16-bit, RGB 16-bit, RGBA, palette (with tRNS), BMP, truncated "
        "JPEG/PNG, zero bytes, text, headers claiming 100000x100000 / 65535x65535",
        outcomes,
        ok=not failures,
        goal="decoded exactly as PaddleClas's DecodeImage (cv2.IMREAD_COLOR, 3 channels "
        "uint8), or refused with an error naming list:line and the file; --skip-bad records "
        "the refused ones in the manifest",
        notes=f"{len(odd)} images; refused: {', '.join(expected_bad)}. A JPEG cut in half still "
        "decodes (libjpeg fills the rest), as in PaddleClas."
        + (f" Failures: {failures}" if failures else ""),
    )
    assert not failures, failures
