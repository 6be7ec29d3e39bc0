"""Issue 5: an existing PaddleClas distillation YAML runs offline by adding the overlay.

The fixtures below are written in PaddleClas's distillation key structure, as a user's file
would be (anchors and aliases, no ToCHWImage, DistillationTopkAcc, Infer, AMP, no Offline
section), for the tiny images of conftest.py. Each loss variant is dumped and trained for one
epoch with configs/overlays/offline_ssld.yaml; every key a stage cannot honour is an error
naming its path.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from offline_ssld.cli import main
from offline_ssld.config.loading import load_config
from offline_ssld.config.offline import OFFLINE_DEFAULTS
from offline_ssld.config.paddleclas import check_supported
from offline_ssld.config.specs import student_spec, teacher_spec, teacher_weights_source
from offline_ssld.dump import run_dump
from offline_ssld.errors import ConfigError
from offline_ssld.models import build_model, load_weights
from offline_ssld.train import train
from tests.helpers import STUDENT, TEACHER, make_images, save_random_weights, write_list

REPO = Path(__file__).resolve().parents[1]
OVERLAY = REPO / "configs" / "overlays" / "offline_ssld.yaml"
RECIPES = sorted((REPO / "configs" / "ppcls").glob("*.yaml"))

# Loss.Train of PaddleClas's logit-distillation configs (SSLD, CE, KD, DKD).
LOSSES = {
    "dml": """\
    - DistillationDMLLoss:
        weight: 1.0
        model_name_pairs:
        - ["Student", "Teacher"]
""",
    "ce": """\
    - DistillationCELoss:
        weight: 1.0
        model_name_pairs:
        - ["Student", "Teacher"]
""",
    "kl": """\
    - DistillationGTCELoss:
        weight: 1.0
        model_names: ["Student"]
    - DistillationKLDivLoss:
        weight: 0.9
        model_name_pairs: [["Student", "Teacher"]]
        temperature: 4
""",
    "dkd": """\
    - DistillationGTCELoss:
        weight: 1.0
        model_names: ["Student"]
    - DistillationDKDLoss:
        weight: 1.0
        model_name_pairs: [["Student", "Teacher"]]
        temperature: 1
        alpha: 1.0
        beta: 1.0
""",
}

PPCLS = """\
# global configs
Global:
  checkpoints: null
  pretrained_model: null
  output_dir: {out}
  device: cpu
  save_interval: 1
  eval_during_train: True
  eval_interval: 1
  epochs: 3
  print_batch_step: 10
  use_visualdl: False
  # used for static mode and model export
  image_shape: [3, 16, 16]
  save_inference_dir: ./inference
  to_static: False
  use_dali: False

AMP:
  scale_loss: 128.0
  use_dynamic_loss_scaling: True
  # O1: mixed fp16
  level: O1

# model architecture
Arch:
  name: "DistillationModel"
  class_num: &class_num 4
  # if not null, its lengths should be same as models
  pretrained_list: {pretrained_list}
  # if not null, its lengths should be same as models
  freeze_params_list:
  - True
  - False
  infer_model_name: "Student"
  models:
    - Teacher:
        name: {teacher}
        class_num: *class_num
        pretrained: {teacher_pretrained}
        use_ssld: True
    - Student:
        name: {student}
        class_num: *class_num
        pretrained: False

# loss function config for traing/eval process
Loss:
  Train:
{loss}  Eval:
    - CELoss:
        weight: 1.0

Optimizer:
  name: Momentum
  momentum: 0.9
  lr:
    name: Cosine
    learning_rate: 0.05
    warmup_epoch: 1
  regularizer:
    name: 'L2'
    coeff: 0.00004

