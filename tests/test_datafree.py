"""Data-free distillation (offline_ssld.tools.datafree, `offline-ssld synthesize`): the DAFL loss
terms against numpy, the pixel mapping against dump-teacher's own decoding, the feature tap,
determinism, resume, and synthesize -> dump-teacher -> train-student end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import paddle
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from offline_ssld.cli import main
from offline_ssld.config.loading import load_config
from offline_ssld.data.transforms import Pipeline, build_ops
from offline_ssld.errors import ConfigError
from offline_ssld.tools import datafree as df

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # pipelines/ for the smoke test

TINY = [
    "Global.device=cpu",
    "DataFree.image_size=16",
    "DataFree.images=12",
    "DataFree.steps=3",
    "DataFree.batch_size=8",
    "DataFree.latent_dim=8",
    "DataFree.generator_channels=16",
    "DataFree.lr=0.01",
]


def _cfg(project, *extra: str) -> dict:
    path, tmp = project
    return load_config([str(path)], [*TINY, f"DataFree.output_dir={tmp / 'synth'}", *extra])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


LOGITS = np.array([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [-2.0, 1.0, 4.0], [1.0, 1.0, 0.0]])


def test_one_hot_loss_is_cross_entropy_against_own_argmax():
    p = _softmax(LOGITS)
    want = -np.mean(np.log(p[np.arange(4), LOGITS.argmax(axis=1)]))
    got = float(df.one_hot_loss(paddle.to_tensor(LOGITS, dtype="float32")))
    assert got == pytest.approx(want, rel=1e-5)


def test_activation_loss_is_minus_mean_absolute_feature():
    f = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -0.25]])
    got = float(df.activation_loss(paddle.to_tensor(f, dtype="float32")))
    assert got == pytest.approx(-(1 + 2 + 0.5 + 0 + 3 + 0.25) / 6, rel=1e-6)


def test_information_entropy_loss_is_minus_entropy_of_mean_prediction():
    mean = _softmax(LOGITS).mean(axis=0)
    got = float(df.information_entropy_loss(paddle.to_tensor(LOGITS, dtype="float32")))
    assert got == pytest.approx(np.sum(mean * np.log(mean)), rel=1e-5)
    # Minimal (-log K) when the batch is balanced over the classes.
    balanced = paddle.to_tensor(np.eye(3) * 50, dtype="float32")
    assert float(df.information_entropy_loss(balanced)) == pytest.approx(-np.log(3), rel=1e-5)


def test_weighted_total_uses_the_configured_weights(project):
    s = df.datafree_settings(
        _cfg(project, "DataFree.oh_weight=2.0", "DataFree.activation_weight=0.5")
    )
    logits = paddle.to_tensor(LOGITS, dtype="float32")
    feats = paddle.to_tensor(np.ones((4, 5)) * 3, dtype="float32")
    t = df.dafl_losses(logits, feats, s)
    want = 2.0 * float(t["one_hot"]) + 0.5 * -3.0 + 5.0 * float(t["information_entropy"])
    assert float(t["total"]) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_teacher_sees_what_dump_teacher_decodes_from_the_png(project, channels):
    """The tensor the generator is trained against equals the deterministic pipeline's output
    on the PNG written for it (decode, RGB, 3 channels, NormalizeImage)."""
    cfg = _cfg(project, f"DataFree.channels={channels}")
    s = df.datafree_settings(cfg)
    view = df.TeacherView(cfg, s)
    rng = np.random.default_rng(0)
    raw = paddle.to_tensor(rng.uniform(-1, 1, (2, channels, 16, 16)).astype(np.float32))
    pixels = view.pixels(raw)
    seen = view(pixels).numpy()
    ops = cfg["DataLoader"]["Eval"]["dataset"]["transform_ops"]  # ResizeImage 16: identity
    pipeline = Pipeline(build_ops(ops, "eval"), "eval")
    for i, img in enumerate(view.to_files(pixels)):
        decoded = pipeline.apply_fixed(view.encode_png(img))
        np.testing.assert_allclose(decoded, seen[i], rtol=0, atol=1e-5)


def test_straight_through_rounding_passes_gradients(project):
    raw = paddle.to_tensor([[[[0.1234]]]], stop_gradient=False)
    pixels = df.TeacherView.pixels(raw)
    assert float(pixels) == round((0.1234 + 1) * 127.5)
    pixels.sum().backward()
    assert float(raw.grad) == pytest.approx(127.5)


def test_feature_tap_captures_the_input_of_the_final_linear(project):
    from offline_ssld.models import load_teacher

    cfg = _cfg(project)
    teacher = load_teacher(cfg)
    x = paddle.to_tensor(np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype("float32"))
    tap = df.FeatureTap(teacher, x, "Arch")
    logits = teacher(x)
    recomputed = paddle.matmul(tap.features, teacher.fc.weight) + teacher.fc.bias
    np.testing.assert_allclose(recomputed.numpy(), logits.numpy(), rtol=1e-5, atol=1e-5)


def test_image_size_must_match_the_teacher_views(project):
    cfg = _cfg(project, "DataFree.image_size=20")
    with pytest.raises(ConfigError, match=r"^DataFree.image_size: 20.* set DataFree.image_size"):
        df.TeacherView(cfg, df.datafree_settings(cfg))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("DataFree.image_size=18", "DataFree.image_size"),
        ("DataFree.channels=2", "DataFree.channels"),
        ("DataFree.lr=0", "DataFree.lr"),
        ("DataFree.steps=-1", "DataFree.steps"),
    ],
)
def test_bad_settings_name_their_key(project, override, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        df.datafree_settings(_cfg(project, override))


def test_unknown_datafree_key_is_refused(project):
    with pytest.raises(ConfigError, match=r"^DataFree.alpha: unknown key"):
        _cfg(project, "DataFree.alpha=0.1")


def _images(out) -> list[bytes]:
    names = (out / df.LIST_FILE).read_text().split()
    return [(out / n).read_bytes() for n in names]


def test_same_seed_same_images_and_outputs(project):
    tmp = project[1]
    first = df.synthesize(_cfg(project, f"DataFree.output_dir={tmp / 'a'}"), progress=False)
    second = df.synthesize(_cfg(project, f"DataFree.output_dir={tmp / 'b'}"), progress=False)
    assert first.steps_trained == 3 and len(_images(tmp / "a")) == 12
    assert _images(tmp / "a") == _images(tmp / "b")
    # The list is unlabeled (one relative path per line), as the project's list reader takes.
    lines = (tmp / "a" / df.LIST_FILE).read_text().splitlines()
    assert all(len(line.split()) == 1 and line.endswith(".png") for line in lines)
    assert sum(second.class_counts) == 12 and set(first.losses) == {
        "one_hot",
        "activation",
        "information_entropy",
        "total",
    }
    preview = cv2.imread(str(tmp / "a" / df.PREVIEW_FILE))
    assert preview.shape[:2] == (4 * 18, df.PREVIEW_COLUMNS * 18)
    summary = json.loads((tmp / "a" / df.SUMMARY_FILE).read_text())
    assert summary["teacher_class_counts"] == first.class_counts
    other = _cfg(project, f"DataFree.output_dir={tmp / 'c'}", "DataFree.seed=1")
    df.synthesize(other, progress=False)
    assert _images(tmp / "c") != _images(tmp / "a")


def test_resume_equals_an_uninterrupted_run(project):
    tmp = project[1]
    whole = _cfg(project, f"DataFree.output_dir={tmp / 'whole'}", "DataFree.steps=4")
    df.synthesize(whole, progress=False)
    part = _cfg(project, f"DataFree.output_dir={tmp / 'part'}", "DataFree.steps=2")
    assert df.synthesize(part, progress=False).steps_trained == 2
    rest = _cfg(project, f"DataFree.output_dir={tmp / 'part'}", "DataFree.steps=4")
    assert df.synthesize(rest, progress=False).steps_trained == 2
    a = load_file(str(tmp / "whole" / df.CHECKPOINT))
    b = load_file(str(tmp / "part" / df.CHECKPOINT))
    assert sorted(a) == sorted(b) and any(k.startswith("adam/") for k in a)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=key)
    assert _images(tmp / "whole") == _images(tmp / "part")
    # A finished generator is not trained again; other training settings are refused.
    assert df.synthesize(rest, progress=False).steps_trained == 0
    changed = _cfg(project, f"DataFree.output_dir={tmp / 'part'}", "DataFree.lr=0.5")
    with pytest.raises(ConfigError, match=r"^DataFree.lr: .*was trained with 0.01"):
        df.synthesize(changed, progress=False)


def test_visualdl_logs_the_losses_when_asked(project):
    pytest.importorskip("visualdl")
    tmp = project[1]
    cfg = _cfg(project, f"DataFree.output_dir={tmp / 'v'}", "Global.use_visualdl=True")
    df.synthesize(cfg, progress=False)
    assert any((tmp / "v" / "vdl").iterdir())


def test_synthesize_then_dump_then_train_student_unchanged(project):
    """The generated list feeds both stages through their ordinary commands."""
    path, tmp = project
    synth = tmp / "synth"
    runner = CliRunner()
    common = ["-c", str(path), *sum((["-o", o] for o in TINY), [])]
    result = runner.invoke(
        main, ["synthesize", *common, "-o", f"DataFree.output_dir={synth}", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 12 images" in result.output
    data = [
        "-o",
        f"DataLoader.Train.dataset.image_root={synth}",
        "-o",
        f"DataLoader.Train.dataset.cls_label_path={synth / df.LIST_FILE}",
        "-o",
        "Offline.views=2",
    ]
    result = runner.invoke(main, ["dump-teacher", *common, *data, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "12 images x 2 views" in result.output
    result = runner.invoke(
        main, ["train-student", *common, *data, "-o", "Global.epochs=1", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp / "output" / "latest.safetensors").exists()


def test_help_has_an_example():
    result = CliRunner().invoke(main, ["synthesize", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "DAFL" in result.output


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.skipif(
    not FASHION_MNIST.exists(),
    reason="Debian's dataset-fashion-mnist is not installed (pipelines/setup_env.sh does it)",
)
def test_data_free_pipeline_smoke_preset(tmp_path):
    """pipelines/data_free.py --preset smoke: every stage runs and the report is well formed."""
    from pipelines import data_free

    out = tmp_path / "results.json"
    args = ["--preset", "smoke", "--workdir", str(tmp_path / "work")]
    args += ["--data-dir", str(tmp_path / "data"), "--out", str(out), "--quiet"]
    result = CliRunner().invoke(data_free.main, args)
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert set(r["student"]["sources"]) == set(data_free.SOURCES)
    for source in r["student"]["sources"].values():
        assert 0.0 <= source["top1"] <= 1.0 and source["train_images"] == 256
    assert 0.0 <= r["teacher"]["top1"] <= 1.0
    assert sum(r["synthesis"]["teacher_class_counts"]) == 256
    assert (tmp_path / "work" / "synth" / "preview.png").exists()
