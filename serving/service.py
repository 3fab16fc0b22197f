"""Decode -> random transform -> purifier -> classifier -> predictions: the logic both the
TorchServe handler and the batch job call, with no server needed to test it."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from purifier.bundle import Bundle, load_bundle
from purifier.errors import ImageDecodeError, RequestFormatError
from purifier.images import decode_image, to_uint8
from purifier.smoothing import Certificate, certify
from serving.runtime import Runtime, create_runtime


@dataclass(frozen=True)
class Prediction:
    """The answer for one image: top-k ``probabilities`` by class name; ``scores`` holds all classes in order."""

    label: str
    index: int
    probabilities: dict[str, float]
    purification_changed_prediction: bool
    scores: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "scores"}


@dataclass(frozen=True)
class Outcome:
    """What one batch produced: a Prediction and a purified uint8 image (H, W, C) per input, and stage timings."""

    predictions: list[Prediction]
    purified: np.ndarray
    purify_ms: float
    classify_ms: float


@dataclass(frozen=True)
class CertifySettings:
    """Draws per certified image: ``selection`` (n0) and ``samples`` (n) of CERTIFY, at failure probability ``alpha``. The
    defaults keep a request near 100 ms on 2 CPU cores for the 28×28 models; the offline protocol uses n0 100, n 10,000."""

    selection: int = 32
    samples: int = 192  # benchmarks/certify.py: 256 took 132 ms per request through TorchServe, 128 about 65 ms in process
    alpha: float = 0.001
    batch: int = 224


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class PurificationService:
    """A bundle plus a runtime: turns uint8 images into predictions and purified images.

    ``seed`` fixes the random transform's stream (batch jobs); ``None`` draws it from OS
    entropy (serving), so an attacker cannot predict the masks.
    """

    def __init__(self, bundle: Bundle, runtime: Runtime, seed: int | None = None, top_k: int = 3) -> None:
        self.bundle, self.runtime, self.top_k = bundle, runtime, min(top_k, len(bundle.class_names))
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_bundle(cls, path: Path | str | None, runtime: str = "onnxruntime", seed: int | None = None, threads: int = 0) -> "PurificationService":
        bundle = load_bundle(path)
        return cls(bundle, create_runtime(bundle, runtime, threads), seed)

    def decode(self, data: bytes) -> np.ndarray:
        """Encoded image bytes -> uint8 (H, W, C) at the bundle's input shape (ImageDecodeError if not)."""
        if not isinstance(data, (bytes, bytearray)):
            raise ImageDecodeError(f"expected raw image bytes, got {type(data).__name__}: send the image file as the request body")
        return decode_image(bytes(data), self.bundle.input_shape)

    def _purify(self, images: np.ndarray, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(float NCHW images, float NCHW purified images) for uint8 NHWC images; fresh transform draws per image
        from ``rng`` (default: the service's own stream)."""
        batch = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
        mask, noise = self.bundle.transform.sample(len(batch), self.bundle.input_shape, rng or self.rng)
        return batch, self.runtime.purify(batch, mask, noise)

    def purify(self, images: np.ndarray) -> np.ndarray:
        """Purified uint8 images (N, H, W, C) for uint8 images (N, H, W, C), no classification."""
        return to_uint8(self._purify(images)[1])

    def run(self, images: np.ndarray, rng: np.random.Generator | None = None) -> Outcome:
        """Predictions, purified uint8 images (N, H, W, C) and stage timings for uint8 images (N, H, W, C).

        The classifier sees the purified and the original images in one batch, so the
        prediction without purification (purification_changed_prediction) costs no extra call.
        """
        began = time.perf_counter()
        batch, purified = self._purify(images, rng)
        purified_at = time.perf_counter()
        if self.bundle.has_purifier:
            both = self.runtime.classifier(np.concatenate([purified, batch]))
            logits, raw_logits = both[: len(batch)], both[len(batch):]
        else:
            logits = raw_logits = self.runtime.classifier(batch)
        classified_at = time.perf_counter()
        predictions = self._predictions(logits, raw_logits.argmax(axis=1))
        return Outcome(predictions, to_uint8(purified), (purified_at - began) * 1000, (classified_at - purified_at) * 1000)

    def certify(self, images: np.ndarray, settings: CertifySettings = CertifySettings(), rng: np.random.Generator | None = None) -> list[Certificate]:
        """Randomized-smoothing certificates (``purifier.smoothing``) for uint8 images (N, H, W, C), each from
        ``settings.selection + settings.samples`` fresh draws of the bundle's Gaussian transform (from ``rng``, default the
        service's own stream)."""
        transform = self.bundle.transform
        if transform.kind != "gaussian":
            raise RequestFormatError(f"model '{self.bundle.name}' cannot certify: its random transform is {transform.kind!r}, not gaussian; "
                                     "drop certify or serve a randomized-smoothing bundle", "cannot_certify")
        batch = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
        return [certify(self.runtime.pipeline_logits, transform, image, settings.selection, settings.samples, settings.alpha,
                        len(self.bundle.class_names), rng or self.rng, settings.batch) for image in batch]

    def _predictions(self, logits: np.ndarray, raw_index: np.ndarray) -> list[Prediction]:
        probabilities = softmax(logits)
        names = self.bundle.class_names
        predictions = []
        for row, raw in zip(probabilities, raw_index):
            top = np.argsort(-row)[: self.top_k]
            predictions.append(Prediction(
                label=names[int(top[0])], index=int(top[0]),
                probabilities={names[int(i)]: round(float(row[i]), 6) for i in top},
                purification_changed_prediction=bool(int(top[0]) != int(raw)),
                scores=tuple(round(float(value), 6) for value in row),
            ))
        return predictions
