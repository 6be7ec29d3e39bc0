"""Data-free distillation through the cache: DAFL (Chen et al., ICCV 2019).

When the training images cannot be shared but the teacher can, a generator is trained against
the frozen teacher so that its images (1) make the teacher confident (one-hot loss), (2) excite
the teacher's penultimate features strongly (activation loss) and (3) spread the teacher's
predictions evenly over the classes (information-entropy loss). `synthesize` writes N of those
images as PNGs with an unlabeled list; `dump-teacher` and `train-student` then run on that list
unchanged, so the student learns from generated images and the teacher only.

DAFL alternates generator and student steps on fresh images; here the generator is trained
first and its images are frozen into a dataset, so the student stage is the ordinary cache.

Input space. The PNGs hold uint8 pixels, so during training the generator's tanh output is
mapped to [0, 255] and rounded with a straight-through estimator (forward: the exact uint8 the
PNG will hold; backward: identity), repeated to 3 channels for grey images (as cv2's colour
decode does), and normalised with the config's NormalizeImage (DataLoader.Train). The teacher
thus sees what dump-teacher gives it for the PNG's full, unflipped view; the Train ops' random
crops and flips then augment a generated image exactly as they augment a real one.
`DataFree.image_size` must equal the size of the teacher's views (checked).

Penultimate features. PaddleClas backbones return the output of a final classifier layer, so
its input is the penultimate feature. That layer is found by running the teacher once with
hooks on every `nn.Linear` and keeping the one whose output *is* the model's output; a forward
pre-hook on it then captures its input on every step. This holds for any backbone whose head
ends in a Linear (ResNet, MobileNetV3, PPLCNet, ...) without knowing attribute names.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from offline_ssld.atomic import atomic_write, write_text_atomic
from offline_ssld.cache.fingerprint import teacher_identity
from offline_ssld.config import loading, paddleclas, specs
from offline_ssld.data.transforms import DecodeImage, NormalizeImage, Pipeline, build_ops
from offline_ssld.errors import ConfigError
from offline_ssld.models import load_teacher, select_device
from offline_ssld.train import visualdl_writer

CHECKPOINT = "generator.safetensors"
LIST_FILE = "list.txt"
PREVIEW_FILE = "preview.png"
SUMMARY_FILE = "synthesis.json"
PREVIEW_COLUMNS = 8
PREVIEW_CLASSES = 100  # rows of the preview: a 1000-class grid would be unreadable
_LOG_EPS = 1e-12  # keeps p * log p finite when a class's mean probability underflows to 0
# Settings that change the generator's training; a checkpoint made with others is refused.
_TRAINING_KEYS = (
    "image_size",
    "channels",
    "latent_dim",
    "generator_channels",
    "batch_size",
    "lr",
    "oh_weight",
    "activation_weight",
    "ie_weight",
    "seed",
)


# ------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class DataFreeSettings:
    """The checked `DataFree` section (defaults: config.DATAFREE_DEFAULTS)."""

    output_dir: str
    images: int
    image_size: int
    channels: int
    latent_dim: int
    generator_channels: int
    steps: int
    batch_size: int
    lr: float
    oh_weight: float
    activation_weight: float
    ie_weight: float
    save_every: int
    seed: int


def _int(section: dict, key: str, low: int) -> int:
    value = section[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"DataFree.{key}: expected an integer >= {low}, got {value!r}")
    return value


def _float(section: dict, key: str, positive: bool) -> float:
    value = section[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0 or (positive and value == 0):
        what = "a number > 0" if positive else "a number >= 0"
        raise ConfigError(f"DataFree.{key}: expected {what}, got {value!r}")
    return float(value)


def datafree_settings(cfg: dict) -> DataFreeSettings:
    """Read and check `DataFree`; each error names the key at fault."""
    section = {**loading.DATAFREE_DEFAULTS, **(cfg.get("DataFree") or {})}
    image_size = _int(section, "image_size", 4)
    if image_size % 4:
        raise ConfigError(
            f"DataFree.image_size: {image_size} is not a multiple of 4 (the generator "
            "upsamples twice by 2)"
        )
    channels = _int(section, "channels", 1)
    if channels not in (1, 3):
        raise ConfigError(f"DataFree.channels: expected 1 (grey PNGs) or 3, got {channels}")
    width = _int(section, "generator_channels", 2)
    if width % 2:
        raise ConfigError(f"DataFree.generator_channels: expected an even number, got {width}")
    if not isinstance(section["output_dir"], str) or not section["output_dir"]:
        raise ConfigError(f"DataFree.output_dir: expected a path, got {section['output_dir']!r}")
    return DataFreeSettings(
        output_dir=section["output_dir"],
        images=_int(section, "images", 1),
        image_size=image_size,
        channels=channels,
        latent_dim=_int(section, "latent_dim", 1),
        generator_channels=width,
        steps=_int(section, "steps", 0),
        batch_size=_int(section, "batch_size", 2),  # BatchNorm needs two samples
        lr=_float(section, "lr", positive=True),
        oh_weight=_float(section, "oh_weight", positive=False),
        activation_weight=_float(section, "activation_weight", positive=False),
        ie_weight=_float(section, "ie_weight", positive=False),
        save_every=_int(section, "save_every", 1),
        seed=_int(section, "seed", 0),
    )


# ------------------------------------------------------------------------------ losses


def one_hot_loss(logits: paddle.Tensor) -> paddle.Tensor:
    """Cross-entropy of the teacher's logits against their own argmax: confident outputs."""
    target = logits.argmax(axis=1, keepdim=True).detach()
    return F.cross_entropy(logits, target)


