"""`offline-ssld report`: what the teacher taught, as Markdown with PNG plots.

From a config's training list and its cache (or ensemble of caches, Offline.cache_dir):

- per-class teacher accuracy on the labeled rows (every stored view is a row) and the
  confusion matrix (label x teacher argmax);
- the distribution of the teacher's entropy over rows;
- images on which the teacher disagrees with itself: the argmax differs across its views;
- labeled images whose label the teacher most confidently contradicts, likely label noise:
  ranked by `max_c p(c) - p(label)` of the teacher's mean distribution over the image's
  views, among images whose mean argmax is not the label;
- with a student checkpoint: teacher-student agreement (argmax) per teacher class, on the
  very views the teacher saw (replayed), and the images where the two differ most (mean
  total variation distance over the views).

`report.json` beside `report.md` holds every number and the full rankings, for tools.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from offline_ssld.cached import open_cached
from offline_ssld.config import specs
from offline_ssld.data.transforms import Pipeline
from offline_ssld.data.views import ImageSource
from offline_ssld.errors import CacheError
from offline_ssld.plots import histogram_png

TOP = 20  # rows shown in each Markdown ranking (report.json holds them all)


@dataclass
class Table:
    """The teacher's rows of every image of the list that the cache holds."""

    source: ImageSource  # the images, in list order (those the cache holds)
    keys: list[bytes]
    labels: np.ndarray  # (N,) int, -1 unlabeled
    probs: np.ndarray  # (N, V, C) float64 teacher (or ensemble) probabilities
    params: np.ndarray  # (N, V, P) int32 stored view parameters
    pipeline: Pipeline
    describe: str  # what the targets are, for the report's header


def load_table(cfg: dict) -> Table:
    """Every stored row of the config's training images: teacher targets and view params."""
    cached = open_cached(cfg)
    kept, keys, rows, params = [], [], [], []
    for sample, key, view_params, probs in cached:
        kept.append(sample)
        keys.append(key)
        params.append(view_params)
        rows.append(probs)
    if not kept:
        raise CacheError(
            f"{cached.spec.cls_label_path}: none of its images is in the cache "
            f"{', '.join(m.path for m in cached.ensemble.members)}"
        )
    return Table(
        ImageSource(cached.spec.image_root, cached.spec.cls_label_path, kept),
        keys,
        np.array([s.label for s in kept], dtype=np.int64),
        np.stack(rows),
        np.stack(params),
        cached.pipeline,
        cached.describe,
    )


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(axis=-1)


def teacher_findings(table: Table) -> dict[str, Any]:
    """Accuracy, confusion, entropy, self-disagreement and label-noise ranking."""
    n, views, classes = table.probs.shape
    pred = table.probs.argmax(axis=-1)  # (N, V)
    labeled = table.labels >= 0
    confusion = np.zeros((classes, classes), dtype=np.int64)
    for i in np.flatnonzero(labeled):
        for v in range(views):
            confusion[table.labels[i], pred[i, v]] += 1
    per_class = [
        float(confusion[c, c] / confusion[c].sum()) if confusion[c].sum() else None
        for c in range(classes)
    ]
    rows_labeled = int(confusion.sum())
    entropy = _entropy(table.probs)  # (N, V)
    # Self-disagreement: views whose argmax is not the image's majority argmax.
    disagree = []
    for i in range(n):
        counts = np.bincount(pred[i], minlength=classes)
        off = views - int(counts.max())
        if off:
            disagree.append(
                {
                    "path": table.source.samples[i].path,
                    "label": int(table.labels[i]),
                    "view_argmax": pred[i].tolist(),
                    "views_off_majority": off,
                    "mean_entropy": round(float(entropy[i].mean()), 4),
                }
            )
    disagree.sort(key=lambda d: (-d["views_off_majority"], -d["mean_entropy"], d["path"]))
    # Label noise: the teacher's mean distribution over an image's views against its label.
    mean = table.probs.mean(axis=1)  # (N, C)
    suspects = []
    for i in np.flatnonzero(labeled):
        label, top = int(table.labels[i]), int(mean[i].argmax())
        if top == label:
            continue
        suspects.append(
            {
                "path": table.source.samples[i].path,
                "line": table.source.samples[i].line,
                "label": label,
                "teacher": top,
                "p_teacher": round(float(mean[i, top]), 4),
                "p_label": round(float(mean[i, label]), 4),
                "score": round(float(mean[i, top] - mean[i, label]), 4),
            }
        )
    suspects.sort(key=lambda s: (-s["score"], s["path"]))
    return {
        "images": n,
        "views": views,
        "classes": classes,
        "labeled_rows": rows_labeled,
        "teacher_top1": float(np.trace(confusion) / rows_labeled) if rows_labeled else None,
        "per_class_accuracy": per_class,
        "confusion": confusion.tolist(),
        "entropy": {
            "mean": float(entropy.mean()),
            "median": float(np.median(entropy)),
            "max_possible": float(np.log(classes)),
        },
        "self_disagreement": {"images": len(disagree), "ranking": disagree},
        "label_suspects": suspects,
        "_entropy_rows": entropy.reshape(-1),
    }


