"""Tests for offline_ssld.config: merging -c files, -o overrides, validation, model specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from offline_ssld.config.loading import load_config
from offline_ssld.config.offline import OFFLINE_DEFAULTS
from offline_ssld.config.specs import student_spec, teacher_spec
from offline_ssld.errors import ConfigError
from tests.helpers import STUDENT, TEACHER, transform_ops


def _write(path: Path, obj) -> str:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return str(path)


BASE = {
    "Global": {"device": "cpu", "epochs": 3, "seed": 0},
    "Arch": {"name": TEACHER, "class_num": 4},
    "DataLoader": {
        "Train": {
            "dataset": {
                "name": "ImageNetDataset",
                "image_root": "img",
                "cls_label_path": "list.txt",
                "transform_ops": transform_ops(True),
            },
            "sampler": {"batch_size": 8},
        }
    },
    "Optimizer": {"name": "Momentum", "lr": {"name": "Cosine", "learning_rate": 0.1}},
    "Offline": {"views": 2},
}


@pytest.fixture
def base(tmp_path) -> str:
    return _write(tmp_path / "base.yaml", BASE)


def test_files_merge_left_to_right(tmp_path, base):
    second = _write(
        tmp_path / "second.yaml",
        {
            "Global": {"epochs": 7},  # later wins
            "Optimizer": {"lr": {"learning_rate": 0.5}},  # nested merge keeps lr.name
            "DataLoader": {
                "Train": {"dataset": {"transform_ops": [{"DecodeImage": None}]}}
            },  # lists are replaced whole
        },
    )
    third = _write(tmp_path / "third.yaml", {"Global": {"epochs": 9}})
    cfg = load_config([base, second])
    assert cfg["Global"] == {"device": "cpu", "epochs": 7, "seed": 0}
    assert cfg["Optimizer"]["lr"] == {"name": "Cosine", "learning_rate": 0.5}
    assert cfg["DataLoader"]["Train"]["dataset"]["transform_ops"] == [{"DecodeImage": None}]
    assert load_config([base, second, third])["Global"]["epochs"] == 9
    assert load_config([second, base])["Global"]["epochs"] == 3
    # Offline defaults fill every key not given
    assert cfg["Offline"] == {**OFFLINE_DEFAULTS, "views": 2}


def test_no_config_file_is_an_error():
    with pytest.raises(ConfigError, match="-c"):
        load_config([])


def test_overrides_with_list_indices_and_literals(base):
    cfg = load_config(
        [base],
        [
            "DataLoader.Train.dataset.transform_ops.1.RandCropImage.size=24",
            "Offline.views=8",
            "Optimizer.lr.learning_rate=0.25",
            "Offline.skip_bad=True",
            "Global.image_shape=[3, 32, 32]",
            "Global.name=hello world",
            "Offline.cache_dir=/tmp/x=y",  # only the first '=' splits
            "Offline.teacher_weights=None",
        ],
    )
    crop = cfg["DataLoader"]["Train"]["dataset"]["transform_ops"][1]["RandCropImage"]
    assert crop["size"] == 24 and isinstance(crop["size"], int)
    assert crop["scale"] == [0.5, 1.0]  # siblings untouched
    assert cfg["Offline"]["views"] == 8
    lr = cfg["Optimizer"]["lr"]["learning_rate"]
    assert lr == 0.25 and isinstance(lr, float)
    assert cfg["Offline"]["skip_bad"] is True
    assert cfg["Global"]["image_shape"] == [3, 32, 32]
    assert cfg["Global"]["name"] == "hello world"
    assert cfg["Offline"]["cache_dir"] == "/tmp/x=y"
    assert cfg["Offline"]["teacher_weights"] is None


def test_override_negative_index_and_new_section(base):
    cfg = load_config([base], ["DataLoader.Train.dataset.transform_ops.-1=5", "AMP.level=O1"])
    assert cfg["DataLoader"]["Train"]["dataset"]["transform_ops"][-1] == 5
    assert cfg["AMP"] == {"level": "O1"}


def test_override_never_runs_code(base, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.chdir(tmp_path)
    payload = f"__import__('os').system('touch {marker}')"
    cfg = load_config([base], [f"Global.X={payload}", "Global.Y=__import__('os').system('true')"])
    assert cfg["Global"]["X"] == payload
    assert cfg["Global"]["Y"] == "__import__('os').system('true')"
    assert not marker.exists()


def test_yaml_strings_are_literals_but_never_code(tmp_path):
    marker = tmp_path / "ran"
    text = (
        "Global:\n"
        "  a: '[1, 2]'\n"
        "  b: '1.0/255.0'\n"
        f"  c: \"__import__('os').system('touch {marker}')\"\n"
    )
    path = tmp_path / "c.yaml"
    path.write_text(text)
    cfg = load_config([str(path)])
    assert cfg["Global"]["a"] == [1, 2]
    assert cfg["Global"]["b"] == "1.0/255.0"
    assert cfg["Global"]["c"].startswith("__import__")
    assert not marker.exists()


def test_yaml_anchors_and_aliases(tmp_path):
    text = (
        "Global:\n"
        "  common: &common {device: cpu, seed: 3}\n"
        "  size: &size 24\n"
        "Infer:\n"
        "  settings: *common\n"
        "  resize: *size\n"
        "  merged:\n"
        "    <<: *common\n"
        "    seed: 9\n"
    )
    path = tmp_path / "a.yaml"
    path.write_text(text)
    cfg = load_config([str(path)])
    assert cfg["Infer"]["settings"] == {"device": "cpu", "seed": 3}
    assert cfg["Infer"]["resize"] == 24
    assert cfg["Infer"]["merged"] == {"device": "cpu", "seed": 9}


def test_invalid_yaml_names_file_and_line(tmp_path, base):
    path = tmp_path / "broken.yaml"
    path.write_text("Global:\n  device: cpu\n  epochs: [1, 2\n  seed: 0\nArch: {\n")
    with pytest.raises(ConfigError) as info:
        load_config([base, str(path)])
    message = str(info.value)
    assert str(path) in message
    assert "invalid YAML" in message
    line = int(message.split(str(path) + ":", 1)[1].split(":", 1)[0])
    assert 3 <= line <= 5


def test_top_level_must_be_mapping_and_missing_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config([str(path)])
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config([str(tmp_path / "missing.yaml")])


def test_unknown_section_named(tmp_path, base):
    extra = _write(tmp_path / "extra.yaml", {"Offlien": {"views": 2}})
    with pytest.raises(ConfigError, match="unknown config section 'Offlien'"):
        load_config([base, extra])
    with pytest.raises(ConfigError, match="unknown config section 'Bogus'"):
        load_config([base], ["Bogus.key=1"])


def test_unknown_offline_key_named(base):
    with pytest.raises(ConfigError, match=r"Offline\.veiws: unknown key"):
        load_config([base], ["Offline.veiws=3"])


@pytest.mark.parametrize(
    "option, pattern",
    [
        ("DataLoader.Train.dataset.transform_ops.9.RandCropImage.size=3", "index 9 out of range"),
        ("DataLoader.Train.dataset.transform_ops.-9=3", "index -9 out of range"),
        ("DataLoader.Train.dataset.transform_ops.first=3", "needs an integer"),
        ("Global.device.sub=1", "is a value, not a section"),
        ("Global..x=1", "empty key segment"),
        ("Global.device", "expected Key.sub=value"),
    ],
)
def test_bad_overrides(base, option, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config([base], [option])


def _distill(teacher_weights=None) -> dict:
    return {
        **BASE,
        "Arch": {
            "name": "DistillationModel",
            "models": [
                {"Teacher": {"name": TEACHER, "class_num": 4, "pretrained": teacher_weights}},
                {"Student": {"name": STUDENT, "class_num": 4}},
            ],
        },
    }


def test_specs_from_distillation_model(tmp_path):
    path = _write(tmp_path / "d.yaml", _distill("t.safetensors"))
    cfg = load_config([path])
    t, s = teacher_spec(cfg), student_spec(cfg)
    assert (t.name, t.class_num, t.pretrained, t.key) == (
        TEACHER,
        4,
        "t.safetensors",
        "Arch.models.0.Teacher",
    )
    assert (s.name, s.class_num, s.pretrained, s.key) == (STUDENT, 4, None, "Arch.models.1.Student")
    # Offline.teacher_weights takes precedence over the Teacher's pretrained
    cfg = load_config([path], ["Offline.teacher_weights=other.safetensors"])
    assert teacher_spec(cfg).pretrained == "other.safetensors"


def test_specs_from_plain_arch(base):
    cfg = load_config([base], ["Arch.pretrained=True"])
    t, s = teacher_spec(cfg, fetch=False), student_spec(cfg)
    assert (t.name, t.class_num, t.key) == (TEACHER, 4, "Arch")
    # PaddleClas's "download" flag: a zoo download, resolved when the weights are needed
    # (tests/test_pretrained.py serves it on 127.0.0.1); the spec names where it comes from
    assert t.pretrained is None and t.download is not None and t.download.key == "Arch.pretrained"
    assert (s.name, s.class_num) == (TEACHER, 4)


def test_spec_errors(tmp_path, base):
    with pytest.raises(ConfigError, match=r"Arch\.class_num: expected an integer >= 2"):
        teacher_spec(load_config([base], ["Arch.class_num=1"]))
    with pytest.raises(ConfigError, match=r"Arch\.class_num"):
        student_spec(load_config([base], ["Arch.class_num=True"]))
    d = _distill()
    d["Arch"]["models"] = d["Arch"]["models"][1:]
    cfg = load_config([_write(tmp_path / "d.yaml", d)])
    with pytest.raises(ConfigError, match="no Teacher entry"):
        teacher_spec(cfg)
    with pytest.raises(ConfigError, match=r"Arch\.models\.0\.Student\.class_num"):
        student_spec(load_config([str(tmp_path / "d.yaml")], ["Arch.models.0.Student.class_num=x"]))


def test_backbone_with_fixed_parameter_names_builds_twice_in_one_process():
    """Res2Net names its parameters itself; Paddle refuses a name twice per process."""
    from offline_ssld.config.specs import ModelSpec
    from offline_ssld.models import build_model

    spec = ModelSpec("Res2Net50_vd_26w_4s", 2, None, "Arch")
    first, second = build_model(spec), build_model(spec)
    assert first is not second and len(first.parameters()) == len(second.parameters())


def test_offline_spec_is_typed_and_names_bad_keys():
    from offline_ssld.cache.codecs import TopKCodec
    from offline_ssld.config.offline import CacheMember, offline_spec

    spec = offline_spec({"Offline": {"codec": "topk", "topk": 3, "views": 2}})
    assert (spec.codec, spec.codec_settings, spec.views) == ("topk", (("k", 3),), 2)
    assert spec.caches == (CacheMember(OFFLINE_DEFAULTS["cache_dir"], 1.0),)
    assert not spec.is_ensemble and spec.single_cache("dump") == OFFLINE_DEFAULTS["cache_dir"]
    # a codec's Offline default is its constructor's, written once
    assert OFFLINE_DEFAULTS["topk"] == TopKCodec(10).k
    ensemble = offline_spec({"Offline": {"cache_dir": ["a", {"path": "b", "weight": 2}]}})
    assert ensemble.is_ensemble and [m.weight for m in ensemble.caches] == [1.0, 2.0]
    with pytest.raises(ConfigError, match="Offline.cache_dir: dump-teacher needs one cache"):
        ensemble.single_cache("dump-teacher")
    for key, value, message in [
        ("views", "x", "Offline.views: expected a positive integer, got 'x'"),
        ("seed", -1, "Offline.seed: expected a non-negative integer, got -1"),
        ("codec", "zip", "Offline.codec: unknown codec 'zip'"),
        ("num_workers", -2, "Offline.num_workers: expected null or a non-negative integer"),
        ("skip_bad", "yes", "Offline.skip_bad: expected true or false, got 'yes'"),
        ("ensemble", "vote", "Offline.ensemble: 'vote'; supported: mean_probs, mean_logits"),
        ("ensemble_temperature", 0, "Offline.ensemble_temperature: expected a positive number"),
        ("online_teacher_bn", "frozen", "Offline.online_teacher_bn: expected train or eval"),
        ("precise_bn_batches", 1.5, "Offline.precise_bn_batches: expected a non-negative"),
        ("veiws", 3, "Offline.veiws: unknown key"),
    ]:
        with pytest.raises(ConfigError) as info:
            offline_spec({"Offline": {key: value}})
        assert str(info.value).startswith(message), str(info.value)
        assert "\n" not in str(info.value)