def activation_loss(features: paddle.Tensor) -> paddle.Tensor:
    """-mean |f| of the penultimate features: real images excite them strongly."""
    return -features.abs().mean()


def information_entropy_loss(logits: paddle.Tensor) -> paddle.Tensor:
    """sum p log p of the batch-mean softmax (= -H): minimised when classes are balanced.

    Natural log, as the paper writes it; DAFL's released code uses log10, which is the same
    loss divided by ln 10."""
    mean = F.softmax(logits, axis=1).mean(axis=0)
    return (mean * paddle.log(paddle.clip(mean, min=_LOG_EPS))).sum()


def dafl_losses(
    logits: paddle.Tensor, features: paddle.Tensor | None, s: DataFreeSettings
) -> dict[str, paddle.Tensor]:
    """The three DAFL terms and their weighted sum (`total`)."""
    terms = {
        "one_hot": one_hot_loss(logits),
        "information_entropy": information_entropy_loss(logits),
    }
    total = s.oh_weight * terms["one_hot"] + s.ie_weight * terms["information_entropy"]
    if features is not None:
        terms["activation"] = activation_loss(features)
        total = total + s.activation_weight * terms["activation"]
    terms["total"] = total
    return terms


# ------------------------------------------------------------------------------ generator


class Generator(nn.Layer):
    """DAFL's DCGAN-style generator: linear -> BN -> (upsample x2, conv, BN, LeakyReLU) twice
    -> conv -> tanh. DAFL ends with an affine-free BN after the tanh, which would leave pixel
    space; here the tanh output is the image, because it must become a uint8 PNG."""

    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int) -> None:
        super().__init__()
        self.width, self.init_size = width, image_size // 4
        self.fc = nn.Linear(latent_dim, width * self.init_size**2)
        self.bn0 = nn.BatchNorm2D(width)
        self.block1 = nn.Sequential(
            nn.Conv2D(width, width, 3, padding=1), nn.BatchNorm2D(width), nn.LeakyReLU(0.2)
        )
        self.block2 = nn.Sequential(
            nn.Conv2D(width, width // 2, 3, padding=1),
            nn.BatchNorm2D(width // 2),
            nn.LeakyReLU(0.2),
            nn.Conv2D(width // 2, channels, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: paddle.Tensor) -> paddle.Tensor:
        x = self.fc(z).reshape([-1, self.width, self.init_size, self.init_size])
        x = F.interpolate(self.bn0(x), scale_factor=2, mode="nearest")
        x = F.interpolate(self.block1(x), scale_factor=2, mode="nearest")
        return self.block2(x)


def latent(s: DataFreeSettings, stream: int, index: int) -> paddle.Tensor:
    """Latent batch `index` of `stream` (0: training steps, 1: written images), a pure function
    of the seed, so a resumed run draws what an uninterrupted one would have."""
    seq = np.random.SeedSequence([s.seed, stream, index])
    z = np.random.Generator(np.random.PCG64(seq)).standard_normal((s.batch_size, s.latent_dim))
    return paddle.to_tensor(z.astype(np.float32))


# ------------------------------------------------------------------------------ input space


class TeacherView:
    """Generator output -> uint8 pixels -> the teacher's input, as dump-teacher decodes and
    normalises the PNG (see the module docstring)."""

    def __init__(self, cfg: dict, s: DataFreeSettings) -> None:
        spec = specs.data_spec(cfg, "Train")
        key = f"{spec.key}.transform_ops"
        ops = build_ops(spec.transform_ops, key)
        norms = [op for op in ops if isinstance(op, NormalizeImage)]
        if not norms:
            raise ConfigError(f"{key}: synthesize needs a NormalizeImage op to map pixels")
        decode, norm = ops[0], norms[-1]
        assert isinstance(decode, DecodeImage)  # build_ops guarantees it
        self.channels = s.channels
        self.reverse = decode.to_rgb and s.channels == 3  # cv2 writes BGR, decode gives RGB
        self.pad = norm.channel_num - 3
        self.scale = float(norm.scale)
        self.mean = paddle.to_tensor(np.asarray(norm.mean, dtype=np.float32).reshape(1, 3, 1, 1))
        self.std = paddle.to_tensor(np.asarray(norm.std, dtype=np.float32).reshape(1, 3, 1, 1))
        probe = np.zeros((s.image_size, s.image_size, s.channels), np.uint8)
        out, _ = Pipeline(ops, key).draw(self.encode_png(probe), np.random.default_rng(0))
        if tuple(out.shape[-2:]) != (s.image_size, s.image_size):
            raise ConfigError(
                f"DataFree.image_size: {s.image_size}, but {key} gives the teacher "
                f"{out.shape[-1]}x{out.shape[-2]} views; set DataFree.image_size to "
                f"{out.shape[-1]} so the teacher trains on the images it will be shown"
            )

    @staticmethod
    def pixels(generated: paddle.Tensor) -> paddle.Tensor:
        """tanh output -> [0, 255] rounded to the uint8 the PNG holds (straight-through)."""
        scaled = (generated + 1.0) * 127.5
        return scaled + (paddle.round(scaled) - scaled).detach()

    def __call__(self, pixels: paddle.Tensor) -> paddle.Tensor:
        """Pixels (N, C, H, W) in [0, 255] -> normalised NCHW teacher input."""
        if self.channels == 1:
            pixels = paddle.concat([pixels] * 3, axis=1)
        out = (pixels * self.scale - self.mean) / self.std
        if self.pad:
            out = paddle.concat([out, paddle.zeros_like(out[:, :1])], axis=1)
        return out

    def to_files(self, pixels: paddle.Tensor) -> np.ndarray:
        """Pixels (N, C, H, W) -> uint8 arrays in the channel order cv2 writes."""
        arr = pixels.numpy().round().clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        if self.reverse:
            arr = arr[..., ::-1]
        return np.ascontiguousarray(arr[..., 0] if self.channels == 1 else arr)

    @staticmethod
    def encode_png(img: np.ndarray) -> bytes:
        ok, buf = cv2.imencode(".png", img)
        if not ok:
            raise OSError("cv2 could not encode a PNG")
        return buf.tobytes()


# ------------------------------------------------------------------------------ features


class FeatureTap:
    """Captures the input of the teacher's final Linear layer (its penultimate features)."""

    def __init__(self, teacher: nn.Layer, example: paddle.Tensor, key: str) -> None:
        linears = [m for m in teacher.sublayers() if isinstance(m, nn.Linear)]
        outputs: dict[int, paddle.Tensor] = {}
        handles = [
            layer.register_forward_post_hook(
                lambda _layer, _inputs, output, i=i: outputs.__setitem__(i, output)
            )
            for i, layer in enumerate(linears)
        ]
        with paddle.no_grad():
            logits = teacher(example).numpy()
        for handle in handles:
            handle.remove()
        heads = [
            i
            for i, out in outputs.items()
            if tuple(out.shape) == logits.shape and np.array_equal(out.numpy(), logits)
        ]
        if not heads:
            raise ConfigError(
                f"{key}: the teacher's output does not come from a Linear layer, whose input "
                "the activation loss needs; set DataFree.activation_weight: 0"
            )
        self.features: paddle.Tensor | None = None
        linears[heads[-1]].register_forward_pre_hook(self._capture)

    def _capture(self, _layer: nn.Layer, inputs: tuple) -> None:
        self.features = inputs[0]


# ------------------------------------------------------------------------------ checkpoint


def _state_names(model: nn.Layer) -> dict[str, str]:
    """Paddle's generated parameter names (they depend on what was built before) -> the
    structured state_dict names, which key the saved optimizer state."""
    return {p.name: k for k, p in model.state_dict().items()}


def save_checkpoint(
    path: Path, generator: Generator, optimizer: paddle.optimizer.Optimizer, meta: dict
) -> None:
    """Generator weights and Adam state in one safetensors file (no pickle), written
    atomically, so weights and optimizer state always belong to the same step."""
    tensors = {
        f"model/{k}": np.ascontiguousarray(v.numpy()) for k, v in generator.state_dict().items()
    }
    names = _state_names(generator)
    for key, value in optimizer.state_dict().items():
        if not isinstance(value, paddle.Tensor):
            continue
        owner = max((n for n in names if key.startswith(n + "_")), key=len)
        tensors[f"adam/{names[owner]}::{key[len(owner) + 1 :]}"] = np.ascontiguousarray(
            value.numpy()
        )
    text = {"meta": json.dumps(meta, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=text))


def load_checkpoint(
    path: Path, generator: Generator, optimizer: paddle.optimizer.Optimizer, expected: dict
) -> int:
    """Restore a checkpoint made with the same settings and teacher; returns its step."""
    with safe_open(str(path), framework="numpy") as fh:
        meta = json.loads((fh.metadata() or {}).get("meta", "{}"))
    for key, want in expected.items():
        if meta.get(key) != want:
            where = "Offline.teacher_weights" if key == "teacher" else f"DataFree.{key}"
            raise ConfigError(
                f"{where}: {path} was trained with {meta.get(key)!r}, the config gives "
                f"{want!r}; restore it or choose another DataFree.output_dir"
            )
    tensors = load_file(str(path))
    generator.set_state_dict(
        {
            k[len("model/") :]: paddle.to_tensor(v)
            for k, v in tensors.items()
            if k.startswith("model/")
        }
    )
    generated = {k: p.name for k, p in generator.state_dict().items()}
    state = {}
    for key, value in tensors.items():
        if key.startswith("adam/"):
            structured, _, suffix = key[len("adam/") :].partition("::")
            state[f"{generated[structured]}_{suffix}"] = paddle.to_tensor(value)
    optimizer.set_state_dict(state)
    return int(meta["step"])


# ------------------------------------------------------------------------------ outputs


class Preview:
    """Up to PREVIEW_COLUMNS images per teacher-predicted class (the first PREVIEW_CLASSES
    classes), tiled one row per class, black where a class has fewer: shows at a glance which
    classes the generator covers, without keeping every image in memory."""

    def __init__(self, class_num: int) -> None:
        self.rows: list[list[np.ndarray]] = [[] for _ in range(min(class_num, PREVIEW_CLASSES))]

    def add(self, images: np.ndarray, classes: np.ndarray) -> None:
        for img, c in zip(images, classes, strict=True):
            if c < len(self.rows) and len(self.rows[c]) < PREVIEW_COLUMNS:
                self.rows[c].append(img)

    def grid(self, size: int, channels: int) -> np.ndarray:
        cell = size + 2  # 2 px of black between images
        depth = () if channels == 1 else (channels,)
        grid = np.zeros((len(self.rows) * cell, PREVIEW_COLUMNS * cell, *depth), np.uint8)
        for c, row in enumerate(self.rows):
            for j, img in enumerate(row):
                grid[c * cell : c * cell + size, j * cell : j * cell + size] = img
        return grid


@dataclass
class SynthesisResult:
    output_dir: Path
    list_path: Path
    steps_trained: int
    losses: dict[str, float]
    class_counts: list[int]
    mean_confidence: float


def _write_images(
    s: DataFreeSettings,
    generator: Generator,
    teacher: nn.Layer,
    view: TeacherView,
    out: Path,
    preview: Preview,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Write `s.images` PNGs batch by batch; return their names and the teacher's class and
    confidence for each. BatchNorm uses batch statistics of full batches, as in training (and
    in DAFL); a last partial batch is cut from a full one."""
    generator.train()
    (out / "images").mkdir(exist_ok=True)
    names: list[str] = []
    classes, confidence = [], []
    with paddle.no_grad():
        for index in range(math.ceil(s.images / s.batch_size)):
            keep = min(s.batch_size, s.images - len(names))
            pixels = view.pixels(generator(latent(s, 1, index)))
            probs = F.softmax(teacher(view(pixels)), axis=1).numpy()[:keep]
            files = view.to_files(pixels)[:keep]
            for img in files:
                names.append(f"images/{len(names):06d}.png")
                (out / names[-1]).write_bytes(view.encode_png(img))
            preview.add(files, probs.argmax(axis=1))
            classes.append(probs.argmax(axis=1))
            confidence.append(probs.max(axis=1))
    return names, np.concatenate(classes), np.concatenate(confidence)


def synthesize(cfg: dict, progress: bool = True) -> SynthesisResult:
    """Train (or resume) the DAFL generator against the config's frozen teacher, then write
    DataFree.images PNGs, an unlabeled list, a per-class preview and a summary."""
    paddleclas.check_supported(cfg)
    s = datafree_settings(cfg)
    select_device((cfg.get("Global") or {}).get("device"))
    out = Path(s.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_teacher(cfg)
    spec = specs.teacher_spec(cfg)
    view = TeacherView(cfg, s)
    paddle.seed(s.seed)
    generator = Generator(s.latent_dim, s.image_size, s.channels, s.generator_channels)
    optimizer = paddle.optimizer.Adam(learning_rate=s.lr, parameters=generator.parameters())
    tap = None
    if s.activation_weight > 0:
        probe = paddle.zeros([2, 3 + view.pad, s.image_size, s.image_size])
        tap = FeatureTap(teacher, probe, f"{spec.key}.name")
    expected = {k: getattr(s, k) for k in _TRAINING_KEYS}
    expected["teacher"] = teacher_identity(spec, spec.pretrained)["weights_sha256"]
    ckpt = out / CHECKPOINT
    start = load_checkpoint(ckpt, generator, optimizer, expected) if ckpt.exists() else 0
    vdl = visualdl_writer(cfg.get("Global") or {}, out)
    bar = tqdm(
        total=s.steps,
        initial=min(start, s.steps),
        desc="synthesize",
        unit="step",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    losses: dict[str, float] = {}
    for step in range(start, s.steps):
        generator.train()
        logits = teacher(view(view.pixels(generator(latent(s, 0, step)))))
        terms = dafl_losses(logits, tap.features if tap else None, s)
        terms["total"].backward()
        optimizer.step()
        optimizer.clear_grad()
        losses = {k: float(v) for k, v in terms.items()}
        if (step + 1) % s.save_every == 0 or step + 1 == s.steps:
            save_checkpoint(ckpt, generator, optimizer, {**expected, "step": step + 1})
        if vdl is not None:
            for name, value in losses.items():
                vdl.add_scalar(f"datafree/{name}", value, step + 1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
        bar.update(1)
    bar.close()
    if vdl is not None:
        vdl.close()

    preview = Preview(spec.class_num)
    names, classes, confidence = _write_images(s, generator, teacher, view, out, preview)
    cv2.imwrite(str(out / PREVIEW_FILE), preview.grid(s.image_size, s.channels))
    counts = np.bincount(classes, minlength=spec.class_num).tolist()
    result = SynthesisResult(
        out,
        out / LIST_FILE,
        s.steps - min(start, s.steps),
        losses,
        counts,
        float(confidence.mean()),
    )
    summary = {
        "settings": asdict(s),
        "teacher": {"name": spec.name, "class_num": spec.class_num, "weights": spec.pretrained},
        "steps_trained_this_run": result.steps_trained,
        "last_losses": losses,
        "teacher_class_counts": counts,
        "teacher_mean_confidence": result.mean_confidence,
        "list": LIST_FILE,
        "preview": f"{PREVIEW_FILE} (row c < {PREVIEW_CLASSES}: images the teacher calls c)",
    }
    write_text_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
    write_text_atomic(result.list_path, "".join(f"{n}\n" for n in names))  # last: images exist
    return result
