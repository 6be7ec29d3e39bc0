"""dump-teacher without a hashing pass: content keys are computed as the loader reads each
image; the plan reads only the ends of each file, and whole files only to settle duplicates."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from offline_ssld import dump as dump_module
from offline_ssld.cache.format import load_manifest
from offline_ssld.cache.reader import CacheReader
from offline_ssld.data import lists
from offline_ssld.data.lists import PROBE_HEAD, PROBE_TAIL
from offline_ssld.io import content_key
from tests.helpers import plan_cache
from tests.test_dump import dump
from tests.test_subset_extend import _lines, _list, _listed


def _large_bmp(rng: np.random.Generator, middle: int | None = None) -> bytes:
    """A BMP above PROBE_HEAD + PROBE_TAIL bytes; `middle` alters one pixel in its middle
    only, so the probe (size, head, tail) is the same for every value."""
    img = rng.integers(0, 256, (110, 110, 3), dtype=np.uint8)
    if middle is not None:
        img[55, 55, 0] = middle
    data = cv2.imencode(".bmp", img)[1].tobytes()
    assert len(data) > PROBE_HEAD + PROBE_TAIL
    return data


def _count_whole_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    real = lists.read_image_bytes

    def counting(image_root, sample, list_path, *args):
        reads.append(sample.path)
        return real(image_root, sample, list_path, *args)

    monkeypatch.setattr(lists, "read_image_bytes", counting)
    monkeypatch.setattr(dump_module, "read_image_bytes", counting)
    return reads


def test_plan_reads_no_image_whole_and_keys_come_from_the_loader(project, monkeypatch):
    config, tmp = project
    big = tmp / "images" / "big"
    big.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        (big / f"b{i}.bmp").write_bytes(_large_bmp(rng))
    listing = _list(tmp, "list.txt", [*_lines(tmp), *(f"big/b{i}.bmp {i}" for i in range(3))])
    reads = _count_whole_reads(monkeypatch)
    plan = plan_cache(config, f"DataLoader.Train.dataset.cls_label_path={listing}")
    assert reads == []  # no duplicates: the plan read ends of files only
    assert plan.manifest.num_images == 27
    monkeypatch.undo()
    assert dump(config, f"DataLoader.Train.dataset.cls_label_path={listing}").exit_code == 0
    reader = CacheReader(tmp / "cache")
    stored = reader.stored_keys(len(reader.manifest.shards))
    root = tmp / "images"
    assert stored == [content_key((root / s.path).read_bytes()) for s in plan.source.samples]


def test_identical_images_share_one_row_and_equal_probes_are_hashed(project, monkeypatch):
    config, tmp = project
    images = tmp / "images"
    rng = np.random.default_rng(1)
    (images / "copy.png").write_bytes((images / "class0" / "img000.png").read_bytes())
    seed = int(rng.integers(1 << 31))
    (images / "big.bmp").write_bytes(_large_bmp(np.random.default_rng(seed)))
    (images / "big_copy.bmp").write_bytes((images / "big.bmp").read_bytes())
    (images / "big_other.bmp").write_bytes(_large_bmp(np.random.default_rng(seed), middle=7))
    extra = ["copy.png 0", "big.bmp 1", "big_copy.bmp 1", "big_other.bmp 1"]
    listing = _list(tmp, "dups.txt", [*_lines(tmp), *extra])
    reads = _count_whole_reads(monkeypatch)
    plan = plan_cache(config, f"DataLoader.Train.dataset.cls_label_path={listing}")
    # only files with equal probes are hashed in full: the PNG pair, and the three BMPs, of
    # which two are one image and the third is not (it differs in the middle only)
    expected = ["big.bmp", "big_copy.bmp", "big_other.bmp", "class0/img000.png", "copy.png"]
    assert sorted(reads) == expected
    paths = [s.path for s in plan.source.samples]
    assert "copy.png" not in paths and "big_copy.bmp" not in paths
    assert paths[-2:] == ["big.bmp", "big_other.bmp"] and len(paths) == 26
    monkeypatch.undo()
    assert dump(config, f"DataLoader.Train.dataset.cls_label_path={listing}").exit_code == 0
    manifest = load_manifest(tmp / "cache")
    assert manifest.complete and manifest.num_images == 26
    listed = _listed(config, tmp, listing, tmp / "cache")
    assert listed.first_missing() is None
    for copy, original in ((24, 0), (26, 25)):  # each copy served by its original's row
        assert np.array_equal(listed.rows[0, copy], listed.rows[0, original])


def test_extension_finds_held_images_by_path_and_copies_by_bytes(project):
    config, tmp = project
    images = tmp / "images"
    base = _list(tmp, "base.txt", _lines(tmp)[:16])
    assert dump(config, f"DataLoader.Train.dataset.cls_label_path={base}").exit_code == 0
    (images / "copy.png").write_bytes((images / "class0" / "img000.png").read_bytes())
    union = _list(tmp, "union.txt", ["copy.png 0", *_lines(tmp)])  # the copy listed first
    result = dump(config, f"DataLoader.Train.dataset.cls_label_path={union}")
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp / "cache")
    assert manifest.parts == [16, 8]  # the copy's bytes are in the cache already
    fresh = tmp / "fresh"
    result = dump(
        config, f"DataLoader.Train.dataset.cls_label_path={union}", f"Offline.cache_dir={fresh}"
    )
    assert result.exit_code == 0
    assert manifest.fingerprints["dataset"] == load_manifest(fresh).fingerprints["dataset"]


def test_probe_of_a_file_is_the_probe_of_its_bytes(tmp_path: Path):
    """The plan reads the ends of a file; the loader recomputes the probe from all its bytes."""
    rng = np.random.default_rng(2)
    small = cv2.imencode(".png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))[1].tobytes()
    big = _large_bmp(rng)
    entries = []
    for name, data in (("small.png", small), ("big.bmp", big)):
        (tmp_path / name).write_bytes(data)
        entries.append(name)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{e}\n" for e in entries))
    probes = lists.probe_images(tmp_path, lists.read_list(listing), listing, threads=1)
    assert probes == [lists.probe_key(small), lists.probe_key(big)]
    assert probes[0] == content_key(small)  # read whole by the probe: the key itself
    assert probes[1] != content_key(big)
