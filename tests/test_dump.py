"""End-to-end tests of dump-teacher, inspect and verify on the tiny generated project."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import paddle
import pytest
import yaml
from click.testing import CliRunner

from offline_ssld import dump as dump_module
from offline_ssld.atomic import TMP_MARK
from offline_ssld.cache.codecs import FP16Codec
from offline_ssld.cache.format import FORMAT_VERSION, MANIFEST
from offline_ssld.cache.reader import CacheReader
from offline_ssld.cli import main
from offline_ssld.config.loading import load_config
from offline_ssld.config.specs import ModelSpec
from offline_ssld.data.transforms import Pipeline, build_ops
from offline_ssld.data.views import view_rng
from offline_ssld.errors import DataError
from offline_ssld.io import content_key
from offline_ssld.models import build_model, load_weights, save_weights
from tests.helpers import CLASSES, TEACHER, make_images, save_random_weights, write_list

CLI = Path(sys.executable).with_name("offline-ssld")
ROWS = 24 * 3  # project: 24 images x 3 views


# --------------------------------------------------------------------------------- helpers


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def dump(config: Path, *overrides: str, flags: tuple[str, ...] = ()):
    args = ["dump-teacher", "-c", config, "--quiet", *flags]
    for option in overrides:
        args += ["-o", option]
    return cli(*args)


def error_line(result) -> str:
    """The single `error: ...` line of a failed command (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def load_cfg(config: Path) -> dict:
    return yaml.safe_load(config.read_text())


def all_shards(cache_dir: Path) -> list[dict[str, np.ndarray]]:
    reader = CacheReader(cache_dir)
    return [reader.load_shard(n) for n in range(len(reader.manifest.shards))]


def assert_same_rows(a: Path, b: Path) -> None:
    shards_a, shards_b = all_shards(a), all_shards(b)
    assert len(shards_a) == len(shards_b) > 0
    for cols_a, cols_b in zip(shards_a, shards_b, strict=True):
        assert sorted(cols_a) == sorted(cols_b)
        for name in cols_a:
            assert cols_a[name].dtype == cols_b[name].dtype, name
            assert np.array_equal(cols_a[name], cols_b[name]), name


def checksums(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


@pytest.fixture
def dumped(project):
    """The project dumped once with the default codec (fp16, arrow)."""
    config, tmp = project
    result = dump(config)
    assert result.exit_code == 0, result.output
    return config, tmp, tmp / "cache"


# --------------------------------------------------------------------------------- replay


def test_replay_is_bit_identical_to_teacher_input(dumped):
    config, tmp, cache = dumped
    cfg = load_cfg(config)
    dataset = cfg["DataLoader"]["Train"]["dataset"]
    pipeline = Pipeline(build_ops(dataset["transform_ops"], "ops"))
    reader = CacheReader(cache)
    m = reader.manifest
    assert (m.num_images, m.rows, m.views) == (24, ROWS, 3)
    teacher = build_model(ModelSpec(TEACHER, CLASSES, None, "Arch"))
    load_weights(teacher, cfg["Arch"]["models"][0]["Teacher"]["pretrained"], "w")
    teacher.eval()
    codec = FP16Codec(CLASSES)
    batch = cfg["Offline"]["batch_size"]
    for number in range(len(m.shards)):
        cols = reader.load_shard(number)
        replayed = []
        for row in range(len(cols["key"])):
            data = (Path(dataset["image_root"]) / cols["path"][row]).read_bytes()
            key = content_key(data)
            assert key == cols["key"][row].tobytes()
            view = int(cols["view"][row, 0])
            drawn_x, drawn_params = pipeline.draw(data, view_rng(m.seed, key, view))
            x = pipeline.replay(data, cols["params"][row])
            assert np.array_equal(drawn_params, cols["params"][row])
            assert x.dtype == drawn_x.dtype and np.array_equal(x, drawn_x)
            replayed.append(x)
        # The same batches as the dump (a batch never crosses a shard).
        with paddle.no_grad():
            logits = np.concatenate(
                [
                    teacher(paddle.to_tensor(np.stack(replayed[i : i + batch]))).numpy()
                    for i in range(0, len(replayed), batch)
                ]
            )
        assert codec.compare({"logits": cols["logits"]}, logits) <= 1e-4


def test_views_of_an_image_differ(dumped):
    _, _, cache = dumped
    params = np.concatenate([c["params"] for c in all_shards(cache)]).reshape(24, 3, -1)
    distinct = sum(len({p.tobytes() for p in views}) == 3 for views in params)
    assert distinct >= 20


# --------------------------------------------------------------------------------- backends


@pytest.mark.parametrize("codec", ["fp16", "topk", "sampled"])
def test_arrow_and_hdf5_hold_identical_rows(project, codec):
    config, tmp = project
    dirs = {}
    for backend in ("arrow", "hdf5"):
        dirs[backend] = tmp / f"cache_{backend}"
        result = dump(
            config,
            f"Offline.format={backend}",
            f"Offline.codec={codec}",
            "Offline.topk=2",
            f"Offline.cache_dir={dirs[backend]}",
        )
        assert result.exit_code == 0, result.output
    suffixes = {backend: {p.suffix for p in d.glob("shard-*")} for backend, d in dirs.items()}
    assert suffixes == {"arrow": {".arrow"}, "hdf5": {".h5"}}
    # Independent runs: equal rows also show the sampled codec is deterministic given seed.
    assert_same_rows(dirs["arrow"], dirs["hdf5"])
    manifest = CacheReader(dirs["hdf5"]).manifest
    assert manifest.codec["name"] == codec and manifest.rows == ROWS


# --------------------------------------------------------------------------------- resume


def test_resume_after_sigkill_matches_uninterrupted_dump(project):
    config, tmp = project
    root = tmp / "big_images"
    listing = write_list(tmp / "big_list.txt", make_images(root, 200, seed=1))
    overrides = [
        f"DataLoader.Train.dataset.image_root={root}",
        f"DataLoader.Train.dataset.cls_label_path={listing}",
        "Offline.views=4",
        "Offline.shard_size=80",  # 20 images a shard, 10 shards
        "Offline.batch_size=4",
    ]
    killed = tmp / "killed"
    args = ["dump-teacher", "-c", str(config), "--quiet", "-o", f"Offline.cache_dir={killed}"]
    for option in overrides:
        args += ["-o", option]
    env = {**os.environ, "GLOG_minloglevel": "2"}
    log = tmp / "killed.log"
    manifest_path = killed / MANIFEST
    with open(log, "wb") as sink:
        proc = subprocess.Popen([str(CLI), *args], stdout=sink, stderr=sink, env=env)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    state = json.loads(manifest_path.read_text())
                except (FileNotFoundError, json.JSONDecodeError):
                    state = None
                if state and state["shards"] and not state["complete"]:
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.005)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
    tail = log.read_text(errors="replace")[-2000:]
    assert proc.returncode == -signal.SIGKILL, f"dump was not killed mid-run: {tail}"
    done_before = len(json.loads(manifest_path.read_text())["shards"])
    assert 1 <= done_before < 10

    result = cli(*args[:3], "--quiet", "-o", f"Offline.cache_dir={killed}", *_o(overrides))
    assert result.exit_code == 0, result.output
    # A shard renamed into place just before the kill, but not yet in the manifest, is whole
    # by construction and is adopted rather than rewritten: at most one fewer to write.
    wrote = int(re.search(r"wrote (\d+) shards", result.stdout).group(1))
    assert wrote in (10 - done_before, 10 - done_before - 1), result.stdout

    reference = tmp / "reference"
    result = cli(*args[:3], "--quiet", "-o", f"Offline.cache_dir={reference}", *_o(overrides))
    assert result.exit_code == 0, result.output
    assert_same_rows(killed, reference)

    names = [s["name"] for s in json.loads(manifest_path.read_text())["shards"]]
    assert len(names) == len(set(names)) == 10
    assert not [p for p in killed.iterdir() if TMP_MARK in p.name]
    assert sorted(p.name for p in killed.iterdir()) == sorted([MANIFEST, *names])
    assert cli("verify", killed).exit_code == 0


def _o(overrides: list[str]) -> list[str]:
    return [part for option in overrides for part in ("-o", option)]


# --------------------------------------------------------------------------------- refusals


def test_refuses_a_cache_of_other_inputs(dumped):
    config, tmp, cache = dumped
    before = checksums(cache)
    other_weights = save_random_weights(TEACHER, tmp / "other.safetensors", seed=1)
    entries = [line.split() for line in (tmp / "train_list.txt").read_text().splitlines()]
    shorter = write_list(tmp / "shorter_list.txt", entries[:-1])
    cases = {
        "fingerprints.teacher": [f"Offline.teacher_weights={other_weights}"],
        "views": ["Offline.views=2"],
        "seed": ["Offline.seed=3"],
        "fingerprints.transforms": [
            "DataLoader.Train.dataset.transform_ops.1.RandCropImage.size=12"
        ],
        "codec": ["Offline.codec=topk"],
        "backend": ["Offline.format=hdf5"],
    }
    for field, overrides in cases.items():
        line = error_line(dump(config, *overrides))
        assert field in line and "--overwrite" in line, line
        assert str(cache) in line
        assert checksums(cache) == before, field
    # A list that drops an image is no other dataset: the cache holds it all, rows stay.
    result = dump(config, f"DataLoader.Train.dataset.cls_label_path={shorter}")
    assert result.exit_code == 0 and "nothing to do" in result.stdout, result.output
    assert checksums(cache) == before

    result = dump(config, "Offline.codec=topk", flags=("--overwrite",))
    assert result.exit_code == 0, result.output
    reader = CacheReader(cache)
    assert reader.manifest.codec["name"] == "topk" and reader.manifest.rows == ROWS
    assert "logits" not in reader.load_shard(0)
    after = checksums(cache)
    assert after.keys() == before.keys()
    assert all(after[name] != before[name] for name in before)


def test_non_cache_directory_refused_and_complete_cache_is_nothing_to_do(dumped):
    config, tmp, cache = dumped
    result = dump(config)
    assert result.exit_code == 0 and "nothing to do" in result.stdout

    other = tmp / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    line = error_line(dump(config, f"Offline.cache_dir={other}"))
    assert "not an offline-ssld cache" in line and "notes.txt" in line
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    # --overwrite replaces caches, never a user's other files.
    line = error_line(dump(config, f"Offline.cache_dir={other}", flags=("--overwrite",)))
    assert "not an offline-ssld cache" in line
    assert (other / "notes.txt").read_text() == "keep me"


def test_views_stored_once_per_image_with_narrow_params(dumped):
    """Format 2: one row per image (key, path, label once), each param in the narrowest
    integer type of the range its op declares, and a view read touches only its row."""
    _, tmp, cache = dumped
    reader = CacheReader(cache)
    m = reader.manifest
    assert m.format_version == FORMAT_VERSION == 3
    assert m.param_ranges == [[0, 65534], [0, 65534], [1, 65535], [1, 65535], [0, 1]]
    shard = reader.shard(0)
    images = m.shards[0].images
    dtypes = {name: (v.dtype, v.shape) for name, v in shard.numeric.items()}
    assert dtypes["key"] == (np.dtype("uint8"), (images, 16))
    assert dtypes["label"] == (np.dtype("int8"), (images, 1))  # 4 classes and -1
    for name in ("x", "y", "w", "h"):
        assert dtypes[f"params.RandCropImage.{name}"] == (np.dtype("uint16"), (images, m.views))
    assert dtypes["params.RandFlipImage.flip"] == (np.dtype("uint8"), (images, m.views))
    assert dtypes["logits"] == (np.dtype("float16"), (images, m.views * CLASSES))
    rows = reader.load_shard(0)
    for image in range(images):
        hit = reader.lookup(shard.numeric["key"][image].tobytes())
        assert hit == (0, image)
        for view in range(m.views):
            params, payload = reader.read_view(0, image, view)
            row = image * m.views + view
            assert np.array_equal(params, rows["params"][row])
            assert np.array_equal(payload[0][0], rows["logits"][row])  # fp16: one column
    assert reader.lookup(b"\0" * 16) is None


def test_older_format_is_refused_naming_version_and_conversion(dumped):
    config, tmp, cache = dumped
    manifest = json.loads((cache / MANIFEST).read_text())
    manifest["format_version"] = 1
    del manifest["param_ranges"]  # a version-1 manifest has no such field
    (cache / MANIFEST).write_text(json.dumps(manifest))
    for result in (cli("verify", cache), dump(config)):
        line = error_line(result)
        assert "format_version' is 1" in line and "--overwrite" in line, line
    result = dump(config, flags=("--overwrite",))  # the conversion the message names
    assert result.exit_code == 0, result.output
    assert CacheReader(cache).manifest.format_version == FORMAT_VERSION


# --------------------------------------------------------------------------------- bad input


def _bad_list(tmp: Path, extra: str | None = None, relabel: int | None = None) -> Path:
    lines = (tmp / "train_list.txt").read_text().splitlines()
    if relabel is not None:
        path, _ = lines[relabel - 1].split()
        lines[relabel - 1] = f"{path} 7"
    if extra is not None:
        lines.append(extra)
    bad = tmp / "bad_list.txt"
    bad.write_text("\n".join(lines) + "\n")
    return bad


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", ["bad_list.txt:25:", "cannot read"]),
        ("undecodable", ["bad_list.txt:25:", "cannot decode"]),
        ("label", ["bad_list.txt:3:", "label 7 outside [0, 4)"]),
        ("dotdot", ["bad_list.txt:25:", "leaves image_root"]),
        ("seed", ["Offline.seed", "non-negative integer"]),
        ("op", ["DataLoader.Train.dataset.transform_ops.1", "unknown transform op 'RandBogus'"]),
        ("weights", ["Offline.teacher_weights", "class_num"]),
    ],
)
def test_bad_input_fails_before_teacher_time(project, case, expected):
    config, tmp = project
    overrides: list[str] = []
    if case == "missing":
        overrides.append(f"DataLoader.Train.dataset.cls_label_path={_bad_list(tmp, 'gone.png 1')}")
    elif case == "undecodable":
        (tmp / "images" / "bad.png").write_bytes(b"\x89PNG not really an image" * 3)
        overrides.append(f"DataLoader.Train.dataset.cls_label_path={_bad_list(tmp, 'bad.png 1')}")
    elif case == "label":
        overrides.append(f"DataLoader.Train.dataset.cls_label_path={_bad_list(tmp, relabel=3)}")
    elif case == "dotdot":
        bad = _bad_list(tmp, "../distill.yaml 0")
        overrides.append(f"DataLoader.Train.dataset.cls_label_path={bad}")
    elif case == "seed":
        overrides.append("Offline.seed=-1")
    elif case == "op":
        overrides.append("DataLoader.Train.dataset.transform_ops.1={'RandBogus': None}")
    else:
        paddle.seed(0)
        wrong = tmp / "ten_classes.safetensors"
        save_weights(build_model(ModelSpec(TEACHER, 10, None, "Arch")), wrong)
        overrides.append(f"Offline.teacher_weights={wrong}")
    line = error_line(dump(config, *overrides))
    for part in expected:
        assert part in line, line
    assert not (tmp / "cache").exists()  # refused before the cache (and the teacher) is touched

    if case in ("missing", "undecodable"):
        assert "--skip-bad" in line
        result = dump(config, *overrides, flags=("--skip-bad",))
        assert result.exit_code == 0, result.output
        manifest = json.loads((tmp / "cache" / MANIFEST).read_text())
        assert manifest["complete"] and manifest["num_images"] == 24
        assert [(s["path"], s["line"]) for s in manifest["skipped"]] == [
            ("gone.png" if case == "missing" else "bad.png", 25)
        ]
        assert "skipped 1 images" in result.stdout


