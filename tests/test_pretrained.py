"""Issue 30: `pretrained: True`, `use_ssld: True` and `pretrained: <url>` do what they do in
PaddleClas: the model zoo's weights, downloaded with PaddleClas's URL choice and download code.

No internet here, so the zoo is stood in for by a small .pdparams saved from a tiny backbone
and served by http.server on 127.0.0.1 (benchmarks.paddleclas_configs.serving), fetched by
PaddleClas's own get_weights_path_from_url into a temporary WEIGHTS_HOME.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import pytest
from click.testing import CliRunner
from paddleclas.ppcls.utils import download, save_load

from benchmarks.paddleclas_configs import LocalZoo, serving
from offline_ssld import pretrained
from offline_ssld.cli import main
from offline_ssld.config.paddleclas import check_supported, overlay_summary
from offline_ssld.config.specs import student_spec, teacher_spec
from offline_ssld.dump import run_dump
from offline_ssld.errors import ConfigError
from offline_ssld.models import _zoo, build_model, load_teacher
from offline_ssld.train import train
from tests.helpers import STUDENT, TEACHER
from tests.test_overlay import OVERLAY, images, load, ppcls_config, tiny  # noqa: F401

STUDENT_KEY = "Arch.models.1.Student.pretrained"


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """A LocalZoo on 127.0.0.1: downloads go through PaddleClas into tmp_path/weights."""
    served = tmp_path / "served"
    served.mkdir()
    with serving(served) as base_url:
        stand_in = LocalZoo(served, base_url)
        monkeypatch.setattr(pretrained, "FETCH", stand_in.fetch)
        monkeypatch.setattr(download, "WEIGHTS_HOME", str(tmp_path / "weights"))
        yield stand_in


def paddleclas_requests(name: str, use_ssld: bool, monkeypatch) -> str:
    """The URL PaddleClas's own backbone factory downloads for pretrained=True."""
    asked: list[str] = []

    def record(url, md5sum=None):
        asked.append(url)
        raise KeyboardInterrupt  # stop before any download

    with monkeypatch.context() as m:
        m.setattr(save_load, "get_weights_path_from_url", record)
        with pytest.raises(KeyboardInterrupt):
            getattr(_zoo(), name)(pretrained=True, use_ssld=use_ssld)
    (url,) = asked
    return url


def arrays(model: paddle.nn.Layer) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def served_arrays(path: Path) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in paddle.load(str(path)).items()}


def student_config(tmp_path, images, *options: str) -> dict:  # noqa: F811
    path = ppcls_config(tmp_path, images)
    return load(path, *tiny(tmp_path), f"{STUDENT_KEY}=True", *options)


def test_student_zoo_weights_download_and_load_as_paddleclas_does(tmp_path, images, zoo):  # noqa: F811
    cfg = student_config(tmp_path, images, "Arch.models.1.Student.use_ssld=True")
    check_supported(cfg)  # no refusal
    spec = student_spec(cfg)
    served = served_arrays(zoo.stock(spec))
    model = build_model(spec)

    # the fetcher saw exactly the URL PaddleClas's backbone asks for, the SSLD file
    expected = paddleclas_requests(STUDENT, True, pytest.MonkeyPatch())
    assert zoo.urls == [expected] and "_ssld_pretrained" in expected
    # the zoo file has 1000 classes, the student 4: every other tensor is the served one,
    # the classifier keeps its own initial values (PaddleClas's set_dict skips it too)
    got = arrays(model)
    mismatched = {k for k in got if got[k].shape != served[k].shape}
    assert mismatched and all(k.startswith(("fc.", "last_conv")) for k in mismatched)
    for name in set(got) - mismatched:
        np.testing.assert_array_equal(got[name], served[name])
    # downloaded once into PaddleClas's cache, then read as safetensors from beside it
    cached = tmp_path / "weights" / Path(expected).name
    assert cached.is_file() and cached.with_suffix(".safetensors").is_file()

    # the whole stage: train-student starts the student from those weights
    run_dump(load(ppcls_config(tmp_path, images), *tiny(tmp_path)), progress=False)
    train(cfg, "offline", progress=False)
    assert zoo.urls == [expected] * 2  # PaddleClas's cache hit: nothing downloaded again
    assert len(list((tmp_path / "weights").glob("*.pdparams"))) == 1


def test_use_ssld_picks_paddleclas_url(tmp_path, images, monkeypatch):  # noqa: F811
    seen: list[str] = []

    def refuse(url):
        seen.append(url)
        raise OSError("offline")

    monkeypatch.setattr(pretrained, "FETCH", refuse)
    for ssld in (False, True):
        cfg = student_config(tmp_path, images, f"Arch.models.1.Student.use_ssld={ssld}")
        with pytest.raises(ConfigError):
            build_model(student_spec(cfg))
        assert seen[-1] == paddleclas_requests(STUDENT, ssld, monkeypatch)
    assert seen[0] != seen[1] and seen[1] == seen[0].replace("_pretrained", "_ssld_pretrained")


