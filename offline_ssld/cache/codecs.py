"""Codecs: teacher logits <-> fixed-width numpy columns <-> dense student targets.

A codec turns a batch of teacher logits ``(B, C)`` into a dict of fixed-width columns
(each stored as a ``(B, width)`` array of one numpy dtype) and turns stored columns back
into the student's target, a dense float32 probability matrix whose rows sum to 1.
Pure numpy: nothing here knows about files, shards or paddle.

Three codecs:

* ``fp16``    -- all logits as float16; decode is a stable float32 softmax.
* ``topk``    -- the k largest logits (fp16) with their class ids and the float32 logsumexp
  of all logits. ``decode`` puts ``exp(logit - logsumexp)`` on the k ids and spreads the
  leftover mass evenly over the other ``C - k`` classes ("marginal smoothing", as FKD does);
  ``decode_target`` gives the losses what is stored and nothing more: the k probabilities
  and one "rest" bucket (see ``decode_target``).
* ``sampled`` -- N class ids drawn i.i.d. from the teacher's softmax, stored as unique ids with
  counts; decode is ``counts / N``, the unbiased estimator of Sparse Logit Sampling
  (Anshumann et al. 2025): ``E[decode(encode(x))] = softmax(x)``.

``decode`` is always a dense ``(B, C)`` distribution (reports, ensembles, selection);
``decode_target`` is what the student's loss receives.

``compare(payload, logits)`` and ``tolerance()`` form the ``verify --teacher-check`` pair: the
checker recomputes teacher logits for some stored rows and accepts the cache when
``compare(...) <= tolerance()``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from offline_ssld.config.offline import CODEC_OFFLINE_KEYS, OFFLINE_DEFAULTS
from offline_ssld.errors import ConfigError

__all__ = [
    "CODEC_NAMES",
    "Codec",
    "CodecError",
    "Column",
    "FP16Codec",
    "SampledCodec",
    "TopKCodec",
    "build_codec",
    "codec_from_settings",
]


# float16 has an 11-bit significand: rounding x to fp16 moves it by at most |x| * 2**-11
# (plus 2**-25 in the subnormal range). compare() does not count this storage rounding as
# teacher drift, so tolerance() means the same thing for logits of any magnitude.
_FP16_REL = 2.0**-11
_FP16_ABS = 2.0**-25
_FP16_MAX = float(np.finfo(np.float16).max)
_FP32_REL = 2.0**-24

# A class whose recomputed probability is at most this is taken as "the teacher could not
# have drawn it" by SampledCodec.compare(). A genuine draw lands on such a class with
# probability <= samples * num_classes * SAMPLED_MIN_PROB per row (1.2e-8 for 12 draws over
# 1000 classes), so verify does not false-alarm. 1e-6 would: with N(0, 3) logits over 1000
# classes about 8e-4 of genuine rows hold a draw of probability <= 1e-6.
SAMPLED_MIN_PROB = 1e-12


class CodecError(ConfigError, ValueError):
    """Unknown codec name or invalid codec setting; the message names the setting.

    Both a ``ValueError`` (the codec API contract) and a ``ConfigError`` (so the CLI prints
    it in one line).
    """


@dataclass(frozen=True)
class Column:
    """A fixed-width payload column: stored as an array of shape ``(rows, width)``."""

    name: str
    dtype: str  # numpy dtype string, e.g. "float16"
    width: int

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def bytes_per_row(self) -> int:
        return self.width * self.itemsize


# --------------------------------------------------------------------------- helpers


def _check_int(value, setting: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise CodecError(f"codec setting {setting!r} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise CodecError(f"codec setting {setting!r} must be {bound}, got {value}")
    return value


def _id_dtype(num_classes: int) -> str:
    return "int16" if num_classes <= np.iinfo(np.int16).max else "int32"


def _logsumexp64(x: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp in float64, shape (B,)."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]


def _softmax64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _fp16_rounding(x: np.ndarray) -> np.ndarray:
    """Upper bound on |fp16(x) - x| for |x| <= fp16 max."""
    return np.abs(np.asarray(x, dtype=np.float64)) * _FP16_REL + _FP16_ABS


# --------------------------------------------------------------------------- base


class Codec(ABC):
    """Base class. Subclasses set ``name`` and implement columns/encode/decode/compare."""

    name: str = ""
    # What decode_target() gives the losses: "exact" (the teacher's distribution), "topk"
    # (k classes and one rest bucket) or "sampled" (an unbiased estimate).
    # losses.pairing() decides from it which losses a cache of this codec can feed.
    target: str = ""
    # Each codec setting and the Offline key that sets it, its default being the constructor's:
    # the Offline keys and defaults, dump-teacher and the overlay summary all derive from this,
    # so a codec is described in one place.
    offline_keys: ClassVar[dict[str, str]] = {}

    def __init__(self, num_classes: int):
        self.num_classes = _check_int(num_classes, "num_classes", 1)

    # -- interface
    @abstractmethod
    def columns(self) -> list[Column]:
        """See the subclasses."""

    @abstractmethod
    def encode(
        self, logits: np.ndarray, rng: np.random.Generator | None = None
    ) -> dict[str, np.ndarray]:
        """See the subclasses."""

    @abstractmethod
    def decode(self, payload: dict[str, np.ndarray]) -> np.ndarray:
        """See the subclasses."""

    def decode_target(self, payload: dict[str, np.ndarray]) -> np.ndarray:
        """The student's target: `decode` unless the codec stores less than a distribution."""
        return self.decode(payload)

    @abstractmethod
    def compare(self, payload: dict[str, np.ndarray], logits: np.ndarray) -> float:
        """See the subclasses."""

    @abstractmethod
    def tolerance(self) -> float:
        """The largest `compare` value a re-run teacher may show; see the subclasses."""

    def settings(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes}

    def bytes_per_row(self) -> int:
        return sum(col.bytes_per_row for col in self.columns())

    # -- shared checks
    def _check_logits(self, logits: np.ndarray) -> np.ndarray:
        x = np.asarray(logits)
        if x.ndim != 2 or x.shape[1] != self.num_classes:
            raise ValueError(
                f"{self.name} codec: logits must have shape (B, {self.num_classes}), got {x.shape}"
            )
        if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"{self.name} codec: logits must be numeric, got {x.dtype}")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise ValueError(f"{self.name} codec: logits contain NaN or inf")
        return x

    def _check_payload(self, payload: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        rows = None
        for col in self.columns():
            if col.name not in payload:
                raise ValueError(f"{self.name} codec: payload lacks column {col.name!r}")
            a = np.asarray(payload[col.name])
            if a.ndim == 1 and col.width == 1:
                a = a[:, None]
            if a.ndim != 2 or a.shape[1] != col.width:
                raise ValueError(
                    f"{self.name} codec: column {col.name!r} must have shape (rows, {col.width}),"
                    f" got {a.shape}"
                )
            if rows is not None and a.shape[0] != rows:
                raise ValueError(f"{self.name} codec: columns have different row counts")
            rows = a.shape[0]
            out[col.name] = a
        return out

    @staticmethod
    def _check_rows(payload: dict[str, np.ndarray], x: np.ndarray) -> None:
        rows = next(iter(payload.values())).shape[0]
        if rows != x.shape[0]:
            raise ValueError(f"payload has {rows} rows but logits have {x.shape[0]}")

    # -- niceties
    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Codec) and self.settings() == other.settings()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.settings().items())))


