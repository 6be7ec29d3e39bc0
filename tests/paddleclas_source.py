"""PaddleClas's own source tree (ppcls/ and tools/) for the tests that run its code.

The `paddleclas` wheel ships only ppcls/arch and ppcls/utils; its losses, engine and data
loaders live in the GitHub source. PADDLECLAS_SRC may name a checkout; else ppcls/ and tools/
are extracted once from a local git mirror (PADDLECLAS_GIT, by default the one this project's
machines keep) into a cached directory per commit. Without either, the test is skipped with
how to get the source. Nothing of PaddleClas is copied into this repository.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path
from types import ModuleType

HOW = (
    "PaddleClas source not found: set PADDLECLAS_SRC to a PaddleClas checkout "
    "(git clone https://github.com/PaddlePaddle/PaddleClas)"
)
DEFAULT_GIT = "/work/.mirror/PaddlePaddle+PaddleClas/repo"


class SourceMissing(RuntimeError):
    """PaddleClas's source is not available here (the message says how to get it)."""


def find_source() -> Path:
    """The root of a PaddleClas source tree holding ppcls/ and tools/, or SourceMissing
    (benchmarks report it; tests skip through paddleclas_source)."""
    given = os.environ.get("PADDLECLAS_SRC")
    if given:
        root = Path(given)
        if not (root / "ppcls" / "loss").is_dir():
            raise SourceMissing(f"PADDLECLAS_SRC={given} has no ppcls/loss; {HOW}")
        return root
    git_dir = os.environ.get("PADDLECLAS_GIT", DEFAULT_GIT)
    git = ["git", f"--git-dir={git_dir}"]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise SourceMissing(HOW) from None
    root = Path(tempfile.gettempdir()) / f"paddleclas-src-{commit[:12]}"
    if (root / "ppcls").is_dir():
        return root
    part = Path(tempfile.mkdtemp(prefix=f"{root.name}.part-", dir=root.parent))
    archive = subprocess.run(
        [*git, "archive", "--format=tar", commit, "ppcls", "tools"], capture_output=True
    )
    if archive.returncode != 0:
        shutil.rmtree(part)
        detail = archive.stderr.decode(errors="replace").strip()
        raise SourceMissing(f"{HOW} ({git_dir}: {detail})")
    tar = part / "src.tar"
    tar.write_bytes(archive.stdout)
    with tarfile.open(tar) as fh:
        fh.extractall(part, filter="data")
    tar.unlink()
    try:
        part.rename(root)  # whole or not at all; a concurrent extraction may have won
    except OSError:
        shutil.rmtree(part)
    return root


def paddleclas_source() -> Path:
    """find_source() for a test: without the source the test is skipped, saying how to get it."""
    import pytest

    try:
        return find_source()
    except SourceMissing as exc:
        pytest.skip(str(exc))


def import_ppcls(module: str) -> ModuleType:
    """`ppcls.<module>` from the source tree without running the package __init__ files
    (ppcls/__init__.py imports the whole engine, data loaders and their dependencies);
    only the modules `module` imports itself are loaded."""
    root = paddleclas_source()
    for package in ("ppcls", "ppcls.loss", "ppcls.utils"):
        loaded = sys.modules.get(package)
        where = str(root.joinpath(*package.split(".")))
        if loaded is not None and list(getattr(loaded, "__path__", [])) == [where]:
            continue
        stub = types.ModuleType(package)
        stub.__path__ = [where]
        sys.modules[package] = stub
    return importlib.import_module(f"ppcls.{module}")