# data loader for train and eval
DataLoader:
  Train:
    dataset:
      name: ImageNetDataset
      image_root: {root}
      cls_label_path: {train_list}
      transform_ops:
        - DecodeImage: &decode
            to_rgb: True
            channel_first: False
        - RandCropImage:
            size: 16
            scale: [0.5, 1.0]
        - RandFlipImage:
            flip_code: 1
        - NormalizeImage: &normalize
            scale: 1.0/255.0
            mean: [0.5, 0.5, 0.5]
            std: [0.25, 0.25, 0.25]
            order: ''
    sampler:
      name: DistributedBatchSampler
      batch_size: 8
      drop_last: False
      shuffle: True
    loader:
      num_workers: 0
      use_shared_memory: True

  Eval:
    dataset:
      name: ImageNetDataset
      image_root: {root}
      cls_label_path: {val_list}
      transform_ops:
        - DecodeImage: *decode
        - ResizeImage:
            resize_short: 16
        - CropImage:
            size: 16
        - NormalizeImage: *normalize
    sampler:
      name: DistributedBatchSampler
      batch_size: 8
      drop_last: False
      shuffle: False
    loader:
      num_workers: 0
      use_shared_memory: True

Infer:
  infer_imgs: docs/images/inference_deployment/whl_demo.jpg
  batch_size: 10
  transforms:
    - DecodeImage: *decode
    - NormalizeImage: *normalize
    - ToCHWImage:
  PostProcess:
    name: Topk
    topk: 5

Metric:
    Train:
    - DistillationTopkAcc:
        model_key: "Student"
        topk: [1, 5]
    Eval:
    - DistillationTopkAcc:
        model_key: "Student"
        topk: [1, 5]
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """16 tiny images, train/val lists and teacher weights saved PaddleClas-style."""
    tmp = tmp_path_factory.mktemp("ppcls")
    entries = make_images(tmp / "images", 16)
    (tmp / "pretrained").mkdir()
    weights = save_random_weights(TEACHER, tmp / "pretrained" / "teacher.safetensors")
    return {
        "root": tmp / "images",
        "train_list": write_list(tmp / "train_list.txt", entries),
        "val_list": write_list(tmp / "val_list.txt", entries[:8]),
        "weights": weights,
        "stem": weights.with_suffix(""),  # ./pretrained/teacher, no suffix
    }


def ppcls_config(
    tmp: Path, images: dict, loss: str = "dml", *, teacher_pretrained=None, pretrained_list=""
) -> Path:
    """Write a user's PaddleClas distillation YAML; the teacher path has no suffix."""
    text = PPCLS.format(
        out=tmp / "output",
        teacher=TEACHER,
        student=STUDENT,
        teacher_pretrained=images["stem"] if teacher_pretrained is None else teacher_pretrained,
        pretrained_list=pretrained_list,
        loss=LOSSES[loss],
        root=images["root"],
        train_list=images["train_list"],
        val_list=images["val_list"],
    )
    path = tmp / f"ppcls_{loss}.yaml"
    path.write_text(text)
    return path


def tiny(tmp: Path) -> list[str]:
    """-o options a user would add to run this small: they must win over the overlay."""
    return [
        f"Offline.cache_dir={tmp / 'cache'}",
        "Offline.views=2",
        "Offline.shard_size=12",
        "Offline.batch_size=8",
        "Global.epochs=1",
    ]


def load(path: Path, *overrides: str) -> dict:
    return load_config([str(path), str(OVERLAY)], list(overrides))


# ------------------------------------------------------------------- the overlay file


def test_overlay_documents_exactly_the_offline_defaults():
    data = yaml.safe_load(OVERLAY.read_text())
    assert list(data) == ["Offline"]
    assert set(data["Offline"]) == set(OFFLINE_DEFAULTS)
    assert data["Offline"] == OFFLINE_DEFAULTS  # the same values, so it is a no-op as shipped
    text = OVERLAY.read_text()
    for key in OFFLINE_DEFAULTS:  # every key has a comment right above it
        lines = text.splitlines()
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
        assert lines[at - 1].strip().startswith("#"), key


# ------------------------------------------------------------ each variant, dumped and trained