def test_teacher_zoo_weights_are_the_dumped_teacher(tmp_path, images, zoo):  # noqa: F811
    path = ppcls_config(tmp_path, images, teacher_pretrained=True)  # use_ssld: True too
    cfg = load(path, *tiny(tmp_path), "Arch.models.0.Teacher.class_num=1000")
    assert teacher_spec(cfg, fetch=False).pretrained is None and not zoo.urls
    served = served_arrays(zoo.stock(teacher_spec(cfg, fetch=False)))
    teacher = load_teacher(cfg)
    assert zoo.urls == [paddleclas_requests(TEACHER, True, pytest.MonkeyPatch())]
    got = arrays(teacher)
    assert got.keys() == served.keys()
    for name in got:
        np.testing.assert_array_equal(got[name], served[name])
    # the cache is fingerprinted with the converted file, which dump-teacher read
    manifest = run_dump(cfg, progress=False).manifest
    assert manifest.source["teacher_weights"].endswith("_ssld_pretrained.safetensors")


def test_teacher_zoo_weights_of_another_class_num_are_refused(tmp_path, images, zoo):  # noqa: F811
    """A teacher with a random classifier teaches nothing: class_num 4 vs the zoo's 1000."""
    cfg = load(ppcls_config(tmp_path, images, teacher_pretrained=True), *tiny(tmp_path))
    zoo.stock(teacher_spec(cfg, fetch=False))
    with pytest.raises(ConfigError, match=r"does not match this backbone/class_num: fc"):
        run_dump(cfg, progress=False)


@pytest.mark.parametrize(
    "serve, reason",
    [(None, "failed with code 404"), (b"<html>not weights</html>", "not a readable .pdparams")],
    ids=["404", "bad-file"],
)
def test_failed_download_is_one_line_naming_url_and_key(tmp_path, images, zoo, serve, reason):  # noqa: F811
    cfg = student_config(tmp_path, images)
    url = paddleclas_requests(STUDENT, False, pytest.MonkeyPatch())
    if serve is not None:
        (zoo.served / Path(url).name).write_bytes(serve)
    with pytest.raises(ConfigError) as err:
        build_model(student_spec(cfg))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{STUDENT_KEY}: could not get {url} (")
    assert reason in message
    assert f"-o {STUDENT_KEY}=/path/to/{Path(url).stem}" in message


def test_dump_teacher_cli_prints_the_one_line(tmp_path, images, monkeypatch):  # noqa: F811
    def unreachable(url):
        raise OSError(f"no route to {url}\nsecond line")

    monkeypatch.setattr(pretrained, "FETCH", unreachable)
    path = ppcls_config(tmp_path, images, teacher_pretrained=True)
    options = [f"-o{o}" for o in tiny(tmp_path)]
    result = CliRunner().invoke(
        main, ["dump-teacher", "-c", str(path), "-c", str(OVERLAY), *options]
    )
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: Arch.models.0.Teacher.pretrained: could not get https://")
    assert "-o Arch.models.0.Teacher.pretrained=/path/to/PPLCNet_x0_25_ssld_pretrained" in line


def test_overlay_names_the_download_without_downloading(tmp_path, images, monkeypatch):  # noqa: F811
    monkeypatch.setattr(pretrained, "FETCH", lambda url: pytest.fail(f"downloaded {url}"))
    monkeypatch.setattr(download, "WEIGHTS_HOME", str(tmp_path / "weights"))
    cfg = load(
        ppcls_config(tmp_path, images, teacher_pretrained=True),
        f"{STUDENT_KEY}=True",
        "Arch.models.1.Student.use_ssld=True",
    )
    check_supported(cfg)
    lines = overlay_summary(cfg)
    teacher_url = paddleclas_requests(TEACHER, True, monkeypatch)
    student_url = paddleclas_requests(STUDENT, True, monkeypatch)
    assert (
        f"teacher weights: download {teacher_url} (from Arch.models.0.Teacher.pretrained, "
        f"use_ssld) to {tmp_path / 'weights' / Path(teacher_url).name} (downloaded on first use)"
    ) in "\n".join(lines)
    assert any(
        line.startswith(f"student initial weights: download {student_url} (from {STUDENT_KEY}")
        for line in lines
    )


def test_a_url_in_the_config_downloads_through_paddleclas(tmp_path, images, monkeypatch):  # noqa: F811
    """`pretrained: <url>`: PaddleClas's own download, no stand-in fetcher; a pickle from a
    URL the config names needs allow_pickle_weights, like a local .pdparams."""
    monkeypatch.setattr(download, "WEIGHTS_HOME", str(tmp_path / "weights"))
    served = tmp_path / "served"
    served.mkdir()
    paddle.seed(3)
    model = _zoo().MobileNetV3_small_x0_35(class_num=4)
    paddle.save(model.state_dict(), str(served / "mine.pdparams"))
    with serving(served) as base_url:
        cfg = student_config(tmp_path, images, f"{STUDENT_KEY}={base_url}/mine.pdparams")
        with pytest.raises(ConfigError, match=rf"^{STUDENT_KEY}: .*allow_pickle_weights=True"):
            build_model(student_spec(cfg))
        assert not (tmp_path / "weights").exists()  # refused before downloading
        cfg = load(
            ppcls_config(tmp_path, images),
            f"{STUDENT_KEY}={base_url}/mine.pdparams",
            "Offline.allow_pickle_weights=True",
        )
        got = arrays(build_model(student_spec(cfg)))
    for name, value in arrays(model).items():
        np.testing.assert_array_equal(got[name], value)
