"""Every distillation config PaddleClas ships, run offline as a user would: the config plus
configs/overlays/offline_ssld.yaml, with only data paths and the device overridden, through
check_supported, a tiny dump-teacher and one epoch of train-student on generated images with
the config's own transform list, backbones and losses.

Weights stay as shipped. `pretrained: True` (with use_ssld) downloads the model zoo's file
through PaddleClas's own URL choice and download code; this machine has no internet, so the
zoo is stood in for by random 1000-class weights under the same file names, served on
127.0.0.1 (LocalZoo). Only weights a config cannot download are overridden with random
stand-ins: a path on the author's machine, or a teacher the config leaves to be trained first
(PULC). Each result's `weights` says which.

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

import contextlib
import functools
import http.server
import json
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

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


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving(directory: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving `directory` from a thread; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class LocalZoo:
    """PaddleClas's model zoo stood in for on 127.0.0.1. `fetch` receives the URL PaddleClas
    picked and downloads the file of the same name from the local server with PaddleClas's own
    download code, into PaddleClas's cache directory (WEIGHTS_HOME, moved under `work`)."""

    def __init__(self, served: Path, base_url: str) -> None:
        self.served, self.base_url = served, base_url
        self.urls: list[str] = []  # what PaddleClas asked for, in order

    def fetch(self, url: str) -> str:
        from offline_ssld.pretrained import paddleclas_fetch

        self.urls.append(url)
        return paddleclas_fetch(f"{self.base_url}/{PurePosixPath(urlparse(url).path).name}")

    def stock(self, spec: Any, seed: int = 0) -> Path:
        """Random weights of `spec`'s backbone at the zoo's 1000 classes, saved (as PaddleClas
        saves them, paddle.save of a state dict) under its zoo URL's file name."""
        import paddle

        from offline_ssld.config.specs import PADDLECLAS_CLASS_NUM, ModelSpec
        from offline_ssld.models import construct
        from offline_ssld.pretrained import source_url

        path = self.served / PurePosixPath(urlparse(source_url(spec)).path).name
        paddle.seed(seed)
        model = construct(ModelSpec(spec.name, PADDLECLAS_CLASS_NUM, None, spec.key, spec.args))
        paddle.save(model.state_dict(), str(path))
        return path


@contextlib.contextmanager
def local_zoo(work: Path) -> Iterator[LocalZoo]:
    """Downloads go to a LocalZoo for the duration; PaddleClas's cache is `work`/weights."""
    from paddleclas.ppcls.utils import download

    from offline_ssld import pretrained

    served = work / "zoo"
    served.mkdir(parents=True, exist_ok=True)
    saved = pretrained.FETCH, download.WEIGHTS_HOME
    with serving(served) as base_url:
        zoo = LocalZoo(served, base_url)
        pretrained.FETCH, download.WEIGHTS_HOME = zoo.fetch, str(work / "weights")
        try:
            yield zoo
        finally:
            pretrained.FETCH, download.WEIGHTS_HOME = saved


def weights_plan(raw: dict) -> tuple[str, dict[str, str]]:
    """What each model's weights are in this survey, and the -o overrides for the weights
    PaddleClas could not get here either: a path on the author's machine, or a teacher the
    config leaves to be trained first (random stand-ins, written by _stand_ins)."""
    arch = raw.get("Arch") or {}
    notes, stand_ins = [], {}
    for i, item in enumerate(arch.get("models") or []):
        ((role, entry),) = item.items()
        value = entry.get("pretrained") if isinstance(entry, dict) else None
        if value is True:
            ssld = " SSLD" if entry.get("use_ssld") else ""
            notes.append(f"{role}: zoo{ssld} download (stood in for: served on 127.0.0.1)")
        elif isinstance(value, str) and value:
            notes.append(f"{role}: a path on the author's machine (random stand-in)")
            stand_ins[f"Arch.models.{i}.{role}.pretrained"] = role
        elif role == "Teacher":
            notes.append(f"{role}: none in the config, trained first (random stand-in)")
            stand_ins["Offline.teacher_weights"] = role
        else:
            notes.append(f"{role}: random initialisation (as shipped)")
    return "; ".join(notes), stand_ins


def _stand_ins(cfg: dict, stand_ins: dict[str, str], work: Path) -> list[str]:
    from offline_ssld.config import specs
    from offline_ssld.models import construct, save_weights

    out = []
    for key, role in stand_ins.items():
        spec = specs.student_spec(cfg) if role == "Student" else specs.teacher_spec(cfg, False)
        path = work / f"{role}.safetensors"
        save_weights(construct(spec), path)
        out.append(f"{key}={path}")
    return out


def survey_one(raw: dict, work: Path) -> dict[str, str]:
    """Status of one shipped config; `work` is an empty directory."""
    from offline_ssld.config import specs
    from offline_ssld.config.loading import load_config
    from offline_ssld.config.paddleclas import check_supported
    from offline_ssld.dump import run_dump
    from offline_ssld.errors import OfflineSSLDError
    from offline_ssld.train import train

    (work / "images").mkdir(parents=True)
    (work / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    data = []
    weights, stand_ins = weights_plan(raw)
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
        files = [str(work / "config.yaml"), str(OVERLAY)]
        cfg = load_config(files, overrides)
        check_supported(cfg)  # as shipped: no weights overridden
        cfg = load_config(files, overrides + _stand_ins(cfg, stand_ins, work))
        with local_zoo(work) as zoo:
            for spec in (specs.teacher_spec(cfg, fetch=False), specs.student_spec(cfg)):
                if spec.download is not None:
                    zoo.stock(spec)
            run_dump(cfg, progress=False)
            train(cfg, "offline", progress=False)
    except OfflineSSLDError as exc:
        message = str(exc).splitlines()[0]
        for words, reason in INHERENT.items():
            if words in message:
                status = {"status": "refused (inherent)", "reason": reason, "message": message}
                return {**status, "weights": ""}
        status = {"status": "not yet", "reason": message.split(":")[0], "message": message}
        return {**status, "weights": weights}
    return {"status": "runs", "reason": "", "message": "", "weights": weights}


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