@pytest.mark.parametrize(
    "loss, extra, expected",
    [
        ("dml", [], ["dml"]),
        ("ce", [], ["ce_soft"]),
        # -o with a list index, as PaddleClas's tools/train.py -o accepts
        ("kl", ["Arch.models.1.Student.name=PPLCNet_x0_35"], ["gt_ce", "kl"]),
        ("dkd", [], ["gt_ce", "dkd"]),
    ],
)
def test_variant_dumps_and_trains_with_overlay(tmp_path, images, loss, extra, expected):
    if loss == "dkd":  # weights through pretrained_list, the Teacher's pretrained: True ignored
        path = ppcls_config(
            tmp_path,
            images,
            loss,
            teacher_pretrained=True,
            pretrained_list=f"[{images['stem']}, null]",
        )
    else:
        path = ppcls_config(tmp_path, images, loss)
    cfg = load(path, *tiny(tmp_path), *extra)
    check_supported(cfg)
    assert teacher_spec(cfg).pretrained == str(images["weights"])
    if extra:
        assert student_spec(cfg).name == "PPLCNet_x0_35"
    dumped = run_dump(cfg, progress=False)
    assert dumped.manifest.num_images == 16 and dumped.manifest.views == 2
    result = train(cfg, "offline", progress=False)
    assert result.epochs == 1 and len(result.train_seconds) == 1
    assert math.isfinite(result.last_top1)
    assert (tmp_path / "output" / "best_model.safetensors").is_file()

    out = CliRunner().invoke(
        main, ["overlay", "-c", str(path), "-c", str(OVERLAY), *sum((["-o", o] for o in extra), [])]
    )
    assert out.exit_code == 0, out.output
    for kind in expected:
        assert f"-> {kind} (" in out.stdout


# Train transforms of PaddleClas's PULC / PPHGNetV2 SSLD distillation configs, at 16 px.
STRONG_AUGMENT = """\
DataLoader:
  Train:
    dataset:
      transform_ops:
        - DecodeImage: {to_rgb: True, channel_first: False}
        - RandCropImage: {size: 16, backend: pil, interpolation: bicubic}
        - RandFlipImage: {flip_code: 1}
        - TimmAutoAugment:
            config_str: rand-m9-mstd0.5-inc1
            interpolation: bicubic
            img_size: 16
            prob: 0.8
        - ColorJitter: {brightness: 0.2, contrast: 0.2, saturation: 0.2, hue: 0.05}
        - NormalizeImage:
            scale: 1.0/255.0
            mean: [0.485, 0.456, 0.406]
            std: [0.229, 0.224, 0.225]
            order: ''
        - RandomErasing:
            EPSILON: 0.5
            sl: 0.02
            sh: 1.0/3.0
            r1: 0.3
            attempt: 10
            use_log_aspect: True
            mode: pixel
"""


def test_strong_augmentation_dumps_replays_and_trains(tmp_path, images):
    """TimmAutoAugment, ColorJitter, RandomErasing and backend pil are accepted; the dump stores
    their params, verify's teacher check replays them and gets the stored logits back, and the
    student trains from the cache."""
    from offline_ssld.tools.audit import verify_cache

    path = ppcls_config(tmp_path, images)
    strong = tmp_path / "strong.yaml"
    strong.write_text(STRONG_AUGMENT)
    cfg = load_config([str(path), str(strong), str(OVERLAY)], tiny(tmp_path))
    check_supported(cfg)
    dumped = run_dump(cfg, progress=False)
    names = dumped.manifest.param_names
    assert "TimmAutoAugment.mag0" in names and "RandomErasing.seed" in names
    assert "ColorJitter.order" in names
    report = verify_cache(tmp_path / "cache", teacher_check=8, cfg=cfg)
    assert report.ok and report.teacher_checked == 8, report.problems
    out = CliRunner().invoke(
        main, ["overlay", "-c", str(path), "-c", str(strong), "-c", str(OVERLAY)]
    )
    assert out.exit_code == 0, out.output
    assert f"train view params stored per view: {len(names)} (RandCropImage.x, " in out.stdout
    result = train(cfg, "offline", progress=False)
    assert result.epochs == 1 and math.isfinite(result.last_top1)


# ------------------------------------------------------------------- merge order and -o


