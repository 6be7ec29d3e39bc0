"""PaddleClas's full source (the wheel ships only ppcls/arch and ppcls/utils), for tests that
run its own engine code: $PADDLECLAS_SRC, else ppcls/ and tools/ extracted once from the bare
mirror this project's machines keep."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

MIRROR = Path("/work/.mirror/PaddlePaddle+PaddleClas/repo")
HINT = (
    "PaddleClas source not found: set PADDLECLAS_SRC to a PaddleClas checkout "
    "(git clone https://github.com/PaddlePaddle/PaddleClas)"
)


def paddleclas_source() -> Path:
    """The root of a PaddleClas source tree (holding ppcls/ and tools/), or pytest.skip."""
    given = os.environ.get("PADDLECLAS_SRC")
    if given:
        root = Path(given)
        if not (root / "ppcls" / "engine").is_dir():
            pytest.skip(f"PADDLECLAS_SRC={given} holds no ppcls/engine; {HINT}")
        return root
    if not MIRROR.is_dir():
        pytest.skip(HINT)
    head = subprocess.run(
        ["git", "--git-dir", str(MIRROR), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    root = Path(tempfile.gettempdir()) / f"paddleclas-src-{head[:12]}"
    if not (root / "ppcls" / "engine").is_dir():
        work = Path(tempfile.mkdtemp(prefix=".paddleclas-src-", dir=root.parent))
        archive = subprocess.run(
            ["git", "--git-dir", str(MIRROR), "archive", head, "ppcls", "tools"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
        try:
            work.rename(root)  # whole or not at all, also when two test runs race
        except OSError:
            subprocess.run(["rm", "-rf", str(work)], check=True)
    return root