def student_findings(cfg: dict, table: Table, checkpoint: str | Path) -> dict[str, Any]:
    """Run the student on every stored view (replayed) and compare with the teacher."""
    import paddle

    from offline_ssld.models import build_model, load_weights, select_device

    select_device((cfg.get("Global") or {}).get("device"))
    path = Path(checkpoint)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    spec = specs.student_spec(cfg)
    model = build_model(spec)
    load_weights(model, path, "--student")
    model.eval()
    n, views, classes = table.probs.shape
    student = np.zeros_like(table.probs)
    batch: list[np.ndarray] = []
    where: list[tuple[int, int]] = []

    def flush() -> None:
        with paddle.no_grad():
            out = paddle.nn.functional.softmax(model(paddle.to_tensor(np.stack(batch))), axis=-1)
        for (i, v), row in zip(where, out.numpy(), strict=True):
            student[i, v] = row
        batch.clear()
        where.clear()

    for i in range(n):
        data = table.source.read(i)
        for v in range(views):
            batch.append(table.pipeline.replay(data, table.params[i, v]).astype(np.float32))
            where.append((i, v))
            if len(batch) == 64:
                flush()
    if batch:
        flush()
    t_pred = table.probs.argmax(axis=-1)
    s_pred = student.argmax(axis=-1)
    agreement = []
    for c in range(classes):
        mask = t_pred == c
        agreement.append(float((s_pred[mask] == c).mean()) if mask.any() else None)
    tv = 0.5 * np.abs(student - table.probs).sum(axis=-1).mean(axis=1)  # (N,)
    order = np.argsort(-tv, kind="stable")
    differ = [
        {
            "path": table.source.samples[i].path,
            "label": int(table.labels[i]),
            "teacher": int(table.probs[i].mean(axis=0).argmax()),
            "student": int(student[i].mean(axis=0).argmax()),
            "total_variation": round(float(tv[i]), 4),
        }
        for i in order
    ]
    return {
        "checkpoint": str(path),
        "agreement": float((s_pred == t_pred).mean()),
        "agreement_per_class": agreement,
        "ranking": differ,
    }