def test_merge_order_overlay_then_o(tmp_path, images):
    path = ppcls_config(tmp_path, images)
    user_offline = tmp_path / "user_offline.yaml"  # an Offline section before the overlay
    user_offline.write_text("Offline:\n  views: 9\n  codec: topk\n")
    later = tmp_path / "later.yaml"
    later.write_text("Global:\n  epochs: 5\nOffline:\n  views: 6\n")

    cfg = load_config([str(path), str(user_offline), str(OVERLAY)])
    assert cfg["Offline"]["views"] == OFFLINE_DEFAULTS["views"]  # the overlay came later
    assert cfg["Offline"]["codec"] == "fp16"
    assert cfg["Global"]["epochs"] == 3  # the overlay has no Global: the user's value stays

    cfg = load_config([str(path), str(OVERLAY), str(later)])
    assert (cfg["Offline"]["views"], cfg["Global"]["epochs"]) == (6, 5)

    cfg = load_config(
        [str(path), str(OVERLAY), str(later)], ["Offline.views=8", "Global.epochs=120"]
    )
    assert (cfg["Offline"]["views"], cfg["Global"]["epochs"]) == (8, 120)  # -o wins over all
    # anchors resolved before merging: class_num reached both models
    assert teacher_spec(cfg).class_num == student_spec(cfg).class_num == 4


# ------------------------------------------------------------------------ teacher weights


def test_teacher_weights_resolution(tmp_path, images):
    path = ppcls_config(tmp_path, images)
    cfg = load(path)
    assert teacher_weights_source(cfg) == (
        str(images["weights"]),
        "Arch.models.0.Teacher.pretrained",
    )
    model = build_model(teacher_spec(cfg))
    load_weights(model, teacher_spec(cfg).pretrained, "Offline.teacher_weights")

    other = save_random_weights(TEACHER, tmp_path / "listed.safetensors", seed=1)
    cfg = load(path, f"Arch.pretrained_list=['{other.with_suffix('')}', None]")
    assert teacher_weights_source(cfg) == (str(other), "Arch.pretrained_list.0")

    chosen = tmp_path / "chosen.safetensors"
    cfg = load(path, f"Arch.pretrained_list=['{other}', None]", f"Offline.teacher_weights={chosen}")
    assert teacher_weights_source(cfg) == (str(chosen), "Offline.teacher_weights")

    # a missing file names the .safetensors path looked for
    cfg = load(path, f"Arch.models.0.Teacher.pretrained={tmp_path / 'nothing'}")
    assert teacher_spec(cfg).pretrained == str(tmp_path / "nothing.safetensors")

    # only a .pdparams: chosen, but loaded only with allow_pickle_weights
    pickled = tmp_path / "old.pdparams"
    pickled.write_bytes(b"not loaded")
    cfg = load(path, f"Arch.models.0.Teacher.pretrained={tmp_path / 'old'}")
    assert teacher_spec(cfg).pretrained == str(pickled)
    with pytest.raises(ConfigError, match="allow_pickle_weights"):
        load_weights(build_model(teacher_spec(cfg)), teacher_spec(cfg).pretrained, "w")

    # PaddleClas's download flag and a URL are downloads (tests/test_pretrained.py), not paths
    for value in (True, "https://x/ResNet50_vd_pretrained.pdparams"):
        spec = teacher_spec(load(path, f"Arch.models.0.Teacher.pretrained={value}"), fetch=False)
        assert spec.pretrained is None and spec.download is not None
        assert spec.download.key == "Arch.models.0.Teacher.pretrained"
    # no weights at all: dump-teacher says where to put them
    cfg = load(path, "Arch.models.0.Teacher.pretrained=False", *tiny(tmp_path))
    with pytest.raises(ConfigError, match="Offline.teacher_weights"):
        run_dump(cfg, progress=False)


def test_missing_model_class_num_is_paddleclas_default(tmp_path, images):
    text = ppcls_config(tmp_path, images).read_text().replace("        class_num: *class_num\n", "")
    path = tmp_path / "no_class_num.yaml"
    path.write_text(text)
    cfg = load(path)
    assert teacher_spec(cfg).class_num == student_spec(cfg).class_num == 1000