# --------------------------------------------------------------------------- fp16


class FP16Codec(Codec):
    """All C logits as float16 (2*C bytes a row); decode = stable float32 softmax."""

    name = "fp16"
    target = "exact"

    def columns(self) -> list[Column]:
        return [Column("logits", "float16", self.num_classes)]

    def encode(self, logits, rng=None):
        x = self._check_logits(logits)
        # Clip so a (rare) |logit| > 65504 saturates instead of becoming inf.
        return {"logits": np.clip(x, -_FP16_MAX, _FP16_MAX).astype(np.float16)}

    def decode(self, payload):
        z = self._check_payload(payload)["logits"].astype(np.float32)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def compare(self, payload, logits):
        """Largest |stored fp16 logit - recomputed logit| beyond fp16 storage rounding."""
        stored = self._check_payload(payload)["logits"].astype(np.float64)
        x = self._check_logits(logits).astype(np.float64)
        self._check_rows({"logits": stored}, x)
        if x.size == 0:
            return 0.0
        excess = np.abs(stored - x) - _fp16_rounding(x)
        return float(max(excess.max(), 0.0))

    def tolerance(self) -> float:
        """0.05 logit units: CPU/GPU kernel and batch-composition noise of the teacher."""
        return 0.05


# --------------------------------------------------------------------------- top-k


