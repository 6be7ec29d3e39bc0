"""Global parsed into a frozen, typed GlobalSpec with one-line errors naming the key."""

import dataclasses

import pytest

from offline_ssld.config.global_spec import GlobalSpec, global_spec
from offline_ssld.errors import ConfigError


def test_absent_global_gives_paddleclas_defaults():
    assert global_spec({}) == GlobalSpec()
    assert global_spec({"Global": None}).epochs == 1


def test_values_are_typed_and_frozen():
    spec = global_spec(
        {
            "Global": {
                "seed": 3,
                "epochs": 7,
                "device": "CPU",
                "image_shape": [3, 32, 32],
                "pretrained_model": "out/best_model",
                "use_visualdl": True,
            }
        }
    )
    assert (spec.seed, spec.epochs, spec.device) == (3, 7, "cpu")
    assert spec.image_shape == (3, 32, 32) and spec.pretrained_model == "out/best_model"
    assert spec.use_visualdl and not spec.use_multilabel
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.epochs = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "key, value",
    [
        ("epochs", 0),
        ("epochs", "3"),
        ("seed", -1),
        ("seed", True),
        ("eval_interval", 1.5),
        ("start_eval_epoch", -2),
        ("device", "tpu"),
        ("use_visualdl", "yes"),
        ("output_dir", ""),
        ("pretrained_model", 5),
        ("image_shape", [3, 224]),
        ("image_shape", [3, 0, 224]),
        ("class_num", 0),
    ],
)
def test_bad_value_is_one_line_naming_the_key(key, value):
    with pytest.raises(ConfigError) as info:
        global_spec({"Global": {key: value}})
    message = str(info.value)
    assert message.startswith(f"Global.{key}: ") and "\n" not in message, message


def test_global_must_be_a_mapping():
    with pytest.raises(ConfigError, match=r"^Global: expected a mapping"):
        global_spec({"Global": [1]})