# ------------------------------------------------------------------------------ errors


FEATURE_LOSS = (
    "Loss.Train=[{'DistillationDMLLoss': {'weight': 1.0}}, {'AFDLoss': {'weight': 50.0}}]"
)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["Global.use_dali=True"], "Global.use_dali"),
        (["Global.eval_mode=retrieval"], "Global.eval_mode"),
        (["Global.update_freq=2"], "Global.update_freq"),
        (["Global.hello=1"], "Global.hello"),
        (["DataLoader.Train.dataset.name=MultiLabelDataset"], "DataLoader.Train.dataset.name"),
        (["DataLoader.Eval.dataset.name=ImageNetDALIDataset"], "DataLoader.Eval.dataset.name"),
        (["DataLoader.Train.sampler.name=PKSampler"], "DataLoader.Train.sampler.name"),
        (["DataLoader.Train.sampler.sample_per_id=2"], "DataLoader.Train.sampler.sample_per_id"),
        (["DataLoader.Train.loader.persistent=True"], "DataLoader.Train.loader.persistent"),
        (
            ["DataLoader.Train.dataset.batch_transform_ops=[{'FmixOperator': {'alpha': 0.2}}]"],
            "DataLoader.Train.dataset.batch_transform_ops.0",
        ),
        (["DataLoader.Train.dataset.delimiter=''"], "DataLoader.Train.dataset.delimiter"),
        (["DataLoader.Gallery={}"], "DataLoader.Gallery"),
        (
            ["DataLoader.Train.dataset.transform_ops.2={'GridMask': None}"],
            "DataLoader.Train.dataset.transform_ops.2",
        ),
        ([FEATURE_LOSS], "Loss.Train.1.AFDLoss"),
        (
            ["Loss.Train=[{'DistillationDistanceLoss': {'weight': 1.0}}]"],
            "Loss.Train.0.DistillationDistanceLoss",
        ),
        (
            ["Loss.Train.0.DistillationDMLLoss.model_name_pairs=[['Student', 'Student2']]"],
            "Loss.Train.0.DistillationDMLLoss.model_name_pairs",
        ),
        (
            ["Loss.Train=[{'DistillationGTCELoss': {'model_names': ['Student', 'Teacher']}}]"],
            "Loss.Train.0.DistillationGTCELoss.model_names",
        ),
        (["Loss.Eval=[{'MSELoss': {'weight': 1.0}}]"], "Loss.Eval.0"),
        (["Loss.Test=[]"], "Loss.Test"),
        (
            [  # a third model (lists are replaced whole, by -o too)
                f"Arch.models=[{{'Teacher': {{'name': '{TEACHER}', 'class_num': 4}}}}, "
                f"{{'Student': {{'name': '{STUDENT}', 'class_num': 4}}}}, "
                "{'Assistant': {'name': 'ResNet18', 'class_num': 4}}]"
            ],
            "Arch.models.2",
        ),
        (["Arch.models.1={'Teacher': {'name': 'ResNet18'}}"], "Arch.models.1.Teacher"),
        (
            ["Arch.models.1.Student.return_patterns=['blocks[0]']"],
            "Arch.models.1.Student.return_patterns",
        ),
        (["Arch.models.0.Teacher.return_stages=[1, 2]"], "Arch.models.0.Teacher.return_stages"),
        (
            ["Arch.models.1.Student.pretrained=True", "Arch.models.1.Student.use_ssld=1"],
            "Arch.models.1.Student.use_ssld",
        ),
        (["Arch.freeze_params_list=[False, False]"], "Arch.freeze_params_list.0"),
        (["Arch.freeze_params_list=[True]"], "Arch.freeze_params_list"),
        (["Arch.lr_mult_list=[0.1]"], "Arch.lr_mult_list"),
        (["Optimizer.name=AdamW"], "Optimizer.name"),
        (["Optimizer.weight_decay=0.0001"], "Optimizer.weight_decay"),
        (["Optimizer.no_weight_decay_name=bn"], "Optimizer.no_weight_decay_name"),
        (["Optimizer.lr.name=ReduceOnPlateau"], "Optimizer.lr.name"),
        (["Optimizer.lr.by_epoch=True"], "Optimizer.lr.by_epoch"),
        (["Optimizer.lr.milestones=[30]"], "Optimizer.lr.milestones"),
        (["Optimizer.regularizer.name=L1"], "Optimizer.regularizer.name"),
        (["Metric.Eval=[{'mAP': {}}]"], "Metric.Eval.0"),
        (["Metric.Eval.0.DistillationTopkAcc.model_key=Teacher"], "Metric.Eval.0"),
        (["AMP.level=O2"], "AMP.level"),
        (["AMP.scale_loss=0"], "AMP.scale_loss"),
        (["AMP.custom_black_list=[]"], "AMP.custom_black_list"),
        (["Arch.use_sync_bn=1"], "Arch.use_sync_bn"),
        (["Arch.models.1.Student.use_sync_bn=True"], "Arch.models.1.Student.use_sync_bn"),
        (["Offline.view_policy=random"], "Offline.view_policy"),
    ],
)
def test_unsupported_keys_name_their_path(tmp_path, images, overrides, key):
    path = ppcls_config(tmp_path, images)
    cfg = load(path, *tiny(tmp_path), *overrides)
    with pytest.raises(ConfigError) as info:
        check_supported(cfg)
    assert str(info.value).startswith(key), str(info.value)
    # both stages refuse before any work: no cache, no checkpoint
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run_dump(cfg, progress=False)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train(cfg, "offline", progress=False)
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "output" / "latest.json").exists()