def _grow(data: bytes) -> bytes:
    return data + b"\0"


def _flip_middle(data: bytes) -> bytes:
    """The same size, another image: only the bytes (not the probe's ends) tell."""
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0xFF
    return bytes(changed)


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize(
    ("victim", "line", "change"),
    [("class1/img001.jpg", 2, _grow), ("class2/img002.png", 3, _flip_middle)],
    ids=["grown", "same-size"],
)
def test_image_changed_during_dump_is_an_error_not_a_hang(
    project, monkeypatch, workers, victim, line, change
):
    """An image changed after planning, before the teacher reads it, is refused by the
    loader, naming its list line (0 and 1 loader workers), and the dump does not hang."""
    config, tmp = project
    path = tmp / "images" / victim
    original_open_cache = dump_module.open_cache

    def open_cache_then_change_image(*args, **kwargs):
        manifest = original_open_cache(*args, **kwargs)
        path.write_bytes(change(path.read_bytes()))  # after planning, before the teacher
        return manifest

    monkeypatch.setattr(dump_module, "open_cache", open_cache_then_change_image)
    cfg = load_config([str(config)], [f"Offline.num_workers={workers}"])
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            dump_module.run_dump(cfg, progress=False)
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "dump-teacher hangs when the dataset raises"
    (error,) = outcome
    assert isinstance(error, DataError)
    expected = f"{tmp / 'train_list.txt'}:{line}: {victim}: file changed while dumping"
    assert expected in str(error)
    # Shards finished before the error stay valid and listed; the cache is resumable.
    manifest = CacheReader(tmp / "cache", require_complete=False).manifest
    assert not manifest.complete


