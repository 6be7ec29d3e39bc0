"""PaddleClas's `pretrained: True`, `use_ssld: True` and `pretrained: <url>`: the model zoo's
weights, downloaded the way PaddleClas downloads them.

- The URL is the one PaddleClas's backbone factory asks for itself: `zoo_url` builds the
  backbone with pretrained=True while PaddleClas's download call is recorded instead of run, so
  the MODEL_URLS entry and its SSLD variant (`_ssld_pretrained`, PPHGNetV2's stage-1 file, ...)
  are PaddleClas's choice, not a copy of it.
- The download and its cache (`~/.paddleclas/weights/<file name>`, reused when present) are
  PaddleClas's `get_weights_path_from_url`. `FETCH` is the seam tests replace to serve a file
  on 127.0.0.1.
- The file is a .pdparams, a pickle. A zoo URL is what PaddleClas itself loads for this
  backbone, so `pretrained: True` is the user's trust in PaddleClas's zoo; a URL named in a
  config needs Offline.allow_pickle_weights, like a local .pdparams. The pickle is read once and
  kept beside PaddleClas's copy as .safetensors; every load (and the teacher fingerprint) reads
  only that.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from offline_ssld.config.specs import PADDLECLAS_CLASS_NUM, Download, ModelSpec
from offline_ssld.errors import ConfigError, OfflineSSLDError

Fetcher = Callable[[str], str]


def paddleclas_fetch(url: str) -> str:
    """PaddleClas's download: its cached copy under WEIGHTS_HOME, downloaded first if absent."""
    from paddleclas.ppcls.utils.download import get_weights_path_from_url

    return str(get_weights_path_from_url(url))


FETCH: Fetcher = paddleclas_fetch  # replaced by tests (a file served on 127.0.0.1)


class _Requested(Exception):
    """Raised in place of PaddleClas's download, carrying the URL it asked for."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


@functools.cache
def zoo_url(spec: ModelSpec, use_ssld: bool) -> str:
    """The URL PaddleClas's backbone downloads for `pretrained: True` (and `use_ssld`)."""
    from paddleclas.ppcls.utils import save_load

    from offline_ssld.models import construct

    def record(url: str, md5sum: str | None = None) -> str:
        raise _Requested(url)

    real = save_load.get_weights_path_from_url
    save_load.get_weights_path_from_url = record
    key = f"{spec.key}.pretrained"
    try:
        construct(spec, pretrained=True, use_ssld=use_ssld)
    except _Requested as asked:
        return asked.url
    except OfflineSSLDError:
        raise
    except Exception as exc:  # PaddleClas's own error for a backbone without zoo weights
        raise ConfigError(
            f"{key}: PaddleClas's {spec.name} has no model-zoo weights to download "
            f"({_first_line(exc)}); set the key to a weights file"
        ) from None
    finally:
        save_load.get_weights_path_from_url = real
    raise ConfigError(
        f"{key}: PaddleClas's {spec.name} downloads nothing for pretrained: True; set the key "
        "to a weights file"
    )


def source_url(spec: ModelSpec) -> str:
    download = _download_of(spec)
    return download.url or zoo_url(_plain(spec), download.use_ssld)


def fetch_weights(spec: ModelSpec, fetch: Fetcher | None = None) -> str:
    """The safetensors file of the weights `spec.download` names, downloaded through
    PaddleClas (or `fetch`) and converted once; any failure is one line naming the URL, the
    key and how to point the key at a file downloaded by hand."""
    from offline_ssld.models import convert_pdparams

    download = _download_of(spec)
    url = source_url(spec)
    if not download.trusted:
        raise ConfigError(
            f"{download.key}: {url} is a PaddleClas .pdparams, a pickle that can run code when "
            "loaded, from a URL this config names; set Offline.allow_pickle_weights=True if "
            "you trust it"
        )
    try:
        local = Path((fetch or FETCH)(url))
    except Exception as exc:  # requests, PaddleClas's RuntimeError, an injected fetcher
        raise ConfigError(_failed(download.key, url, _first_line(exc))) from None
    target = local.with_suffix(".safetensors")
    if not target.is_file() or target.stat().st_mtime < local.stat().st_mtime:
        try:
            convert_pdparams(local, target)
        except Exception as exc:  # a truncated file, an HTML error page, not a state dict
            reason = f"{local} is not a readable .pdparams: {_first_line(exc)}; delete it"
            raise ConfigError(_failed(download.key, url, reason)) from None
    return str(target)


def describe(spec: ModelSpec) -> str:
    """Where the weights come from and where PaddleClas caches them (no download)."""
    from paddleclas.ppcls.utils.download import WEIGHTS_HOME, _map_path

    download = _download_of(spec)
    url = source_url(spec)
    cached = Path(_map_path(url, WEIGHTS_HOME))
    state = "cached" if cached.is_file() else "downloaded on first use"
    ssld = ", use_ssld" if download.use_ssld else ""
    return (
        f"download {url} (from {download.key}{ssld}) to {cached} ({state}), read as "
        f"{cached.with_suffix('.safetensors').name} beside it"
    )


def _download_of(spec: ModelSpec) -> Download:
    if spec.download is None:
        raise ValueError(f"{spec.key}: no download")  # a caller's bug, not a user's input
    return spec.download


def _plain(spec: ModelSpec) -> ModelSpec:
    """The spec without weights settings or class count (the URL depends on neither), so
    zoo_url's cache keys on the backbone only."""
    return ModelSpec(spec.name, PADDLECLAS_CLASS_NUM, None, spec.key, spec.args)


def _failed(key: str, url: str, reason: str) -> str:
    stem = PurePosixPath(urlparse(url).path).stem or "weights"
    return (
        f"{key}: could not get {url} ({reason}); download it where you can and point the key at "
        f"the file: -o {key}=/path/to/{stem} (a .pdparams also needs "
        "Offline.allow_pickle_weights=True)"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
