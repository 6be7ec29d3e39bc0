"""Tests for offline_ssld.data.lists: list parsing, path safety, content keys."""

from __future__ import annotations

import os

import pytest

from offline_ssld.data.lists import (
    UNLABELED,
    Sample,
    hash_images,
    read_image_bytes,
    read_list,
    resolve,
)
from offline_ssld.errors import DataError
from offline_ssld.io import KEY_BYTES, content_key


def test_labeled_unlabeled_and_blank_lines(tmp_path):
    path = tmp_path / "train_list.txt"
    path.write_bytes(b"a/x.png 0\n\n   \nb/y.jpg\n c/z.png   3 \r\n./d/w.png 1\n")
    samples = read_list(path, class_num=4)
    assert samples == [
        Sample("a/x.png", 0, 1),
        Sample("b/y.jpg", UNLABELED, 4),
        Sample("c/z.png", 3, 5),
        Sample("d/w.png", 1, 6),
    ]


@pytest.mark.parametrize(
    "lines, bad_line, pattern",
    [
        (["a.png 0", "../b.png 1"], 2, "leaves image_root"),
        (["a.png 0", "", "x/../../b.png 1"], 3, "leaves image_root"),
        (["/etc/passwd 0"], 1, "is absolute"),
        (["a.png 0", "b.png one"], 2, "is not an integer"),
        (["a.png 0", "b.png 1.0"], 2, "is not an integer"),
        (["a.png 4"], 1, r"label 4 outside \[0, 4\)"),
        (["a.png -2"], 1, "label -2 outside"),
        (["a.png 0", "b.png 1", "./a.png 2"], 3, "already listed on line 1"),
        (["a.png 0 extra"], 1, "got 3 fields"),
        (["a.png 0", "b c d e"], 2, "got 4 fields"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, lines, bad_line, pattern):
    path = tmp_path / "my_list.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=pattern) as info:
        read_list(path, class_num=4)
    assert f"my_list.txt:{bad_line}:" in str(info.value)


def test_non_utf8_line(tmp_path):
    path = tmp_path / "latin1_list.txt"
    path.write_bytes(b"a.png 0\n\ncaf\xe9.png 1\n")
    with pytest.raises(DataError, match="not valid UTF-8") as info:
        read_list(path, class_num=4)
    assert "latin1_list.txt:3:" in str(info.value)


def test_empty_and_missing_list(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n \n")
    with pytest.raises(DataError, match="empty.txt: list file holds no images"):
        read_list(path)
    with pytest.raises(DataError, match="cannot read list file"):
        read_list(tmp_path / "missing.txt")


def test_label_without_class_num_only_needs_non_negative(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text("a.png 1000\n")
    assert read_list(path)[0].label == 1000


def test_symlink_outside_image_root_is_refused(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "inside.png").write_bytes(b"in")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    os.symlink(outside, root / "link.png")
    os.symlink(root / "inside.png", root / "ok_link.png")
    listing = tmp_path / "list.txt"
    listing.write_text("inside.png 0\nlink.png 1\nok_link.png 0\n")
    samples = read_list(listing)
    assert resolve(root, samples[0], listing) == (root / "inside.png").resolve()
    assert resolve(root, samples[2], listing) == (root / "inside.png").resolve()
    with pytest.raises(DataError, match="resolves outside image_root") as info:
        resolve(root, samples[1], listing)
    assert "list.txt:2:" in str(info.value)
    with pytest.raises(DataError, match="outside image_root"):
        read_image_bytes(root, samples[1], listing)


def test_missing_image_names_line(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text("gone.png 0\n")
    with pytest.raises(DataError, match="cannot read") as info:
        read_image_bytes(root, read_list(listing)[0], listing)
    assert "list.txt:1:" in str(info.value)


def test_content_key():
    data = bytes(range(256)) * 4
    key = content_key(data)
    assert isinstance(key, bytes) and len(key) == KEY_BYTES == 16
    assert content_key(bytes(data)) == key
    for position in (0, 511, len(data) - 1):
        changed = bytearray(data)
        changed[position] ^= 0x01
        assert content_key(bytes(changed)) != key
    assert content_key(data + b"\x00") != key


def test_identical_files_share_a_key_and_bad_ones_are_returned(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "a.png").write_bytes(b"same bytes")
    (root / "b.png").write_bytes(b"same bytes")
    (root / "c.png").write_bytes(b"other bytes")
    listing = tmp_path / "list.txt"
    listing.write_text("a.png 0\nb.png 1\nc.png 2\nd.png 3\n")

    def check(data: bytes) -> None:
        if data.startswith(b"other"):
            raise DataError("cannot decode image")

    results = hash_images(root, read_list(listing), listing, threads=2)
    assert results[0] == results[1] == content_key(b"same bytes")
    assert results[2] == content_key(b"other bytes") != results[0]
    assert isinstance(results[3], DataError) and "list.txt:4:" in str(results[3])

    results = hash_images(root, read_list(listing), listing, check=check, threads=2)
    assert isinstance(results[2], DataError)
    assert "list.txt:3: c.png: cannot decode image" in str(results[2])


def test_tab_delimiter_keeps_spaces_in_paths(tmp_path):
    """PaddleClas's `delimiter: "\\t"` (a PULC config) splits on tabs only."""
    listing = tmp_path / "list.txt"
    listing.write_text("dir a/img 1.jpg\t3\nplain.jpg\t0\n")
    samples = read_list(listing, 5, "\t")
    assert [(s.path, s.label) for s in samples] == [("dir a/img 1.jpg", 3), ("plain.jpg", 0)]
    with pytest.raises(DataError, match=r"list.txt:1: expected 'path \[label\]'"):
        read_list(listing, 5)  # on whitespace the first line has four fields
