"""Which JPEG decoder a run uses: the CPU path (data/decode.py), or nvJPEG on the GPU.

OFFLINE_SSLD_DECODER=gpu asks for GPU decoding (design: docs/guide/input_path.md). Where
nvJPEG cannot run (no CUDA build of paddle, no GPU, no paddle.vision.ops.decode_jpeg) the run
says so in one line and decodes on the CPU: the pixels are the CPU path's, so a cache stays
valid. Where it could run, the run stops with a clear message: the device path (decoding only
the stored crop window, with the decoder in the transform fingerprint) is designed, not built.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from offline_ssld.errors import ConfigError

ENV = "OFFLINE_SSLD_DECODER"
CHOICES = ("cpu", "gpu")
_noticed = False


def nvjpeg_missing() -> str | None:
    """Why nvJPEG decoding cannot run here, or None when it could."""
    import paddle

    if not paddle.is_compiled_with_cuda():
        return "this paddle is a CPU build"
    if paddle.device.cuda.device_count() == 0:
        return "no GPU is visible"
    if not hasattr(paddle.vision.ops, "decode_jpeg"):
        return "paddle.vision.ops.decode_jpeg is missing"
    return None


def select_decoder(stream: TextIO | None = None) -> str:
    """The decoder this run uses ('cpu'), after the one-line notice when GPU decoding was
    asked for where it cannot run (once per process)."""
    global _noticed
    asked = os.environ.get(ENV, "cpu").strip().lower() or "cpu"
    if asked not in CHOICES:
        raise ConfigError(f"{ENV}: expected one of {', '.join(CHOICES)}, got {asked!r}")
    if asked == "cpu":
        return "cpu"
    reason = nvjpeg_missing()
    if reason is None:
        raise ConfigError(
            f"{ENV}=gpu: decoding on the GPU is designed (docs/guide/input_path.md) but not "
            "built yet; unset it to decode with libjpeg-turbo on the CPU"
        )
    if not _noticed:
        print(
            f"offline-ssld: {ENV}=gpu, but {reason}: decoding JPEGs on the CPU (libjpeg-turbo)",
            file=stream or sys.stderr,
        )
        _noticed = True
    return "cpu"
