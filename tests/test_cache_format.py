"""offline_ssld/cache/format.py: the manifest survives a save/load round trip unchanged, and a
manifest with a bad field is refused with an error naming that field."""

from __future__ import annotations

import json
import re

import pytest

from offline_ssld.cache.format import MANIFEST, load_manifest
from offline_ssld.errors import CacheError
from tests.helpers import plan_cache, signed_manifest, write_cache


@pytest.fixture
def cache(project):
    """A complete cache of the tiny project, written through the cache writer."""
    config, tmp = project
    write_cache(plan_cache(config), tmp / "cache")
    return tmp / "cache"


def test_manifest_round_trip(project, tmp_path):
    config, _ = project
    manifest = plan_cache(config).manifest
    manifest.save(tmp_path)
    assert load_manifest(tmp_path) == manifest


def test_written_manifest_lists_every_shard(cache):
    manifest = load_manifest(cache)
    assert manifest.complete and len(manifest.shards) == manifest.num_shards > 1
    assert manifest.rows == manifest.num_images * manifest.views
    assert all((cache / shard.name).stat().st_size == shard.bytes for shard in manifest.shards)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda m: m.update(views="4"), "field 'views' has the wrong type"),
        (lambda m: m.update(views=0), "field 'views' must be positive"),
        (lambda m: m.pop("seed"), "field 'seed' is missing"),
        (lambda m: m.update(colour="blue"), "unknown field 'colour'"),
        (lambda m: m.update(complete=False), "field 'complete'"),
        (lambda m: m["shards"][0].update(rows=1), "field 'rows'"),
        (lambda m: m["teacher"].update(class_num=99), "field 'teacher.class_num'"),
    ],
)
def test_bad_field_is_refused_by_name(cache, edit, named):
    """Checksums recomputed after the edit: the field checks themselves name it."""
    path = cache / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_bytes(signed_manifest(manifest))
    with pytest.raises(CacheError, match=re.escape(named)) as info:
        load_manifest(cache)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda m: m.update(seed=7), "field 'seed' does not match its checksum"),
        (lambda m: m["source"].update(image_root="/"), "field 'source' does not match"),
        (lambda m: m["integrity"].update(views="0" * 64), "field 'views' does not match"),
        (lambda m: m.pop("dump_id"), "field 'dump_id' is missing ('integrity' lists it)"),
        (lambda m: m.update(extra=1), "field 'extra' has no checksum"),
        (lambda m: m.pop("integrity"), "field 'integrity' is missing"),
    ],
)
def test_manifest_checksums_name_the_edited_field(cache, edit, named):
    path = cache / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    with pytest.raises(CacheError, match=re.escape(named)):
        load_manifest(cache)


def test_manifest_must_be_in_canonical_form(cache):
    """Bytes that parse to the same manifest but are not what the writer wrote (here a
    unicode escape's hex digits in upper case) are refused, naming the field."""
    path = cache / MANIFEST
    raw = path.read_text()
    assert raw.endswith("}\n")
    path.write_text(raw[:-1])  # the final newline only
    with pytest.raises(CacheError, match="field 'integrity' is not in canonical form"):
        load_manifest(cache)
    manifest = json.loads(raw)
    manifest["source"]["image_root"] = "/imagés"
    path.write_bytes(signed_manifest(manifest))
    escaped = path.read_bytes()
    assert b"\\u00e9" in escaped
    path.write_bytes(escaped.replace(b"\\u00e9", b"\\u00E9"))
    assert json.loads(path.read_bytes()) == json.loads(escaped)
    with pytest.raises(CacheError, match="field 'source' is not in canonical form"):
        load_manifest(cache)


def test_not_a_cache_and_not_json(tmp_path):
    with pytest.raises(CacheError, match="not an offline-ssld cache"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{")
    with pytest.raises(CacheError, match="not valid JSON"):
        load_manifest(tmp_path)
