"""PaddleClas-shaped configuration: load `-c` files, merge them, apply `-o` overrides.

The schema is PaddleClas's distillation config (`Global`, `Arch`, `Loss`, `Optimizer`,
`DataLoader`, `Metric`) plus one `Offline` section (config/offline.py). Semantics follow
PaddleClas's `ppcls.utils.config` (safe YAML loading, string scalars parsed as Python literals,
dotted `-o` keys with integer list indices) with one deliberate difference: values are parsed
with `ast.literal_eval`, never `eval`, so no text from a file or command line can run code.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path
from typing import Any

import yaml

from offline_ssld.config.offline import offline_section
from offline_ssld.errors import ConfigError

# One place for every DataFree key (`offline-ssld synthesize`, DAFL data-free distillation).
DATAFREE_DEFAULTS: dict[str, Any] = {
    "output_dir": "output/datafree",  # generator checkpoint, images/, list.txt, preview.png
    "images": 6000,  # PNGs written after training (the list dump-teacher reads)
    "image_size": 32,  # generated height = width; must equal the teacher's view size
    "channels": 3,  # 3 (colour) or 1 (grey PNGs, decoded to 3 equal channels)
    "latent_dim": 100,  # generator input noise dimension (DAFL: 100)
    "generator_channels": 128,  # generator width (DAFL: 128)
    "steps": 1500,  # generator updates (Adam)
    "batch_size": 256,  # generated images per update (DAFL MNIST: 512)
    "lr": 0.01,  # Adam; DAFL MNIST uses 0.2, which saturates a tanh pixel output (measured)
    "oh_weight": 1.0,  # one-hot loss weight (DAFL: 1)
    "activation_weight": 0.1,  # activation loss weight (DAFL MNIST: alpha = 0.1)
    "ie_weight": 5.0,  # information-entropy loss weight (DAFL: beta = 5)
    "save_every": 100,  # checkpoint every this many steps (and at the end)
    "seed": 0,  # fixes generator initialisation, every latent batch and so every image
}
KNOWN_SECTIONS = {
    "Global",
    "Arch",
    "Loss",
    "Optimizer",
    "DataLoader",
    "Metric",
    "Offline",
    "Infer",
    "AMP",
    "DataFree",
}


def _parse_scalar(value: str) -> Any:
    """PaddleClas parses string scalars as Python literals; we do the same without eval."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def _literals(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _literals(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_literals(v) for v in node]
    if isinstance(node, str):
        return _parse_scalar(node)
    return node


def load_yaml(path: str | Path) -> dict:
    """One YAML file, safely loaded (anchors and aliases resolved), errors naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: config file is not UTF-8 ({exc.reason})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: top level must be a mapping of sections, got {type(data).__name__}"
        )
    return _literals(data)


def merge(base: dict, other: dict) -> dict:
    """Later files win key by key; nested mappings merge, lists are replaced whole."""
    out = copy.deepcopy(base)
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(cfg: dict, option: str) -> None:
    """Apply one `Dotted.key.0.leaf=value` (integer segments index lists)."""
    if "=" not in option:
        raise ConfigError(f"-o {option!r}: expected Key.sub=value")
    key, raw = option.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"-o {option!r}: empty key segment")
    node: Any = cfg
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit():
                raise ConfigError(f"-o {key}: {where} indexes a list, needs an integer")
            index = int(part)
            if not -len(node) <= index < len(node):
                raise ConfigError(f"-o {key}: index {index} out of range (list has {len(node)})")
            if last:
                node[index] = _parse_scalar(raw)
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = _parse_scalar(raw)
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"-o {key}: {'.'.join(parts[:depth])} is a value, not a section")


def load_config(
    files: list[str] | tuple[str, ...], overrides: list[str] | tuple[str, ...] = ()
) -> dict:
    """Merge `files` left to right, apply `overrides`, fill Offline defaults, validate keys."""
    if not files:
        raise ConfigError("no config file given: pass -c FILE (repeatable)")
    cfg: dict = {}
    for path in files:
        cfg = merge(cfg, load_yaml(path))
    for option in overrides:
        apply_override(cfg, option)
    unknown = sorted(set(cfg) - KNOWN_SECTIONS)
    if unknown:
        raise ConfigError(
            f"unknown config section {unknown[0]!r}; known: {', '.join(sorted(KNOWN_SECTIONS))}"
        )
    cfg["Offline"] = offline_section(cfg.get("Offline"))
    if "DataFree" in cfg:  # filled only when given, so other stages' configs stay as written
        datafree = cfg["DataFree"] or {}
        if not isinstance(datafree, dict):
            raise ConfigError("DataFree: must be a mapping")
        for key in datafree:
            if key not in DATAFREE_DEFAULTS:
                raise ConfigError(
                    f"DataFree.{key}: unknown key; known: {', '.join(sorted(DATAFREE_DEFAULTS))}"
                )
        cfg["DataFree"] = {**DATAFREE_DEFAULTS, **datafree}
    return cfg


def get(cfg: dict, path: str, default: Any = ConfigError) -> Any:
    """Read a dotted key; a missing required key is an error that names it."""
    node: Any = cfg
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            if default is ConfigError:
                raise ConfigError(f"{path}: required key is missing")
            return default
    return node


def dump_yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)


def as_mapping(node: Any, key: str) -> dict:
    """A section that may be absent (None) as a mapping; anything else names its key."""
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise ConfigError(f"{key}: expected a mapping, got {node!r}")
    return node


def only_keys(
    node: dict, key: str, supported: tuple[str, ...], harmless: tuple[str, ...] = ()
) -> None:
    """Every key of `node` is supported or harmless; the error names the first other one."""
    for name in node:
        if name not in supported and name not in harmless:
            listed = ", ".join([*supported, *harmless])
            raise ConfigError(f"{key}.{name}: not supported offline; supported keys: {listed}")