class TopKCodec(Codec):
    """The k largest logits, their ids and the logsumexp of all C logits."""

    name = "topk"
    target = "topk"
    offline_keys = CODEC_OFFLINE_KEYS["topk"]

    def __init__(self, num_classes: int, k: int = OFFLINE_DEFAULTS["topk"]):
        super().__init__(num_classes)
        self.k = min(_check_int(k, "k", 1), self.num_classes)

    def settings(self) -> dict:
        return {**super().settings(), "k": self.k}

    def columns(self) -> list[Column]:
        return [
            Column("topk_ids", _id_dtype(self.num_classes), self.k),
            Column("topk_logits", "float16", self.k),
            Column("logsumexp", "float32", 1),
        ]

    def encode(self, logits, rng=None):
        x = self._check_logits(logits)
        B, C, k = x.shape[0], self.num_classes, self.k
        if k < C:
            part = np.argpartition(-x, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(C), (B, C))
        vals = np.take_along_axis(x, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")  # store in descending logit order
        ids = np.take_along_axis(part, order, axis=1)
        vals = np.take_along_axis(vals, order, axis=1)
        return {
            "topk_ids": ids.astype(_id_dtype(C)),
            "topk_logits": np.clip(vals, -_FP16_MAX, _FP16_MAX).astype(np.float16),
            "logsumexp": _logsumexp64(x).astype(np.float32)[:, None],
        }

    def _stored(self, payload) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, their probabilities, rest mass), normalised to sum 1 per row."""
        p = self._check_payload(payload)
        ids = p["topk_ids"].astype(np.int64)
        C, k = self.num_classes, self.k
        if ids.size and (ids.min() < 0 or ids.max() >= C):
            raise ValueError(f"topk codec: stored class ids outside [0, {C})")
        top = np.exp(p["topk_logits"].astype(np.float64) - p["logsumexp"].astype(np.float64))
        mass = top.sum(axis=1, keepdims=True)
        rest = np.clip(1.0 - mass, 0.0, None) if k < C else np.zeros_like(mass)
        total = mass + rest  # == 1 unless fp16 rounding pushed the top-k mass past 1
        return ids, top / total, rest / total

    def decode(self, payload):
        ids, top, rest = self._stored(payload)
        out = np.empty((ids.shape[0], self.num_classes), dtype=np.float64)
        out[:] = rest / max(self.num_classes - self.k, 1)
        np.put_along_axis(out, ids, top, axis=1)
        return out.astype(np.float32)

    def decode_target(self, payload):
        """``(B, C + 1)``: the stored probabilities on their classes, 0 on every other class,
        and the rest mass in column C. The losses (losses.DistillLoss) score the student on
        these k + 1 buckets, the student's rest being its mass on the zero classes: exact for
        what is stored, with no invented shape for the tail it does not know."""
        ids, top, rest = self._stored(payload)
        out = np.zeros((ids.shape[0], self.num_classes + 1), dtype=np.float64)
        np.put_along_axis(out, ids, top, axis=1)
        out[:, -1:] = rest
        return out.astype(np.float32)

    def compare(self, payload, logits):
        """Largest drift of the stored top-k logits / logsumexp beyond storage rounding;
        inf if the stored ids are not a top-k of the recomputed logits. Logits within
        tolerance() of the k-th largest count as tied, so noise may reorder near-ties."""
        p = self._check_payload(payload)
        x = self._check_logits(logits).astype(np.float64)
        self._check_rows(p, x)
        B, C, k = x.shape[0], self.num_classes, self.k
        if B == 0:
            return 0.0
        ids = p["topk_ids"].astype(np.int64)
        if ids.min() < 0 or ids.max() >= C:
            return float("inf")
        mask = np.zeros((B, C), dtype=bool)
        np.put_along_axis(mask, ids, True, axis=1)
        if (mask.sum(axis=1) != k).any():  # duplicate ids
            return float("inf")
        if k < C:
            lowest_in = np.where(mask, x, np.inf).min(axis=1)
            highest_out = np.where(mask, -np.inf, x).max(axis=1)
            if (lowest_in < highest_out - self.tolerance()).any():
                return float("inf")
        new = np.take_along_axis(x, ids, axis=1)
        d_logits = np.abs(p["topk_logits"].astype(np.float64) - new) - _fp16_rounding(new)
        lse = _logsumexp64(x)
        d_lse = np.abs(p["logsumexp"][:, 0].astype(np.float64) - lse) - np.abs(lse) * _FP32_REL
        return float(max(d_logits.max(), d_lse.max(), 0.0))

    def tolerance(self) -> float:
        """0.05 logit units, as for fp16."""
        return 0.05


# --------------------------------------------------------------------------- sampled


class SampledCodec(Codec):
    """N class ids drawn i.i.d. from softmax(logits), stored as unique ids + counts."""

    name = "sampled"
    target = "sampled"
    offline_keys = CODEC_OFFLINE_KEYS["sampled"]

    def __init__(self, num_classes: int, samples: int = OFFLINE_DEFAULTS["samples"]):
        super().__init__(num_classes)
        self.samples = _check_int(samples, "samples", 1, 255)

    def settings(self) -> dict:
        return {**super().settings(), "samples": self.samples}

    def columns(self) -> list[Column]:
        return [
            Column("sample_ids", _id_dtype(self.num_classes), self.samples),
            Column("sample_counts", "uint8", self.samples),
        ]

    def encode(self, logits, rng=None):
        if rng is None:
            raise ValueError("sampled codec: encode needs a numpy Generator (rng=...)")
        x = self._check_logits(logits)
        B, C, N = x.shape[0], self.num_classes, self.samples
        probs = _softmax64(x)
        cdf = np.cumsum(probs, axis=1)
        cdf /= cdf[:, -1:]
        # Inverse CDF for all rows in one searchsorted: shift row r's CDF (values in [0, 1])
        # and its uniforms by r so the concatenated CDF is sorted. side="right" never picks a
        # zero-probability class; a uniform that rounds up to r + 1 is clipped to the row's
        # last class with positive probability.
        offset = np.arange(B, dtype=np.float64)[:, None]
        flat = (cdf + offset).ravel()
        u = rng.random((B, N)) + offset
        draws = np.searchsorted(flat, u.ravel(), side="right").reshape(B, N)
        draws -= np.arange(B)[:, None] * C
        last_positive = C - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)
        draws = np.minimum(draws, last_positive[:, None])

        # unique ids per row with their counts, left-aligned, padded with -1 / 0
        s = np.sort(draws, axis=1)
        start = np.ones((B, N), dtype=bool)
        start[:, 1:] = s[:, 1:] != s[:, :-1]
        pos = np.cumsum(start, axis=1) - 1
        rows = np.broadcast_to(np.arange(B)[:, None], (B, N))
        ids = np.full((B, N), -1, dtype=_id_dtype(C))
        ids[rows[start], pos[start]] = s[start]
        counts = np.bincount((rows * N + pos).ravel(), minlength=B * N).reshape(B, N)
        return {"sample_ids": ids, "sample_counts": counts.astype(np.uint8)}

    def decode(self, payload):
        p = self._check_payload(payload)
        ids = p["sample_ids"].astype(np.int64)
        counts = p["sample_counts"].astype(np.int64)
        B, C, N = ids.shape[0], self.num_classes, self.samples
        used = counts > 0
        if (ids[used] < 0).any() or (ids[used] >= C).any():
            raise ValueError(f"sampled codec: stored class ids outside [0, {C})")
        if (counts.sum(axis=1) != N).any():
            raise ValueError(f"sampled codec: sample counts do not sum to {N} in every row")
        rows = np.broadcast_to(np.arange(B)[:, None], ids.shape)
        dense = np.bincount((rows * C + ids)[used], weights=counts[used], minlength=B * C).reshape(
            B, C
        )
        return (dense / N).astype(np.float32)

    def compare(self, payload, logits):
        """0.0 if every stored id is a class to which the recomputed teacher gives probability
        > SAMPLED_MIN_PROB (and the payload is well formed), else inf. A per-row distance
        between counts/N and softmax is dominated by sampling noise, so it is not used."""
        p = self._check_payload(payload)
        x = self._check_logits(logits).astype(np.float64)
        self._check_rows(p, x)
        ids = p["sample_ids"].astype(np.int64)
        counts = p["sample_counts"].astype(np.int64)
        if ids.size == 0:
            return 0.0
        used = ids >= 0
        if (counts[~used] != 0).any() or (counts[used] == 0).any():
            return float("inf")
        if (counts.sum(axis=1) != self.samples).any() or (ids >= self.num_classes).any():
            return float("inf")
        log_p = np.take_along_axis(x, np.where(used, ids, 0), axis=1) - _logsumexp64(x)[:, None]
        if (log_p[used] <= np.log(SAMPLED_MIN_PROB)).any():
            return float("inf")
        return 0.0

    def tolerance(self) -> float:
        """0: compare() returns 0.0 or inf."""
        return 0.0


# --------------------------------------------------------------------------- factory

_CODECS: dict[str, type[Codec]] = {cls.name: cls for cls in (FP16Codec, TopKCodec, SampledCodec)}
CODEC_NAMES = tuple(_CODECS)


def build_codec(name: str, num_classes: int, **settings) -> Codec:
    """Codec by name. Raises CodecError (a ValueError) naming the bad name or setting."""
    if not isinstance(name, str) or name not in _CODECS:
        raise CodecError(f"unknown codec {name!r}; expected one of {', '.join(CODEC_NAMES)}")
    cls = _CODECS[name]
    allowed = tuple(cls.offline_keys)
    for key in settings:
        if key not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise CodecError(
                f"unknown setting {key!r} for codec {name!r} (settings it takes: {known})"
            )
    return cls(num_classes, **settings)


def codec_from_settings(settings: dict) -> Codec:
    """Inverse of ``Codec.settings()``: rebuild (and validate) a codec from a manifest."""
    if not isinstance(settings, dict):
        raise CodecError(f"codec settings must be a mapping, got {type(settings).__name__}")
    rest = dict(settings)
    for key in ("name", "num_classes"):
        if key not in rest:
            raise CodecError(f"codec settings lack {key!r}")
    name = rest.pop("name")
    num_classes = rest.pop("num_classes")
    return build_codec(name, num_classes, **rest)
