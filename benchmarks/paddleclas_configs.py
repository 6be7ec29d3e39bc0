"""Every distillation config PaddleClas ships, run offline as a user would: the config plus
configs/overlays/offline_ssld.yaml, with only data and weight paths overridden, through
check_supported, a tiny dump-teacher and one epoch of train-student on generated images with
the config's own transform list, backbones and losses.

The configs come from tests/data/paddleclas_distillation_configs.json (their key paths and
values at a recorded PaddleClas commit). Each gets a status:
- runs: dump and training finished;
- refused (inherent): refused for a reason caching a teacher cannot avoid (a teacher that
  trains, a loss on intermediate features, retrieval evaluation);
- not yet: refused for anything else; the message names the key.

    python benchmarks/paddleclas_configs.py   # writes benchmarks/results/paddleclas_configs.json

tests/test_paddleclas_configs.py runs the same survey per config and checks it against the
results file, and benchmarks/report.py renders the README table from that file.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "data" / "paddleclas_distillation_configs.json"
OVERLAY = ROOT / "configs" / "overlays" / "offline_ssld.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "paddleclas_configs.json"
IMAGES, SIZE = 4, 256  # large enough for every shipped crop (224 and smaller)

# Refusals caching a teacher cannot avoid, recognised by the words of our own errors.
INHERENT = {
    "the Teacher must be frozen": "mutual learning: the teacher trains",
    "intermediate features": "loss on intermediate features",
    "feature-based loss": "loss on intermediate features",
    "'retrieval' is not supported": "retrieval evaluation",
}


def shipped() -> dict[str, Any]:
    return json.loads(CONFIGS.read_text())


def _images(root: Path, class_num: int, multilabel: bool) -> list[tuple[str, str]]:
    """Generated images and their labels as list text: a class, or (MultiLabelDataset) one
    random 0/1 per attribute, comma-separated as PaddleClas writes them."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(IMAGES):
        rel = f"img{i}.jpg"
        ok, buf = cv2.imencode(".jpg", rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        assert ok
        (root / rel).write_bytes(buf.tobytes())
        attributes = ",".join(str(v) for v in rng.integers(0, 2, class_num))
        out.append((rel, attributes if multilabel else str(i % class_num)))
    return out


def _weights_overrides(raw: dict, work: Path) -> list[str]:
    """Random safetensors weights for every model entry whose weights PaddleClas would
    download (`pretrained: True`) or read from a path of its own machine."""
    from offline_ssld.config.specs import PADDLECLAS_CLASS_NUM, ModelSpec
    from offline_ssld.errors import ConfigError
    from offline_ssld.models import build_model, save_weights

    arch = raw.get("Arch") or {}
    out = []
    for i, item in enumerate(arch.get("models") or []):
        ((role, entry),) = item.items()
        if role not in ("Teacher", "Student"):
            continue
        class_num = entry.get("class_num", arch.get("class_num", PADDLECLAS_CLASS_NUM))
        path = work / f"{role}.safetensors"
        if role == "Teacher" or entry.get("pretrained") not in (None, False, ""):
            try:
                model = build_model(ModelSpec(entry["name"], class_num, None, role))
            except ConfigError:
                continue  # not a backbone (RecModel, ...): check_supported says why
            save_weights(model, path)
            key = (
                "Offline.teacher_weights"
                if role == "Teacher"
                else f"Arch.models.{i}.{role}.pretrained"
            )
            out.append(f"{key}={path}")
    if arch.get("pretrained_list"):
        out.append(f"Arch.pretrained_list={[None] * len(arch['pretrained_list'])}")
    return out


def survey_one(raw: dict, work: Path) -> dict[str, str]:
    """Status of one shipped config; `work` is an empty directory."""
    from offline_ssld.config.loading import load_config
    from offline_ssld.config.paddleclas import check_supported
    from offline_ssld.dump import run_dump
    from offline_ssld.errors import OfflineSSLDError
    from offline_ssld.train import train

    (work / "images").mkdir(parents=True)
    (work / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    data = []
    try:
        arch = raw.get("Arch") or {}
        class_num = int(arch.get("class_num") or 1000)
        train_set = ((raw.get("DataLoader") or {}).get("Train") or {}).get("dataset") or {}
        multilabel = train_set.get("name") == "MultiLabelDataset"
        entries = _images(work / "images", class_num, multilabel)
        listing = work / "list.txt"
        # the list in the config's own format; MultiLabelDataset's is tab-separated
        sep = "\t" if multilabel else train_set.get("delimiter") or " "
        listing.write_text("".join(f"{p}{sep}{label}\n" for p, label in entries))
        for split in ("Train", "Eval"):
            dataset = f"DataLoader.{split}.dataset"
            data += [
                f"{dataset}.image_root={work / 'images'}",
                f"{dataset}.cls_label_path={listing}",
                f"DataLoader.{split}.sampler.batch_size=2",
                f"DataLoader.{split}.loader.num_workers=0",
            ]
        overrides = [
            *data,
            f"Global.output_dir={work / 'output'}",
            "Global.epochs=1",
            "Global.device=cpu",
            f"Offline.cache_dir={work / 'cache'}",
            "Offline.views=1",
            "Offline.batch_size=2",
        ]
        overrides += _weights_overrides(raw, work)
        cfg = load_config([str(work / "config.yaml"), str(OVERLAY)], overrides)
        check_supported(cfg)
        run_dump(cfg, progress=False)
        train(cfg, "offline", progress=False)
    except OfflineSSLDError as exc:
        message = str(exc).splitlines()[0]
        for words, reason in INHERENT.items():
            if words in message:
                return {"status": "refused (inherent)", "reason": reason, "message": message}
        return {"status": "not yet", "reason": message.split(":")[0], "message": message}
    return {"status": "runs", "reason": "", "message": ""}


@click.command()
@click.option(
    "--only", default=None, help="Re-survey only the configs whose path contains this text."
)
def main(only: str | None) -> None:
    """Run every shipped PaddleClas distillation config offline; write the results JSON.

    \b
    Example:
      python benchmarks/paddleclas_configs.py
    """
    data = shipped()
    # --only re-surveys some configs and keeps the recorded status of the others: each
    # config's run is independent of the rest.
    results = json.loads(RESULTS.read_text())["configs"] if only and RESULTS.exists() else {}
    for path, raw in data["configs"].items():
        if only and only not in path:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            results[path] = survey_one(raw, Path(tmp))
        click.echo(f"{results[path]['status']:>20}  {path}  {results[path]['message'][:100]}")
    RESULTS.write_text(
        json.dumps(
            {
                "paddleclas": data["source"],
                "command": "python benchmarks/paddleclas_configs.py",
                "configs": results,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
