"""Every edit of a manifest field is named: as it is (the manifest's own checksums name the
edited field) and with its checksums recomputed, as a hostile manifest would be (the field
checks and the re-derived specs name it), or is documented as harmless by design."""

from __future__ import annotations

import json
import shutil
from collections import Counter

from offline_ssld.cache import format as cache_format
from offline_ssld.cache.format import MANIFEST
from offline_ssld.tools.audit import verify_cache
from tests.helpers import signed_manifest
from tests.reliability.common import CORRUPTION, HOSTILE, cli, dump_cli, train_refusal


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
        ("format_version 4", setter("format_version", 4), "'format_version' is 4"),
        ("format_version 2", setter("format_version", 2), "'format_version' is 2"),
        ("backend 'zip'", setter("backend", "zip"), "'backend'"),
        ("views 0", setter("views", 0), "'views'"),
        ("views 1", setter("views", 1), "'rows'"),
        ("num_images -1", setter("num_images", -1), "'num_images'"),
        ("num_images 10**15", setter("num_images", 10**15), "'num_images'"),
        ("num_images 25", setter("num_images", 25), "'num_images'"),
        ("images_per_shard 1", setter("images_per_shard", 1), "'images_per_shard'"),
        ("num_classes 5", setter("num_classes", 5), "'num_classes'"),
        ("codec.num_classes 5", setter("codec.num_classes", 5), "'codec.num_classes'"),
        ("codec.name 'topk'", setter("codec.name", "topk"), "'codec'"),
        ("codec.name 'nope'", setter("codec.name", "nope"), "'codec'"),
        ("param_names one short", lambda m: m["param_names"].pop(), "'param_names'"),
        ("param_ranges [1, 0]", setter("param_ranges.0", [1, 0]), "'param_ranges'"),
        ("param_ranges narrowed", setter("param_ranges.0", [0, 255]), "'param_ranges'"),
        ("param_names renamed", setter("param_names.2", "RandCropImage.v"), "'param_names'"),
        (
            "transform op argument renamed",
            lambda m: m["source"]["transform_ops"][1]["RandCropImage"].update(
                scala=m["source"]["transform_ops"][1]["RandCropImage"].pop("scale")
            ),
            "'source.transform_ops'",
        ),
        (
            "transform op value edited",
            setter("source.transform_ops.3.NormalizeImage.std", [0.5, 0.25, 0.25]),
            "'source.transform_ops'",
        ),
        ("codec setting added", setter("codec.k", 5), "'codec'"),
        ("dump_id not hex", setter("dump_id", "x" * 32), "'dump_id'"),
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
        ("shards[1].bytes 10**12", setter("shards.1.bytes", 10**12), "shard-00001"),
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

# Fields that describe provenance and that nothing reads for correctness: with checksums
# recomputed, an edit is harmless (and some are legitimate, such as source.image_root after
# moving the images); as they are, the manifest's checksums refuse them too.
HARMLESS_BY_DESIGN = {
    "seed 7": ("seed", 7),
    "skipped []": ("skipped", [{"path": "x.png", "line": 1, "reason": "edited"}]),
    "source.image_root": ("source.image_root", "/elsewhere"),
}


def _changed_field(original: dict, edited: object) -> str | None:
    """The top-level field an edit changed (the one the manifest checksums must name)."""
    if not isinstance(edited, dict):
        return None
    names = [*edited, *(k for k in original if k not in edited)]
    return next((k for k in names if original.get(k) != edited.get(k)), None)


def test_manifest_edits_are_named(project, monkeypatch, rlog):
    config, tmp = project
    cache = tmp / "cache_arrow"
    assert dump_cli(config, f"Offline.cache_dir={cache}").exit_code == 0
    original = json.loads((cache / MANIFEST).read_text())
    outcomes: Counter = Counter()
    hostile: Counter = Counter()
    failures: list[str] = []
    edits = _manifest_edits()
    edited = tmp / "edited"
    shutil.copytree(cache, edited)
    for description, edit, expected in edits:
        raw = RAW_MANIFESTS.get(description)
        manifest = json.loads(json.dumps(original))
        if edit is not None:
            edit(manifest)
        changed = _changed_field(original, manifest)
        # As edited (checksums stale): the manifest's own checksums name the edited field.
        # With checksums recomputed (hostile): the field checks must name it.
        versions = [("as edited", raw or json.dumps(manifest, indent=1).encode() + b"\n")]
        if raw is None:
            versions.append(("checksums recomputed", signed_manifest(manifest)))
        for how, data in versions:
            (edited / MANIFEST).write_bytes(data)
            result = cli("verify", edited)
            said = result.stderr.strip()
            want = expected if how != "as edited" or raw or changed is None else f"'{changed}'"
            if changed == "format_version":
                want = expected
            named = result.exit_code in (1, 2) and "Traceback" not in result.output
            named = named and want in said and len(said.splitlines()) == 1
            if not named:
                failures.append(f"{description} ({how}): exit {result.exit_code}, {said[-300:]!r}")
            counter = outcomes if how == "as edited" else hostile
            counter["verify names the field or shard" if named else "FAILED"] += 1
    # Provenance-only fields: refused as edited; with checksums recomputed nothing is expected.
    harmless = []
    for description, (field, value) in HARMLESS_BY_DESIGN.items():
        manifest = json.loads(json.dumps(original))
        if "." in field:
            top, sub = field.split(".")
            manifest[top][sub] = value
        else:
            manifest[field] = value
        (edited / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if verify_cache_ok(edited):
            failures.append(f"{description} (as edited): accepted")
        (edited / MANIFEST).write_bytes(signed_manifest(manifest))
        if verify_cache_ok(edited):
            harmless.append(description)
    rlog.record(
        CORRUPTION,
        "Manifest edits (each field deleted / wrong type, bad values, inconsistent counts, "
        "fingerprints, specs, shard entries, not JSON), checksums left stale",
        outcomes,
        ok=not failures,
        goal="`offline-ssld verify` fails with one line naming the edited field (or the shard "
        "it describes)",
        notes=f"{outcomes['verify names the field or shard']} of {len(edits)} edits named. "
        "The manifest's own checksums (format 3) name the edited top-level field; the "
        "provenance edits formerly undetectable by design are refused too: "
        f"{', '.join(HARMLESS_BY_DESIGN)}." + (f" Failures: {failures}" if failures else ""),
    )
    rlog.record(
        HOSTILE,
        "Hostile manifests: the same edits with the manifest's checksums recomputed",
        hostile,
        ok=not failures,
        goal="verify fails with one line naming the field: field checks, the teacher "
        "fingerprint, and the transform ops, view parameters and codec re-derived",
        notes=f"{hostile['verify names the field or shard']} of {sum(hostile.values())} named. "
        "Accepted, harmless by design (provenance nothing reads for correctness; image_root "
        "is legitimately edited after moving images, and verify --teacher-check reads images "
        f"under the config's image_root, never this one): {', '.join(harmless) or 'none'}."
        + (f" Failures: {failures}" if failures else ""),
    )
    assert not failures, failures
    # train-student refuses an edited manifest with one line naming the field, both ways.
    manifest = json.loads(json.dumps(original))
    manifest["views"] = "three"
    for data in (json.dumps(manifest, indent=1).encode() + b"\n", signed_manifest(manifest)):
        (edited / MANIFEST).write_bytes(data)
        line, started = train_refusal(config, edited, monkeypatch)
        assert line and "field 'views'" in line and not started


def verify_cache_ok(cache) -> bool:
    try:
        return verify_cache(cache).ok
    except Exception:  # noqa: BLE001 (any refusal counts as not accepted)
        return False
