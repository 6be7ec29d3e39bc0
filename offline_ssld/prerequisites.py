"""Paddle is a prerequisite the user installs, as PaddleClas treats it: `paddlepaddle` (CPU) and
`paddlepaddle-gpu` are two distributions of one `paddle` package, so our install metadata
names neither (pip would put the CPU wheel over a GPU install). The CLI checks here, from the
installed distributions' metadata (no paddle import, so `--help` stays fast), that the paddle
present is in the supported range, and turns a missing paddle into one line saying how to
install it."""

from __future__ import annotations

import importlib.metadata
import os
import re

from offline_ssld.errors import OfflineSSLDError

SUPPORTED = ((3, 3), (4, 0))  # >=3.3,<4: CI tests 3.3.1 (constraints.txt); older 3.x untested
TESTED = "3.3.1"
SPECIFIER = f">={SUPPORTED[0][0]}.{SUPPORTED[0][1]},<{SUPPORTED[1][0]}"
ANY_PADDLE = "OFFLINE_SSLD_ANY_PADDLE"  # =1: run with any paddle version, at the user's risk
INSTALL = (
    f"pip install paddlepaddle=={TESTED} (CPU) or paddlepaddle-gpu=={TESTED} from "
    "PaddlePaddle's package index (GPU; see docs/guide/install.md)"
)


class PrerequisiteError(OfflineSSLDError):
    """Paddle is missing, installed twice, or outside the supported range."""


def missing_paddle() -> PrerequisiteError:
    """The one-line error for a command that needs paddle where none imports."""
    return PrerequisiteError(f"paddle is not installed: {INSTALL}")


def is_paddle_module(name: str | None) -> bool:
    """Whether a ModuleNotFoundError's module name is paddle or one of its submodules."""
    return name is not None and (name == "paddle" or name.startswith("paddle."))


def paddle_distributions() -> dict[str, str]:
    """Name -> version of every installed distribution that provides the `paddle` package."""
    names = importlib.metadata.packages_distributions().get("paddle", [])
    return {name: importlib.metadata.version(name) for name in dict.fromkeys(names)}


def check_paddle() -> None:
    """Raise PrerequisiteError if two distributions share `paddle` or its version is outside
    SUPPORTED. No distribution is no error here: commands that need paddle fail on import
    (see missing_paddle), the others (inspect, verify) run without it."""
    found = paddle_distributions()
    if len(found) > 1:
        both = " and ".join(f"{name} {version}" for name, version in sorted(found.items()))
        raise PrerequisiteError(
            f"{both} are installed over the same `paddle` package: pip uninstall all of them, "
            f"then {INSTALL}"
        )
    if not found or os.environ.get(ANY_PADDLE) == "1":
        return
    ((name, version),) = found.items()
    release = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if not SUPPORTED[0] <= release < SUPPORTED[1]:
        raise PrerequisiteError(
            f"{name} {version} is outside the supported range paddle{SPECIFIER} "
            f"(tested: {TESTED}): {INSTALL}, or set {ANY_PADDLE}=1 to try it anyway"
        )
