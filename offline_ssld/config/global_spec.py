"""The `Global` section parsed once into a frozen, typed GlobalSpec.

Stages read Global's keys from the spec, never from the raw mapping, so a wrong type is one
error naming `Global.<key>` at the start of a run instead of a failure epochs later. Which keys
a stage honours (and which it refuses) is compat's business (config/paddleclas.py); this only
types the ones that are read. Defaults are PaddleClas's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from offline_ssld.config.loading import as_mapping
from offline_ssld.errors import ConfigError

DEVICES = ("gpu", "cpu")


@dataclass(frozen=True)
class GlobalSpec:
    """The checked `Global` section; field names are the keys."""

    seed: int = 0
    epochs: int = 1
    output_dir: str = "output"
    device: str = "gpu"  # a preference: a run without CUDA uses the cpu
    eval_interval: int = 1
    save_interval: int = 1
    start_eval_epoch: int = 0  # evaluate only after this epoch, as PaddleClas does
    use_visualdl: bool = False
    use_multilabel: bool = False
    pretrained_model: str | None = None  # path without the .safetensors suffix
    save_inference_dir: str = "./inference"  # export-student
    image_shape: tuple[int, ...] = (3, 224, 224)  # export-student's input, CHW
    class_num: int | None = None  # deprecated alias PaddleClas copies into a plain Arch


def _integer(value: Any, key: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{key}: expected an integer >= {least}, got {value!r}")
    return value


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _path(value: Any, key: str, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        what = "null or a path" if optional else "a path"
        raise ConfigError(f"{key}: expected {what}, got {value!r}")
    return value


def global_spec(cfg: dict) -> GlobalSpec:
    """Parse and check cfg's Global section; absent keys take PaddleClas's defaults."""
    glob = as_mapping(cfg.get("Global"), "Global")
    given = {f.name: glob.get(f.name, f.default) for f in fields(GlobalSpec)}
    device = given["device"]
    if not isinstance(device, str) or device.lower() not in DEVICES:
        raise ConfigError(f"Global.device: {device!r} is not supported; use gpu or cpu")
    shape = given["image_shape"]
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) != 3
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape)
    ):
        raise ConfigError(
            f"Global.image_shape: expected [C, H, W] positive integers, got {shape!r}"
        )
    class_num = given["class_num"]
    return GlobalSpec(
        seed=_integer(given["seed"], "Global.seed", 0),
        epochs=_integer(given["epochs"], "Global.epochs", 1),
        output_dir=str(_path(given["output_dir"], "Global.output_dir", False)),
        device=device.lower(),
        eval_interval=_integer(given["eval_interval"], "Global.eval_interval", 1),
        save_interval=_integer(given["save_interval"], "Global.save_interval", 1),
        start_eval_epoch=_integer(given["start_eval_epoch"], "Global.start_eval_epoch", 0),
        use_visualdl=_flag(given["use_visualdl"], "Global.use_visualdl"),
        use_multilabel=_flag(given["use_multilabel"], "Global.use_multilabel"),
        pretrained_model=_path(given["pretrained_model"], "Global.pretrained_model", True),
        save_inference_dir=str(
            _path(given["save_inference_dir"], "Global.save_inference_dir", False)
        ),
        image_shape=tuple(shape),
        class_num=None if class_num is None else _integer(class_num, "Global.class_num", 1),
    )
