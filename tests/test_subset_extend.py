"""Training on any subset of a cache, and extending a cache by the images a list adds
(issue 18 items 2 and 3), on the tiny generated project: 24 images, 3 views, 7 a shard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from offline_ssld.cache import writer as writer_module
from offline_ssld.cache.fingerprint import cache_fingerprint, dataset_fingerprint
from offline_ssld.cache.format import MANIFEST, load_manifest
from offline_ssld.cache.reader import CacheReader
from offline_ssld.config.loading import load_config
from offline_ssld.data import transforms
from offline_ssld.data.listed import ListedImages
from offline_ssld.data.lists import read_list
from offline_ssld.data.transforms import DecodeImage
from offline_ssld.data.views import ImageSource
from offline_ssld.dump import run_dump
from offline_ssld.errors import CacheError, DataError
from offline_ssld.io import content_key
from offline_ssld.train import train
from tests.helpers import CLASSES, make_images, signed_manifest, write_list
from tests.test_dump import checksums, cli, dump, error_line


def _lines(tmp: Path) -> list[str]:
    return (tmp / "train_list.txt").read_text().splitlines()


def _list(tmp: Path, name: str, lines: list[str]) -> Path:
    path = tmp / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _keys_of(root: Path, listing: Path) -> list[bytes]:
    return [content_key((root / s.path).read_bytes()) for s in read_list(listing)]


def _rows_by_key(cache: Path) -> dict[bytes, dict[str, np.ndarray]]:
    reader = CacheReader(cache)
    out: dict[bytes, dict[str, np.ndarray]] = {}
    for n in range(len(reader.manifest.shards)):
        cols = reader.load_shard(n)
        for row in range(0, len(cols["key"]), reader.views):
            rows = slice(row, row + reader.views)
            out[cols["key"][row].tobytes()] = {
                "params": cols["params"][rows],
                "logits": cols["logits"][rows].astype(np.float32),
                "path": cols["path"][rows],
            }
    return out


def _listed(cfg_path: Path, tmp: Path, listing: Path, *caches: Path) -> ListedImages:
    source = ImageSource(tmp / "images", listing, read_list(listing, CLASSES))
    return ListedImages(source, [CacheReader(c) for c in caches])


# ------------------------------------------------------------------ training on a subset


def test_train_on_a_reordered_subset_records_list_and_cache(project):
    config, tmp = project
    assert dump(config).exit_code == 0
    cache = tmp / "cache"
    before = checksums(cache)
    subset = _list(tmp, "subset.txt", _lines(tmp)[15::-2])  # 8 images, another order
    cfg = load_config([str(config)], [f"DataLoader.Train.dataset.cls_label_path={subset}"])
    cfg["Global"]["epochs"] = 1
    train(cfg, "offline", progress=False)
    after = checksums(cache)
    assert after.pop("verified.json") and after == before  # no new dump: only the record
    expected = {
        "path": str(subset),
        "images": 8,
        "keys": dataset_fingerprint(_keys_of(tmp / "images", subset)),
    }
    fingerprint = cache_fingerprint(load_manifest(cache))
    record = json.loads((tmp / "output" / "metrics.jsonl").read_text().splitlines()[0])
    latest = json.loads((tmp / "output" / "latest.json").read_text())
    for where in (record, latest):
        assert where["targets"]["list"] == expected
        assert where["targets"]["fingerprint"] == fingerprint
        assert where["targets"]["path"] == str(cache)


@pytest.fixture
def dumped(project):
    config, tmp = project
    assert dump(config).exit_code == 0
    return config, tmp, tmp / "cache"


def _train_error(config: Path, listing: Path) -> str:
    cfg = load_config([str(config)], [f"DataLoader.Train.dataset.cls_label_path={listing}"])
    with pytest.raises(CacheError) as info:
        train(cfg, "offline", progress=False)
    return str(info.value)


def test_image_missing_from_the_cache_is_named_with_its_line(dumped):
    config, tmp, cache = dumped
    (new,) = make_images(tmp / "images" / "new", 1, seed=9)
    listing = _list(tmp, "more.txt", [*_lines(tmp)[:5], f"new/{new[0]} {new[1]}"])
    message = _train_error(config, listing)
    assert message.startswith(f"{listing}:6: new/{new[0]}: image is not in the cache {cache}")
    assert not (tmp / "output" / "latest.json").exists()  # refused before the first batch


def test_list_of_another_cache_is_refused_at_its_first_line_after_one_read(dumped):
    config, tmp, _ = dumped
    entries = make_images(tmp / "images" / "other", 6, seed=4)
    listing = write_list(tmp / "other.txt", [(f"other/{p}", lab) for p, lab in entries])
    message = _train_error(config, listing)
    assert message.startswith(f"{listing}:1: other/{entries[0][0]}: image is not in the cache")
    listed = _listed(config, tmp, listing, tmp / "cache")
    assert listed.first_missing() == f"{listing}:1: other/{entries[0][0]}"
    assert listed.hashed == 1  # stops at the first image the cache lacks


def test_changed_image_in_a_subset_is_refused_naming_it(dumped):
    config, tmp, _ = dumped
    subset = _list(tmp, "subset.txt", _lines(tmp)[:6])
    victim = tmp / "images" / "class2" / "img002.png"
    victim.write_bytes(victim.read_bytes() + b"\0")
    message = _train_error(config, subset)
    assert re.match(rf"{subset}:3: class2/img002.png: image changed since the dump", message)


def test_renamed_and_duplicate_images_are_found_by_their_bytes(dumped):
    config, tmp, cache = dumped
    images = tmp / "images"
    (images / "copy.png").write_bytes((images / "class0" / "img000.png").read_bytes())
    listing = _list(tmp, "renamed.txt", [*_lines(tmp)[:3], "copy.png 0"])
    listed = _listed(config, tmp, listing, cache)
    assert listed.first_missing() is None and listed.hashed == 1
    assert np.array_equal(listed.keys[3], listed.keys[0])
    assert np.array_equal(listed.rows[0, 3], listed.rows[0, 0])


def test_ensemble_members_may_differ_but_must_hold_every_listed_image(project):
    config, tmp = project
    half = _list(tmp, "half.txt", _lines(tmp)[:12])
    assert dump(config).exit_code == 0
    small = tmp / "small"
    result = dump(
        config, f"DataLoader.Train.dataset.cls_label_path={half}", f"Offline.cache_dir={small}"
    )
    assert result.exit_code == 0
    listed = _listed(config, tmp, half, tmp / "cache", small)
    assert listed.first_missing() is None
    full = CacheReader(tmp / "cache")
    for i, key in enumerate(listed.keys):  # each member's row holds the listed key
        number, image = listed.rows[0, i]
        assert full.key_at(int(number), int(image)) == key.tobytes()
    listing = tmp / "train_list.txt"
    missing = _listed(config, tmp, listing, tmp / "cache", small).first_missing()
    assert missing == f"{listing}:13: {_lines(tmp)[12].split()[0]} of {small}"


# ------------------------------------------------------------------ extending a cache


def _extend_setup(project) -> tuple[Path, Path, Path, Path, dict[str, str]]:
    """Dump the first 16 images (shards of 7, 7, 2); return the union list (all 24, the new
    ones interleaved) and the shard hashes of the base cache."""
    config, tmp = project
    lines = _lines(tmp)
    base = _list(tmp, "base.txt", lines[:16])
    union = _list(
        tmp, "union.txt", [lines[i] for i in (16, 0, 17, 1, *range(2, 16), *range(18, 24))]
    )
    result = dump(config, f"DataLoader.Train.dataset.cls_label_path={base}")
    assert result.exit_code == 0
    cache = tmp / "cache"
    return config, tmp, base, union, checksums(cache)


def test_extension_dumps_only_new_images_into_new_shards(project):
    config, tmp, base, union, before = _extend_setup(project)
    cache = tmp / "cache"
    result = dump(config, f"DataLoader.Train.dataset.cls_label_path={union}")
    assert result.exit_code == 0, result.output
    assert "wrote 2 shards" in result.stdout  # 8 new images: 7 + 1, after the 3 old shards
    after = checksums(cache)
    for name, digest in before.items():
        if name.startswith("shard-"):
            assert after[name] == digest, name  # byte-identical
    manifest = load_manifest(cache)
    assert manifest.parts == [16, 8] and manifest.complete and manifest.num_images == 24
    assert [s.images for s in manifest.shards] == [7, 7, 2, 7, 1]
    assert cli("verify", cache).exit_code == 0

    fresh = tmp / "fresh"  # the union list dumped from scratch
    assert (
        dump(
            config, f"DataLoader.Train.dataset.cls_label_path={union}", f"Offline.cache_dir={fresh}"
        ).exit_code
        == 0
    )
    fresh_manifest = load_manifest(fresh)
    assert manifest.fingerprints["dataset"] == fresh_manifest.fingerprints["dataset"]
    assert manifest.fingerprints["order"] != fresh_manifest.fingerprints["order"]
    extended, reference = _rows_by_key(cache), _rows_by_key(fresh)
    assert extended.keys() == reference.keys()
    for key, row in extended.items():  # the same views of the same images
        assert np.array_equal(row["params"], reference[key]["params"])
        np.testing.assert_allclose(row["logits"], reference[key]["logits"], atol=2e-2)

    assert (
        "nothing to do" in dump(config, f"DataLoader.Train.dataset.cls_label_path={union}").stdout
    )
    # a list that drops images deletes no rows; --overwrite alone does
    assert "nothing to do" in dump(config, f"DataLoader.Train.dataset.cls_label_path={base}").stdout
    assert load_manifest(cache).num_images == 24
    listed = _listed(config, tmp, union, cache)
    assert listed.first_missing() is None and listed.hashed == 0


@pytest.mark.parametrize(
    "override, field",
    [
        ("Offline.codec=topk", "codec"),
        (
            "DataLoader.Train.dataset.transform_ops.1.RandCropImage.size=12",
            "fingerprints.transforms",
        ),
        ("Offline.views=2", "views"),
    ],
)
def test_extension_under_other_settings_is_refused_naming_the_field(project, override, field):
    config, tmp, _, union, before = _extend_setup(project)
    line = error_line(dump(config, f"DataLoader.Train.dataset.cls_label_path={union}", override))
    assert f"({field}:" in line and "--overwrite" in line, line
    assert checksums(tmp / "cache") == before


def test_killed_extension_leaves_the_old_cache_usable_and_resumes(project, monkeypatch):
    config, tmp, base, union, before = _extend_setup(project)
    cache = tmp / "cache"
    real = writer_module.write_shard
    calls: list[int] = []

    def write_then_die(cache_dir, backend, index, *args):
        calls.append(index)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(cache_dir, backend, index, *args)

    monkeypatch.setattr(writer_module, "write_shard", write_then_die)
    cfg = load_config([str(config)], [f"DataLoader.Train.dataset.cls_label_path={union}"])
    with pytest.raises(CacheError, match="writing a shard failed"):
        run_dump(cfg, progress=False)
    monkeypatch.undo()
    manifest = json.loads((cache / MANIFEST).read_text())
    assert manifest["parts"] == [16, 8] and not manifest["complete"]
    assert len(manifest["shards"]) == 4
    now = checksums(cache)
    assert all(now[n] == d for n, d in before.items() if n.startswith("shard-"))
    # the old list trains from the unfinished cache; the new images are not there yet
    assert _listed(config, tmp, base, cache).first_missing() is None
    assert _listed(config, tmp, union, cache).first_missing() is not None
    other = _list(tmp, "other.txt", _lines(tmp)[:20])
    line = error_line(dump(config, f"DataLoader.Train.dataset.cls_label_path={other}"))
    assert "unfinished" in line and "--overwrite" in line

    result = dump(config, f"DataLoader.Train.dataset.cls_label_path={union}")
    assert result.exit_code == 0 and "wrote 1 shards" in result.stdout, result.output
    assert load_manifest(cache).complete and cli("verify", cache).exit_code == 0
    assert _listed(config, tmp, union, cache).first_missing() is None


def test_dump_decodes_each_image_once(project, monkeypatch):
    """PNGs decode through DecodeImage, JPEGs through the fused libjpeg-turbo path (once per
    DCT scale; these small crops all need full size): 24 images x 3 views, 24 decodes."""
    from offline_ssld.data import decode

    config, tmp = project
    decoded: list[int] = []
    real, real_jpeg = DecodeImage.apply, decode.decode_rgb

    def counting(self, img, params):
        decoded.append(len(img))
        return real(self, img, params)

    def counting_jpeg(data, size, scale):
        decoded.append(len(data))
        return real_jpeg(data, size, scale)

    monkeypatch.setattr(DecodeImage, "apply", counting)
    monkeypatch.setattr(decode, "decode_rgb", counting_jpeg)
    assert dump(config).exit_code == 0
    assert len(decoded) == 24  # 24 images x 3 views, one decode each


def test_manifest_parts_are_validated(dumped):
    _, _, cache = dumped
    path = cache / MANIFEST
    good = json.loads(path.read_text())
    unfinished = {**good, "parts": [21, 3], "shards": good["shards"][1:], "complete": False}
    cases = (
        ({**good, "parts": [20]}, "'parts'"),
        ({**good, "parts": [10, 15]}, "'parts'"),
        ({**good, "parts": [10, 14]}, "'images'"),
        (unfinished, "misses a shard of an earlier part"),
    )
    for obj, problem in cases:  # checksums recomputed: the parts checks must refuse it
        path.write_bytes(signed_manifest(obj))
        with pytest.raises(CacheError, match=problem):
            load_manifest(cache)
    path.write_bytes(signed_manifest({**unfinished, "shards": good["shards"][:3]}))
    assert load_manifest(cache).usable  # an extension under way: the first part is whole
    del good["parts"]  # format 3 always writes parts
    path.write_bytes(signed_manifest(good))
    with pytest.raises(CacheError, match="'parts' is missing"):
        load_manifest(cache)


def test_precheck_decodes_only_files_it_cannot_vouch_for(monkeypatch):
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    png = cv2.imencode(".png", rgb)[1].tobytes()
    jpeg = cv2.imencode(".jpg", rgb)[1].tobytes()
    decode = DecodeImage("k")
    decoded: list[int] = []
    real = transforms.cv2.imdecode
    monkeypatch.setattr(transforms.cv2, "imdecode", lambda *a: decoded.append(1) or real(*a))
    for whole in (png, jpeg):
        decode.precheck(whole)
    assert decoded == []  # whole PNG and JPEG: the header is enough
    with pytest.raises(DataError, match="cannot decode"):
        decode.precheck(png[: len(png) // 2])  # truncated: decoded on trial, refused
    assert decoded == [1]
