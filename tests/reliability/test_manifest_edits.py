"""Every edit of a manifest field is named, or documented as undetectable by design."""

from __future__ import annotations

import json
import shutil
from collections import Counter

from offline_ssld.audit import verify_cache
from offline_ssld.cache import format as cache_format
from offline_ssld.cache.format import MANIFEST
from tests.reliability.common import CORRUPTION, cli, dump_cli, train_refusal


def _manifest_edits() -> list[tuple[str, object, str]]:
    """(description, edit function on the manifest dict, text the error/problem must hold)."""

    def setter(path: str, value):
        def edit(m):
            *parents, last = path.split(".")
            target = m
            for part in parents:
                target = target[int(part)] if isinstance(target, list) else target[part]
            if isinstance(target, list):
                target[int(last)] = value
            else:
                target[last] = value

        return edit

    def deleter(path: str):
        def edit(m):
            *parents, last = path.split(".")
            target = m
            for part in parents:
                target = target[int(part)] if isinstance(target, list) else target[part]
            del target[last]

        return edit

    edits: list[tuple[str, object, str]] = []
    for field in cache_format._FIELDS:
        edits.append((f"delete '{field}'", deleter(field), f"'{field}'"))
        edits.append((f"'{field}' of the wrong type", setter(field, "?"), f"'{field}'"))
    edits.append(("delete 'format_version'", deleter("format_version"), "'format_version'"))
    edits += [
        ("unknown field", setter("bogus", 1), "'bogus'"),
        ("format_version 1", setter("format_version", 1), "'format_version' is 1"),
        ("format_version 3", setter("format_version", 3), "'format_version' is 3"),
        ("backend 'zip'", setter("backend", "zip"), "'backend'"),
        ("views 0", setter("views", 0), "'views'"),
        ("views 1", setter("views", 1), "'rows'"),
        ("num_images -1", setter("num_images", -1), "'num_images'"),
        ("num_images 10**15", setter("num_images", 10**15), "'num_images'"),
        ("num_images 25", setter("num_images", 25), "'num_images'"),
        ("images_per_shard 1", setter("images_per_shard", 1), "'images_per_shard'"),
        ("num_classes 5", setter("num_classes", 5), "'num_classes'"),
        ("codec.num_classes 5", setter("codec.num_classes", 5), "'codec.num_classes'"),
        ("codec.name 'topk'", setter("codec.name", "topk"), "column"),
        ("codec.name 'nope'", setter("codec.name", "nope"), "'codec'"),
        ("param_names one short", lambda m: m["param_names"].pop(), "'param_names'"),
        ("param_ranges [1, 0]", setter("param_ranges.0", [1, 0]), "'param_ranges'"),
        ("param_ranges narrowed", setter("param_ranges.0", [0, 255]), "'params."),
        ("param_names [1]", setter("param_names", [1]), "'param_names'"),
        ("complete false", setter("complete", False), "'complete'"),
        ("teacher.name", setter("teacher.name", "ResNet50"), "'teacher'"),
        ("teacher.weights_sha256", setter("teacher.weights_sha256", "0" * 64), "'teacher'"),
        ("delete teacher.class_num", deleter("teacher.class_num"), "'teacher.class_num'"),
        ("fingerprints.teacher", setter("fingerprints.teacher", "0" * 64), "'teacher'"),
        ("fingerprints.dataset", setter("fingerprints.dataset", "0" * 64), "fingerprints.dataset"),
        ("fingerprints.order", setter("fingerprints.order", "0" * 64), "fingerprints.order"),
        ("delete fingerprints.transforms", deleter("fingerprints.transforms"), "transforms"),
        ("source.transform_ops 'x'", setter("source.transform_ops", "x"), "transform_ops"),
        ("shards[1].name", setter("shards.1.name", "shard-00099.arrow"), "'name'"),
        ("shards[1].name traversal", setter("shards.1.name", "../x.arrow"), "'name'"),
        ("shards[1] twice", lambda m: m["shards"].append(dict(m["shards"][1])), "twice"),
        ("shards[1].rows", setter("shards.1.rows", 20), "'rows'"),
        ("shards[1].checksum", setter("shards.1.checksum", "0" * 64), "shard-00001"),
        ("shards[1].bytes", setter("shards.1.bytes", 1), "shard-00001"),
        ("delete shards[1].checksum", deleter("shards.1.checksum"), "'checksum'"),
        ("shards[1] dropped", lambda m: m["shards"].pop(1), "'complete'"),
        ("not JSON", None, "not valid JSON"),
        ("not UTF-8", None, "not valid JSON"),
        ("a number of 5000 digits", None, "not valid JSON"),
        ("a JSON list", None, "JSON object"),
        ("nesting 100000 deep", None, "not valid JSON"),
    ]
    return edits