def _plots(findings: dict, student: dict | None, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    confusion = np.array(findings["confusion"])
    fig, ax = plt.subplots(figsize=(5, 4.2))
    image = ax.imshow(confusion, cmap="Blues")
    ax.set_xlabel("teacher argmax")
    ax.set_ylabel("label")
    ax.set_title("teacher confusion (labeled rows)")
    classes = confusion.shape[0]
    ax.set_xticks(range(classes))
    ax.set_yticks(range(classes))
    if classes <= 12:
        for r in range(classes):
            for c in range(classes):
                ax.text(c, r, str(confusion[r, c]), ha="center", va="center", fontsize=7)
    fig.colorbar(image)
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=100)
    plt.close(fig)
    names.append("confusion.png")
    histogram_png(
        findings["_entropy_rows"],
        out / "entropy.png",
        "teacher entropy (nats) per stored view",
        "rows",
        marker=(findings["entropy"]["max_possible"], "log C"),
    )
    names.append("entropy.png")
    if student is not None:
        values = [np.nan if a is None else a for a in student["agreement_per_class"]]
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar(range(len(values)), values, color="tab:green")
        ax.set_ylim(0, 1)
        ax.set_xlabel("teacher argmax class")
        ax.set_ylabel("student agrees")
        fig.tight_layout()
        fig.savefig(out / "agreement.png", dpi=100)
        plt.close(fig)
        names.append("agreement.png")
    return names


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _markdown(table: Table, findings: dict, student: dict | None) -> str:
    f = findings
    lines = [
        "# What the teacher taught",
        "",
        f"Targets: {table.describe}. Images: {table.source.list_path} "
        f"(`{table.source.image_root}`), {f['images']} images x {f['views']} views, "
        f"{f['classes']} classes.",
        "",
        "## Teacher accuracy on the labeled rows",
        "",
        f"Top-1 over {f['labeled_rows']} labeled rows (every stored view): "
        f"**{_pct(f['teacher_top1'])}**.",
        "",
        "| class | rows | accuracy |",
        "|---|---|---|",
    ]
    confusion = np.array(f["confusion"])
    for c, acc in enumerate(f["per_class_accuracy"]):
        lines.append(f"| {c} | {int(confusion[c].sum())} | {_pct(acc)} |")
    lines += [
        "",
        "![confusion matrix](confusion.png)",
        "",
        "## Entropy",
        "",
        f"Mean {f['entropy']['mean']:.3f} nats, median {f['entropy']['median']:.3f} "
        f"(uniform: {f['entropy']['max_possible']:.3f}).",
        "",
        "![entropy](entropy.png)",
        "",
        "## Views on which the teacher disagrees with itself",
        "",
        f"{f['self_disagreement']['images']} of {f['images']} images have views with another "
        "argmax than the image's majority.",
        "",
    ]
    ranking = f["self_disagreement"]["ranking"][:TOP]
    if ranking:
        lines += ["| path | label | argmax per view | mean entropy |", "|---|---|---|---|"]
        for d in ranking:
            lines.append(
                f"| `{d['path']}` | {d['label']} | {d['view_argmax']} | {d['mean_entropy']} |"
            )
        lines.append("")
    lines += [
        "## Labels the teacher contradicts (likely label noise)",
        "",
        f"{len(f['label_suspects'])} labeled images whose mean teacher argmax over their "
        "views is not their label, ranked by p(teacher class) - p(label):",
        "",
    ]
    if f["label_suspects"]:
        lines += [
            "| path (list line) | label | teacher | p(teacher) | p(label) |",
            "|---|---|---|---|---|",
        ]
        for s in f["label_suspects"][:TOP]:
            lines.append(
                f"| `{s['path']}` ({s['line']}) | {s['label']} | {s['teacher']} | "
                f"{s['p_teacher']:.3f} | {s['p_label']:.3f} |"
            )
        lines.append("")
    if student is not None:
        lines += [
            "## Teacher and student",
            "",
            f"Student `{student['checkpoint']}` on the same replayed views: argmax agrees on "
            f"**{_pct(student['agreement'])}** of rows.",
            "",
            "| teacher class | agreement |",
            "|---|---|",
        ]
        for c, a in enumerate(student["agreement_per_class"]):
            lines.append(f"| {c} | {_pct(a)} |")
        lines += [
            "",
            "![agreement per class](agreement.png)",
            "",
            "Images where they differ most (mean total variation distance over the views):",
            "",
            "| path | label | teacher | student | TV |",
            "|---|---|---|---|---|",
        ]
        for d in student["ranking"][:TOP]:
            lines.append(
                f"| `{d['path']}` | {d['label']} | {d['teacher']} | {d['student']} | "
                f"{d['total_variation']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def write_report(cfg: dict, out: str | Path, student: str | Path | None = None) -> Path:
    """Write report.md, its PNGs and report.json to `out`; return the report.md path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = load_table(cfg)
    findings = teacher_findings(table)
    student_part = student_findings(cfg, table, student) if student else None
    _plots(findings, student_part, out)
    text = _markdown(table, findings, student_part)
    (out / "report.md").write_text(text)
    data = {k: v for k, v in findings.items() if not k.startswith("_")}
    data["targets"] = table.describe
    if student_part is not None:
        data["student"] = student_part
    (out / "report.json").write_text(json.dumps(data, indent=1) + "\n")
    return out / "report.md"
