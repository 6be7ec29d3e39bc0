"""Small figures the tools write beside their reports (matplotlib, imported only when drawn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def histogram_png(
    values: np.ndarray,
    path: Path,
    xlabel: str,
    ylabel: str,
    marker: tuple[float, str] | None = None,
) -> None:
    """A 40-bin histogram as a PNG, with an optional labelled vertical line at a value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(values, bins=40, color="tab:blue")
    if marker is not None:
        ax.axvline(marker[0], color="tab:red", ls="--", label=marker[1])
        ax.legend()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")  # an atomic write's temporary name has no .png
    plt.close(fig)
