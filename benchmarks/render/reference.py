"""Reference tables generated from the code's own registries (no results file): the
`Offline` keys, shard backends, codecs and their bytes, losses, the codec x loss pairing and
the transform ops. A registry entry added in code shows up here at the next render."""

from __future__ import annotations

from offline_ssld.cache.backends import BACKENDS
from offline_ssld.cache.codecs import CODEC_NAMES, build_codec
from offline_ssld.config.offline import OFFLINE_DEFAULTS
from offline_ssld.data.transforms import Op, registered_ops
from offline_ssld.losses import LOSSES, pairing

# What each `Offline` key means, in a table cell; its default comes from OFFLINE_DEFAULTS.
# A key added there without a line here fails the render (and so `report.py --check`).
OFFLINE_MEANINGS = {
    "cache_dir": "where dump-teacher writes and train-student reads; for train-student, report "
    "and merge also a list of caches (an ensemble)",
    "ensemble": "how an ensemble's members combine: `mean_probs` or `mean_logits`",
    "ensemble_temperature": "temperature of `mean_logits`",
    "teacher_weights": "teacher `.safetensors` (else the Teacher entry's `pretrained`)",
    "views": "dump: views stored per image; train: use the first `views` of the cache",
    "format": "shard backend: [the backends](docs/reference.md#shard-backends-offlineformat)",
    "codec": "how logits are stored: `fp16` (all), `topk` (k logits + the rest's mass), "
    "`sampled` (ids + counts)",
    "topk": "k of the `topk` codec",
    "samples": "draws per view of the `sampled` codec",
    "shard_size": "rows per shard, rounded down to whole images",
    "seed": "with an image's content hash and the view index, fixes every view",
    "batch_size": "teacher inference batch",
    "num_workers": "decode/augment processes for the dump (none: `DataLoader.Train.loader`'s)",
    "skip_bad": "record unreadable images in the manifest instead of stopping",
    "allow_pickle_weights": "load `.pdparams` (a pickle) teacher weights you trust",
    "online_teacher_bn": "teacher BatchNorm mode in `--online` runs (PaddleClas: train)",
    "online_views": "`--online` views: `fresh` draws new ones (PaddleClas), `replay` runs the "
    "teacher on the cache's stored views",
    "view_policy": "one view per image per epoch, without replacement, reshuffled each cycle",
    "precise_bn_batches": "before each eval, BatchNorm statistics recomputed over this many "
    "training batches; 0 keeps PaddleClas's running averages",
}


def _value(v: object) -> str:
    return "none" if v is None else f"`{str(v).lower() if isinstance(v, bool) else v}`"


def offline_keys() -> str:
    """The `Offline` section: every key of OFFLINE_DEFAULTS, its default and meaning."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [
        f"| `{key}` | {_value(v)} | {OFFLINE_MEANINGS[key]} |"
        for key, v in OFFLINE_DEFAULTS.items()
    ]
    return "\n".join(lines)


def backends() -> str:
    lines = ["| backend | shard files | storage |", "|---|---|---|"]
    lines += [
        f"| `{b.name}` | `shard-NNNNN{b.suffix}` | {b.description} |" for b in BACKENDS.values()
    ]
    return "\n".join(lines)


def codec_bytes() -> str:
    """Payload bytes per cached row, computed from the codecs themselves."""
    lines = ["| codec (defaults) | 10 classes | 1000 classes |", "|---|---|---|"]
    for name in CODEC_NAMES:
        small, large = (build_codec(name, c) for c in (10, 1000))
        settings = ", ".join(
            f"{k}={v}" for k, v in small.settings().items() if k not in ("name", "num_classes")
        )
        lines.append(
            f"| {name}{', ' + settings if settings else ''} | {small.bytes_per_row()} | "
            f"{large.bytes_per_row()} |"
        )
    lines += [
        "",
        "Each view also stores its view parameters, each in the narrowest integer type that "
        "holds its declared range; key, path and label are stored once per image. All "
        "included, measured: "
        "[bytes on disk](docs/results/codecs.md#bytes-on-disk).",
    ]
    return "\n".join(lines)


def losses() -> str:
    """The losses registry: PaddleClas names, arguments and defaults, labels, what it is."""
    lines = [
        "| PaddleClas names | arguments (defaults) | reads labels (at the defaults) | loss |",
        "|---|---|---|---|",
    ]
    for e in LOSSES.values():
        args = ", ".join(f"{k}={v}" for k, v in e.params.items()) or "-"
        labels = "yes" if e.needs_labels(e.params) else "no"
        lines.append(
            f"| {', '.join(e.paddleclas_names)} | {args} | {labels} "
            f"| {e.summary.replace('|', '/')} |"
        )
    return "\n".join(lines)


def codec_loss() -> str:
    """Every codec x loss pair and its status, from the rule train-student applies."""
    codecs = [build_codec(name, 10) for name in CODEC_NAMES]
    rows = []
    for entry in LOSSES.values():
        settings = [entry.params]
        if "temperature" in entry.params:
            other = 1.0 if entry.params["temperature"] != 1.0 else 4.0
            settings = sorted(
                [entry.params, {**entry.params, "temperature": other}],
                key=lambda a: a["temperature"],
            )
        for args in settings:
            name = entry.paddleclas_names[0]
            if "temperature" in args:
                name += f", T={args['temperature']:g}"
            cells = [pairing(c.target, entry.kind, args)[0] for c in codecs]
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
    head = "| loss | " + " | ".join(c.name for c in codecs) + " |"
    notes = [
        "",
        "exact: the loss sees the teacher's distribution; unbiased: an unbiased estimate of it, "
        "for losses linear in the target; buckets: scored on the k stored classes plus one "
        "rest bucket (the student's mass on the other classes), exact for what is stored; "
        "approximate: exact on the k stored classes and the rest mass, the rest spread evenly "
        "over the other classes; refused: train-student stops before the first "
        "batch, naming the loss, the codec and what to use instead.",
    ]
    return "\n".join([head, "|---|" + "---|" * len(codecs), *rows, *notes])


def transform_ops() -> str:
    """Every registered transform op: its config arguments, what a view stores for it, and
    where it may stand in a pipeline."""
    lines = [
        "| op | config arguments | stored per view | input layout | kind |",
        "|---|---|---|---|---|",
    ]
    for name, cls in registered_ops().items():
        if cls.param_names:
            stored = ", ".join(f"`{p}`" for p in cls.param_names)
        elif cls.draw is not Op.draw or cls.mixes:
            stored = "set by its arguments (`offline-ssld overlay` lists them)"
        else:
            stored = "nothing (deterministic)"
        kind = "batch op (last)" if cls.mixes else ("8-bit pixels" if cls.needs_uint8 else "")
        layout = cls.needs.upper() if isinstance(cls.needs, str) else "-"
        lines.append(f"| `{name}` | {', '.join(cls.args) or '-'} | {stored} | {layout} | {kind} |")
    return "\n".join(lines)
