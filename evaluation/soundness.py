"""Empirical soundness of randomized-smoothing certificates (``purifier certify --soundness``).

Every image ``purifier certify`` certified, with prediction ĉ and radius R, is attacked inside its
certificate: SmoothAdv (``evaluation.attacks.smooth_adv``) moves it away from ĉ within ‖x' − x‖₂ ≤ R,
and Cohen et al.'s PREDICT estimates the smoothed classifier at x' from n fresh draws. A certificate
is contradicted when PREDICT returns a class other than ĉ. Each certificate is wrong with probability
at most α and PREDICT at most α, so a sound certification shows contradictions at a rate of at most
2α; the check reports their count, its exact one-sided binomial p-value against that rate, and how
often PREDICT abstained (no contradiction: g's top two classes are close at x').

>>> outcomes = attack_certificates(pipeline, engine, images, certificates, num_classes=10, config=SoundnessConfig())
>>> summary = summarise(outcomes, SoundnessConfig(), seconds=60.0)
>>> summary["contradicted"] <= summary["attacked"]
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binomtest

from evaluation.attacks.smooth_adv import smooth_adv
from purifier.pipeline import Pipeline
from purifier.progress import progress
from purifier.smoothing import Certificate, Engine, class_counts, prediction_from_counts


@dataclass(kw_only=True)
class SoundnessConfig:
    steps: int = 20  # SmoothAdv's PGD steps
    samples: int = 16  # noise draws per image and step in SmoothAdv's G(x)
    n: int = 1000  # PREDICT's draws at the adversarial image
    alpha: float = 0.001  # PREDICT's level, the certificates' α
    chunk: int = 8  # images attacked together (chunk × samples draws per forward pass)
    seed: int = 0

    @classmethod
    def quick_run(cls, **overrides) -> SoundnessConfig:
        """Smoke-test sizes (seconds)."""
        return cls(**{**dict(steps=3, samples=4, n=100), **overrides})


def attack_certificates(pipeline: Pipeline, engine: Engine, images: torch.Tensor, certificates: list[Certificate], num_classes: int,
                        config: SoundnessConfig, done: list[dict] = (), on_chunk=lambda outcomes: None) -> list[dict]:
    """One outcome per certified image (in order, continuing after ``done``): the certified class and radius, the
    perturbation's L2 norm, and PREDICT's class at the adversarial image (None: abstained). SmoothAdv differentiates the
    PyTorch ``pipeline``; PREDICT draws on ``engine``, the one that certified. ``on_chunk`` is called with all outcomes
    so far after every chunk (to save them)."""
    certified = [i for i, c in enumerate(certificates) if c.prediction is not None]
    outcomes, todo = list(done), certified[len(done):]
    chunks = [todo[start:start + config.chunk] for start in range(0, len(todo), config.chunk)]
    for chunk in [] if not chunks else progress(chunks, len(chunks), "soundness"):
        pipeline.reseed([config.seed, chunk[0]])
        clean = images[chunk]
        classes = torch.tensor([certificates[i].prediction for i in chunk])
        radii = torch.tensor([certificates[i].radius for i in chunk], dtype=clean.dtype)
        adversarial = smooth_adv(pipeline, clean, classes, eps=radii, steps=config.steps, samples=config.samples,
                                 generator=torch.Generator().manual_seed(chunk[0]))
        for index, image, moved in zip(chunk, clean, adversarial):
            counts = class_counts(engine, pipeline.transform, moved.numpy(), config.n, num_classes, config.chunk * config.samples,
                                  np.random.default_rng([config.seed, 1, index]))
            after = prediction_from_counts(counts, config.alpha)
            outcomes.append({"index": index, "certified": certificates[index].prediction, "radius": certificates[index].radius,
                             "perturbation_l2": float((moved - image).norm()), "predicted": after})
        on_chunk(outcomes)
    return outcomes


def summarise(outcomes: list[dict], config: SoundnessConfig, seconds: float) -> dict:
    """Counts of contradicted and abstaining predictions, and the p-value of that many contradictions at rate 2α."""
    attacked = len(outcomes)
    contradicted = sum(o["predicted"] is not None and o["predicted"] != o["certified"] for o in outcomes)
    abstained = sum(o["predicted"] is None for o in outcomes)
    rate = 2 * config.alpha
    p_value = binomtest(contradicted, attacked, rate, alternative="greater").pvalue if attacked else 1.0
    return {"attacked": attacked, "contradicted": contradicted, "abstained": abstained, "allowed_rate": rate,
            "p_value": float(p_value), "sound": bool(p_value >= 0.05),
            "attack": f"SmoothAdv, L2 PGD-{config.steps} on G(x) with {config.samples} draws, inside each certified radius",
            "predict": f"PREDICT with n = {config.n:,}, α = {config.alpha:g}", "wall_time_s": round(seconds, 1)}
