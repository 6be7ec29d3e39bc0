"""PaddleClas's own source tree (ppcls/, tools/) for tests and benchmarks that run its code.

The `paddleclas` wheel ships only ppcls/arch and ppcls/utils; its data loaders, losses and
engine live in the source tree. PADDLECLAS_SRC may name a checkout; otherwise ppcls/ and tools/
are extracted once from the local bare mirror into a cached directory.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

MIRROR = Path("/work/.mirror/PaddlePaddle+PaddleClas/repo")
HOW = (
    "set PADDLECLAS_SRC to a PaddleClas checkout "
    "(git clone https://github.com/PaddlePaddle/PaddleClas)"
)


class SourceMissing(RuntimeError):
    """PaddleClas's source is not available here (the message says how to get it)."""


def find_source() -> Path:
    """The root of a PaddleClas source tree (it holds ppcls/data), or SourceMissing."""
    given = os.environ.get("PADDLECLAS_SRC")
    if given:
        root = Path(given)
        if not (root / "ppcls" / "data").is_dir():
            raise SourceMissing(f"PADDLECLAS_SRC={given} has no ppcls/data; {HOW}")
        return root
    if not MIRROR.is_dir():
        raise SourceMissing(HOW)
    git = ["git", f"--git-dir={MIRROR}"]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    root = Path(tempfile.gettempdir()) / f"paddleclas-src-{head.stdout.strip()[:12]}"
    if not (root / "ppcls" / "data").is_dir():
        part = Path(tempfile.mkdtemp(prefix="paddleclas-src-", dir=root.parent))
        archive = subprocess.run(
            [*git, "archive", "HEAD", "ppcls", "tools"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(part)], input=archive.stdout, check=True)
        try:
            part.rename(root)  # atomic: a concurrent extraction leaves one whole tree
        except OSError:
            if not (root / "ppcls" / "data").is_dir():
                raise
    return root


def paddleclas_source() -> Path:
    """`find_source()` in a test: skipped with a one-line message when it is missing."""
    import pytest

    try:
        return find_source()
    except SourceMissing as exc:
        pytest.skip(str(exc))