def test_pickle_weights_need_allow_pickle(project):
    config, tmp = project
    paddle.seed(0)
    model = build_model(ModelSpec(TEACHER, CLASSES, None, "Arch"))
    weights = tmp / "teacher.pdparams"
    paddle.save(model.state_dict(), str(weights))
    line = error_line(dump(config, f"Offline.teacher_weights={weights}"))
    assert "Offline.teacher_weights" in line and "allow_pickle_weights" in line
    assert not (tmp / "cache").exists()
    result = dump(config, f"Offline.teacher_weights={weights}", "Offline.allow_pickle_weights=True")
    assert result.exit_code == 0, result.output
    assert CacheReader(tmp / "cache").manifest.rows == ROWS


# --------------------------------------------------------------------------------- verify


def test_verify_clean_damaged_missing_and_edited(dumped):
    config, tmp, cache = dumped
    result = cli("verify", cache, "--teacher-check", 8, "-c", config)
    assert result.exit_code == 0, result.output
    assert "teacher check: 8 views" in result.stdout

    flipped = tmp / "flipped"
    shutil.copytree(cache, flipped)
    shard = flipped / "shard-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = cli("verify", flipped)
    assert result.exit_code == 1
    assert "shard-00001.arrow: checksum mismatch" in result.stderr
    assert "shard-00000.arrow" not in result.stderr and "shards ok: 3" in result.stdout

    deleted = tmp / "deleted"
    shutil.copytree(cache, deleted)
    (deleted / "shard-00002.arrow").unlink()
    result = cli("verify", deleted)
    assert result.exit_code == 1 and "shard-00002.arrow: missing" in result.stderr

    edited = tmp / "edited"
    shutil.copytree(cache, edited)
    manifest = json.loads((edited / MANIFEST).read_text())
    manifest["views"] = "three"
    (edited / MANIFEST).write_text(json.dumps(manifest))
    line = error_line(cli("verify", edited))
    assert "field 'views'" in line and MANIFEST in line


def test_inspect_json(dumped):
    _, _, cache = dumped
    result = cli("inspect", cache, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["images"] == 24 and info["views"] == 3
    assert info["rows"] == info["images"] * info["views"] == ROWS
    assert info["complete"] is True and info["classes"] == CLASSES
    assert info["payload_bytes_per_row"] == 2 * CLASSES  # fp16 logits
    total = sum(s["bytes"] for s in info["shards"])
    assert info["total_bytes"] == total
    assert info["file_bytes_per_row"] == pytest.approx(total / ROWS, abs=0.1)
    assert 0.0 <= info["teacher_top1"] <= 1.0
    assert info["labeled_rows"] == ROWS
    assert [s["rows"] for s in info["shards"]] == [21, 21, 21, 9]


def test_worker_processes_give_the_same_rows(project):
    config, tmp = project
    for workers in (0, 1):
        cache = tmp / f"cache_w{workers}"
        result = dump(config, f"Offline.num_workers={workers}", f"Offline.cache_dir={cache}")
        assert result.exit_code == 0, result.output
    assert_same_rows(tmp / "cache_w0", tmp / "cache_w1")