def test_backbone_arguments_pass_through_and_unknown_ones_are_named(tmp_path, images):
    """PaddleClas passes a model entry's other keys to the backbone (dropout_prob,
    stride_list, ...); so do we, and an argument the backbone lacks is named."""
    from offline_ssld.config.specs import student_spec
    from offline_ssld.models import build_model

    path = ppcls_config(tmp_path, images)
    cfg = load(path, *tiny(tmp_path), "Arch.models.1.Student.dropout_prob=0.3")
    check_supported(cfg)
    dropouts = [
        m for m in build_model(student_spec(cfg)).sublayers() if "Dropout" in type(m).__name__
    ]
    assert dropouts and all(abs(m.p - 0.3) < 1e-9 for m in dropouts)
    cfg = load(path, *tiny(tmp_path), "Arch.models.1.Student.bogus=1")
    with pytest.raises(ConfigError, match=r"^Arch\.models\.1\.Student\.bogus: .*dropout_prob"):
        check_supported(cfg)


def test_student_initial_weights_come_from_its_pretrained_entry(tmp_path, images):
    """SSLD's fine-tuning stage starts the Student from weights; a missing file is named."""
    path = ppcls_config(tmp_path, images)
    cfg = load(path, *tiny(tmp_path), "Arch.pretrained_list=[None, './no_such_student']")
    run_dump(cfg, progress=False)
    with pytest.raises(ConfigError, match=r"^Arch\.pretrained_list\.1: .*no_such_student"):
        train(cfg, "offline", progress=False)


def test_errors_list_what_is_supported(tmp_path, images):
    path = ppcls_config(tmp_path, images)
    for option, supported in [
        ("Optimizer.name=AdamW", "supported: Momentum"),
        ("Optimizer.lr.name=ReduceOnPlateau", "supported: Cosine, Piecewise, MultiStepDecay"),
        ("DataLoader.Train.dataset.name=CommonDataset", "supported: ImageNetDataset, Multi"),
        ("DataLoader.Train.dataset.name=MultiLabelDataset", "with Global.use_multilabel False"),
        ("Global.hello=1", "print_batch_step"),
        ("Global.use_dali=True", "use_dali: False"),
    ]:
        with pytest.raises(ConfigError, match=supported):
            check_supported(load(path, option))
    with pytest.raises(ConfigError, match="(?i)supported: .*DistillationDMLLoss"):
        check_supported(load(path, FEATURE_LOSS))


