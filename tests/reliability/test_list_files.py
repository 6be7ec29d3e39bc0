"""Hostile list files are refused with list:line before anything is touched."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import numpy as np

from offline_ssld.cache.format import MANIFEST, load_manifest
from offline_ssld.cache.reader import CacheReader
from offline_ssld.config.loading import load_config
from offline_ssld.data.listed import ListedImages
from offline_ssld.data.lists import read_list
from offline_ssld.data.transforms import Pipeline, build_ops
from offline_ssld.data.views import ImageSource, ReplayDataset
from offline_ssld.dump import run_dump
from offline_ssld.train import train
from tests.helpers import CLASSES
from tests.reliability.common import HOSTILE, dump_cli, one_error_line


def test_hostile_list_files_at_dump_level(project, rlog):
    """Each bad list line: dump-teacher exits 2 with one line naming list:line, before the
    cache or the teacher is touched."""
    config, tmp = project
    good = (tmp / "train_list.txt").read_text().splitlines()
    outside = tmp / "secret.png"
    shutil.copy(tmp / "images" / good[0].split()[0], outside)
    os.symlink(outside, tmp / "images" / "escape.png")
    (tmp / "images" / "a dir").mkdir()
    cases: list[tuple[str, bytes, int, str, bool]] = [
        # (case, line(s) appended as bytes, line number named, text, fails at parse time)
        ("path with ..", b"../secret.png 0", 25, "leaves image_root", True),
        ("path with .. inside", b"class0/../../secret.png 0", 25, "leaves image_root", True),
        ("absolute path", b"/etc/passwd 0", 25, "is absolute", True),
        ("Windows absolute path", b"C:\\images\\x.png 0", 25, "is absolute", True),
        ("symlink leaving image_root", b"escape.png 0", 25, "resolves outside image_root", False),
        ("non-UTF-8 line", b"caf\xe9.png 1", 25, "not valid UTF-8", True),
        ("NUL byte in path", b"class0/img\x00.png 1", 25, "NUL", True),
        ("duplicate path", good[0].encode(), 25, "already listed on line 1", True),
        ("duplicate path spelled ./", b"./" + good[0].encode(), 25, "already listed", True),
        ("label out of range", b"x.png 4", 25, "label 4 outside [0, 4)", True),
        ("negative label", b"x.png -2", 25, "label -2 outside", True),
        ("label not an integer", b"x.png cat", 25, "is not an integer", True),
        ("label a float", b"x.png 1.0", 25, "is not an integer", True),
        ("three fields", b"x.png 1 2", 25, "got 3 fields", True),
        ("bad line after blank lines", b"\n \n\t\nx.png 9", 28, "label 9 outside", True),
        ("path with a space", b"a dir 0", 25, "got 3 fields", True),
        ("directory as image", b"class0 0", 25, "cannot read", False),
        ("missing image", b"gone.png 0", 25, "cannot read", False),
    ]
    outcomes: Counter = Counter()
    failures: list[str] = []
    for case, extra, line_number, text, at_parse in cases:
        listing = tmp / "hostile_list.txt"
        listing.write_bytes(("\n".join(good)).encode() + b"\n" + extra + b"\n")
        shutil.rmtree(tmp / "cache", ignore_errors=True)
        result = dump_cli(config, f"DataLoader.Train.dataset.cls_label_path={listing}")
        line = one_error_line(result)
        ok = (
            line is not None
            and f"hostile_list.txt:{line_number}:" in line
            and text in line
            and not (tmp / "cache").exists()
        )
        if ok and not at_parse:  # unreadable images may be skipped, and are recorded
            again = dump_cli(
                config, f"DataLoader.Train.dataset.cls_label_path={listing}", flags=("--skip-bad",)
            )
            skipped = json.loads((tmp / "cache" / MANIFEST).read_text())["skipped"]
            ok = again.exit_code == 0 and [s["line"] for s in skipped] == [line_number]
        outcomes["one line naming list:line, exit 2" if ok else "FAILED"] += 1
        if not ok:
            failures.append(f"{case}: {result.output[-300:]!r}")
    # Blank and whitespace-only lines, CRLF endings: accepted, same rows as the clean list.
    listing = tmp / "blank_list.txt"
    listing.write_bytes(b"\r\n".join([b"", *(g.encode() + b"  " for g in good), b"   ", b""]))
    shutil.rmtree(tmp / "cache", ignore_errors=True)
    result = dump_cli(config, f"DataLoader.Train.dataset.cls_label_path={listing}")
    blank_ok = result.exit_code == 0 and load_manifest(tmp / "cache").num_images == 24
    outcomes["blank lines and CRLF accepted" if blank_ok else "FAILED"] += 1
    if not blank_ok:
        failures.append(f"blank lines: {result.output[-300:]}")
    rlog.record(
        HOSTILE,
        "List files: .., absolute and Windows paths, symlink escaping image_root, non-UTF-8, "
        "NUL byte, duplicates, bad labels, extra fields, directories, missing files, blank lines",
        outcomes,
        ok=not failures,
        goal="dump-teacher exits 2 with one line naming list:line, before the cache exists; "
        "unreadable images can be skipped with --skip-bad and are recorded in the manifest",
        notes=f"{len(cases) + 1} cases: "
        + "; ".join(c[0] for c in cases)
        + "; blank lines"
        + (f". Failures: {failures}" if failures else ""),
    )
    assert not failures, failures


def test_two_paths_with_identical_bytes(project, rlog):
    """Identical files under two paths: one set of rows is stored, training finds both."""
    config, tmp = project
    good = (tmp / "train_list.txt").read_text().splitlines()
    first_path, first_label = good[0].split()
    shutil.copy(tmp / "images" / first_path, tmp / "images" / "copy_of_first.png")
    listing = tmp / "dup_list.txt"
    listing.write_text("\n".join([*good, f"copy_of_first.png {first_label}"]) + "\n")
    overrides = [f"DataLoader.Train.dataset.cls_label_path={listing}", "Global.epochs=1"]
    cfg = load_config([str(config)], overrides)
    run_dump(cfg, progress=False)
    manifest = load_manifest(tmp / "cache")
    reader = CacheReader(tmp / "cache")
    samples = read_list(listing, CLASSES)
    dataset_cfg = cfg["DataLoader"]["Train"]["dataset"]
    pipeline = Pipeline(build_ops(dataset_cfg["transform_ops"], "ops"))
    source = ImageSource(dataset_cfg["image_root"], listing, samples)
    listed = ListedImages(source, [reader])
    assert listed.first_missing() is None
    dataset = ReplayDataset(source, pipeline, reader, listed)
    a, b = dataset[0], dataset[len(samples) - 1]
    result = train(cfg, "offline", progress=False)
    ok = (
        manifest.num_images == 24
        and manifest.rows == 24 * 3
        and len(samples) == 25
        and np.array_equal(a[0], b[0])
        and np.array_equal(a[1], b[1])
        and len(result.train_seconds) == 1
    )
    rlog.record(
        HOSTILE,
        "Two list paths with identical bytes",
        {"one set of rows stored, both found in training" if ok else "FAILED": 1},
        ok=ok,
        goal="the cache stores one set of rows (content keyed); training reads both paths",
        notes=f"25 list lines, {manifest.num_images} images and {manifest.rows} rows stored; "
        "an epoch of train-student ran over all 25 samples.",
    )
    assert ok
