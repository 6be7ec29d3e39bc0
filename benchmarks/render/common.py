"""Phrasings shared by several studies' blocks: intervals, run lines, machines, modes."""

from __future__ import annotations

LABELS = {
    "student_only": "student only (no KD)",
    "online_bn_train": "online SSLD (teacher BN train, as PaddleClas)",
    "online_bn_eval": "online SSLD (teacher BN eval)",
}


def label(mode: str) -> str:
    """A benchmark mode as the tables name it."""
    if mode.startswith("offline_v"):
        return f"offline SSLD, {mode[len('offline_v') :]} view(s)"
    return LABELS.get(mode, mode)


def reproduce(r: dict) -> str:
    """The reproduce line, with the results file's note on how this run was made, if any."""
    note = f" (this run: {r['note']})" if "note" in r else ""
    return f"Reproduce: `{r['command']}`{note}"


def points(v: dict) -> str:
    """Mean ± 95% CI half-width of a mean_ci entry, in points."""
    ci = f" ± {100 * v['ci95']:.2f}" if v["ci95"] is not None else ""
    return f"{100 * v['mean']:+.2f}{ci}"


def interval_reading(d: dict, first: str = "offline") -> str:
    """What a paired difference's 95% interval shows, and no more (`first` is the side the
    difference is taken from)."""
    if d["ci95"] is None:
        return "none (one seed)"
    lo, hi = 100 * (d["mean"] - d["ci95"]), 100 * (d["mean"] + d["ci95"])
    span = f"{lo:+.2f} to {hi:+.2f} points"
    if lo <= 0 <= hi:
        return f"{span}: contains 0, so neither is shown ahead; any difference in it fits"
    return f"{span}: {first} {'higher' if lo > 0 else 'lower'}"


def batch(s: dict) -> str:
    """The students' batch, and their lr when the file records it (files written before
    results recorded each config's recipe ran the student config's batch at lr 0.1)."""
    r = s.get("student_recipe") or {"batch_size": s["batch_size"], "lr": 0.1}
    return f"batch {r['batch_size']} at lr {r['lr']}"


def machine(m: dict) -> str:
    """The machine sentence every trained study ends its settings with."""
    return f"Machine: {m['nproc']} cores, {m['cpu']}, Paddle {m['paddle']} on CPU."


def per_seed(values: list[float]) -> str:
    """Top-1 fractions as points, comma-separated."""
    return ", ".join(f"{100 * x:.2f}" for x in values)


def mean_ci_cell(v: dict) -> str:
    """`66.00% ± 1.08` from a mean_ci entry (no ± with one seed)."""
    ci = f" ± {100 * v['ci95']:.2f}" if v["ci95"] is not None else ""
    return f"{100 * v['mean']:.2f}%{ci}"