RAW_MANIFESTS = {
    "not JSON": b'{"format_version": 1,',
    "not UTF-8": b'{"backend": "\xff\xfe"}',
    "a number of 5000 digits": b'{"views": ' + b"9" * 5000 + b"}",
    "a JSON list": b"[1, 2, 3]",
    "nesting 100000 deep": b"[" * 100000 + b"]" * 100000,
}

# Fields that describe provenance and that nothing reads for correctness: an edit is not
# detectable without a checksum of the manifest itself, and some are legitimate (moving the
# images and fixing source.image_root).
UNDETECTABLE_BY_DESIGN = {
    "seed 7": ("seed", 7),
    "skipped []": ("skipped", [{"path": "x.png", "line": 1, "reason": "edited"}]),
    "source.image_root": ("source.image_root", "/elsewhere"),
    "param_names renamed": ("param_names", None),
}


def test_manifest_edits_are_named(project, monkeypatch, rlog):
    config, tmp = project
    cache = tmp / "cache_arrow"
    assert dump_cli(config, f"Offline.cache_dir={cache}").exit_code == 0
    original = json.loads((cache / MANIFEST).read_text())
    outcomes: Counter = Counter()
    failures: list[str] = []
    edits = _manifest_edits()
    for description, edit, expected in edits:
        edited = tmp / "edited"
        shutil.rmtree(edited, ignore_errors=True)
        shutil.copytree(cache, edited)
        if edit is None:
            (edited / MANIFEST).write_bytes(RAW_MANIFESTS[description])
        else:
            manifest = json.loads(json.dumps(original))
            edit(manifest)
            (edited / MANIFEST).write_text(json.dumps(manifest))
        result = cli("verify", edited)
        said = result.stderr.strip()
        named = result.exit_code in (1, 2) and "Traceback" not in result.output and expected in said
        if not named:
            failures.append(f"{description}: exit {result.exit_code}, {said[-300:]!r}")
        outcomes["verify names the field or shard" if named else "FAILED"] += 1
    # Edits of provenance-only fields: record what verify says, nothing is expected.
    undetected = []
    for description, (field, value) in UNDETECTABLE_BY_DESIGN.items():
        manifest = json.loads(json.dumps(original))
        if field == "param_names":
            manifest["param_names"] = [f"p{i}" for i in range(len(manifest["param_names"]))]
        elif "." in field:
            top, sub = field.split(".")
            manifest[top][sub] = value
        else:
            manifest[field] = value
        (edited / MANIFEST).write_text(json.dumps(manifest))
        if verify_cache(edited).ok:
            undetected.append(description)
    rlog.record(
        CORRUPTION,
        "Manifest edits (each field deleted / wrong type, bad values, inconsistent counts, "
        "fingerprints, shard entries, not JSON)",
        outcomes,
        ok=not failures,
        goal="`offline-ssld verify` fails naming the edited field (or the shard it describes)",
        notes=f"{len(edits) - len(failures)} of {len(edits)} edits named. Not detected by design "
        f"(provenance fields nothing reads for correctness; a manifest checksum would forbid "
        f"legitimate edits such as source.image_root after moving images): "
        f"{', '.join(undetected) or 'none'}." + (f" Failures: {failures}" if failures else ""),
    )
    assert not failures, failures
    # train-student refuses a structurally edited manifest with one line naming the field.
    manifest = json.loads(json.dumps(original))
    manifest["views"] = "three"
    (edited / MANIFEST).write_text(json.dumps(manifest))
    line, started = train_refusal(config, edited, monkeypatch)
    assert line and "field 'views'" in line and not started