def test_paddleclas_dml_mutual_learning_is_refused_with_reason(tmp_path, images):
    text = ppcls_config(tmp_path, images, "kl").read_text()
    text = text.replace("  - True\n  - False\n", "  - False\n  - False\n")
    path = tmp_path / "dml_mutual.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"Arch\.freeze_params_list\.0: the Teacher must be"):
        check_supported(load(path))


def test_cli_errors_are_one_line(tmp_path, images):
    path = ppcls_config(tmp_path, images)
    for command in ("overlay", "dump-teacher", "train-student"):
        result = CliRunner().invoke(
            main, [command, "-c", str(path), "-c", str(OVERLAY), "-o", "Optimizer.name=AdamW"]
        )
        assert result.exit_code == 2, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines == ["error: Optimizer.name: 'AdamW' is not supported; supported: Momentum"], (
            result.stderr
        )


# ------------------------------------------------------------------------- overlay command


def test_overlay_command_prints_effective_config_and_summary(tmp_path, images):
    path = ppcls_config(tmp_path, images, "kl")
    cache = tmp_path / "my_cache"
    result = CliRunner().invoke(
        main,
        ["overlay", "-c", str(path), "-c", str(OVERLAY), "-o", f"Offline.cache_dir={cache}"]
        + ["-o", "Offline.views=8", "-o", "Global.epochs=120"],
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert TEACHER in out and STUDENT in out and str(cache) in out
    assert str(images["weights"]) in out and "Arch.models.0.Teacher.pretrained" in out
    assert "Loss.Train.0.DistillationGTCELoss -> gt_ce (weight 1)" in out
    assert "Loss.Train.1.DistillationKLDivLoss -> kl (weight 0.9, temperature 4)" in out
    assert "views 8" in out and "epochs: 120" in out and "Cosine" in out
    assert "ToCHWImage appended" in out
    # the fixture's AMP section (no use_amp) turns AMP on, as in PaddleClas; this host has no GPU
    assert (
        "mixed precision: AMP O1, use_promote False, GradScaler scale_loss 128, dynamic loss "
        "scaling True, fp16 eval False; scaler state kept in checkpoints; requested but "
        "unavailable on cpu: trains fp32"
    ) in out
    assert "BatchNorm: per process (Arch.use_sync_bn false)" in out

    # the printed text is the effective config and loads again as one
    merged = tmp_path / "merged.yaml"
    merged.write_text(out)
    cfg = load_config([str(merged)])
    check_supported(cfg)
    assert cfg == load(path, f"Offline.cache_dir={cache}", "Offline.views=8", "Global.epochs=120")


def test_overlay_help_has_an_example():
    result = CliRunner().invoke(main, ["overlay", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "configs/overlays/offline_ssld.yaml" in result.output


# ------------------------------------------------------------------------------ recipes


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {
        "res50_vd_distill_mv3_large_x1_0_offline.yaml",
        "res50_vd_distill_mv3_small_x1_0_offline.yaml",
        "pplcnet_x2_5_ssld_offline.yaml",
    } <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipes_pass_load_and_check(recipe):
    cfg = load_config([str(recipe)])
    check_supported(cfg)
    assert teacher_spec(cfg).name == "ResNet50_vd"
    assert teacher_spec(cfg).pretrained == "./pretrained/ResNet50_vd_ssld_pretrained.safetensors"
    assert cfg["DataLoader"]["Train"]["dataset"]["image_root"] == "./dataset/ILSVRC2012/"
    check_supported(load_config([str(recipe), str(OVERLAY)]))


def test_recipes_share_one_teacher_cache():
    """Same teacher, list, Train transforms and Offline settings: dump once, train three."""
    keys = set()
    for recipe in RECIPES:
        cfg = load_config([str(recipe)])
        train_data = cfg["DataLoader"]["Train"]["dataset"]
        keys.add(
            yaml.safe_dump([cfg["Arch"]["models"][0], train_data, cfg["Offline"]], sort_keys=True)
        )
    assert len(keys) == 1
