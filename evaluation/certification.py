"""``purifier certify BUNDLE --out DIR``: certified L2 robustness by randomized smoothing (Cohen,
Rosenfeld & Kolter, ICML 2019) of a bundle whose random transform is ``gaussian``. Its pipeline is
the base classifier f(x) = classifier(purifier(clip(x + δ))), δ ~ N(0, σ²I) (denoised smoothing,
Salman et al., NeurIPS 2020, when the purifier is a denoiser); the smoothed classifier
g(x) = argmax_c P_δ[f(x) = c] is certified by CERTIFY (``purifier.smoothing``, the statistics the
server's ``certify=true`` uses too) on the first N test images, drawing f on the bundle's ONNX
Runtime graphs (the served engine) or, for a bundle without graphs, its PyTorch modules.

It writes certified accuracy against L2 radius (table, PNG curve), abstention rate, per-image radii
and wall time in DIR, and with ``--record`` ``metrics.certified`` in bundle.json. Each image's
certificate is saved to DIR/partial.json as it is made, so a killed run resumes; image i draws its
noise from the seed (seed, i). With
``--soundness`` every certified image is then attacked inside its radius (``evaluation.soundness``),
also saved as it goes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from evaluation.soundness import SoundnessConfig, attack_certificates, summarise  # noqa: E402
from evaluation.stats import wilson  # noqa: E402
from purifier.bundle import load_bundle, update_manifest  # noqa: E402
from purifier.errors import PurifierError  # noqa: E402
from purifier.fsutil import atomic_write_bytes, atomic_write_json  # noqa: E402
from purifier.pipeline import Pipeline  # noqa: E402
from purifier.progress import progress  # noqa: E402
from purifier.smoothing import Certificate, Engine, certify, largest_radius  # noqa: E402

PROTOCOL = {"n0": 100, "n": 10_000, "alpha": 0.001, "images": 500, "radii": (0.25, 0.5, 0.75, 1.0)}


@dataclass(kw_only=True)
class CertifyConfig:
    images: int = PROTOCOL["images"]
    n0: int = PROTOCOL["n0"]
    n: int = PROTOCOL["n"]
    alpha: float = PROTOCOL["alpha"]
    batch: int = 128  # draws per forward pass: on 2 cores both engines run the U-Net pipeline faster at 128 than at 1,000
    seed: int = 0
    quick: bool = False

    @classmethod
    def quick_run(cls, **overrides) -> CertifyConfig:
        """Smoke-test sizes (seconds; not the protocol, and the report says so)."""
        return cls(**{**dict(images=20, n0=20, n=200, batch=200, quick=True), **overrides})


def torch_engine(pipeline: Pipeline) -> Engine:
    """The PyTorch Pipeline as an engine of ``purifier.smoothing.certify``: (images, mask, noise) -> logits."""

    @torch.no_grad()
    def logits(images: np.ndarray, mask: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return pipeline.forward_with(torch.from_numpy(images), torch.from_numpy(mask), torch.from_numpy(noise))[0].numpy()

    return logits


def certified_accuracy(certificates: list[Certificate], labels: list[int], radius: float) -> float:
    """Fraction of images whose smoothed prediction is right and certified at least to ``radius``."""
    right = sum(1 for c, y in zip(certificates, labels) if c.prediction == y and c.radius is not None and c.radius >= radius)
    return right / max(len(labels), 1)


def _identity(bundle, config: CertifyConfig, engine_name: str) -> dict:
    return {"weights": bundle.weight_digests(), "transform": bundle.transform.to_dict(), "config": asdict(config), "engine": engine_name}


def certify_bundle(bundle_path: Path, out: Path, config: CertifyConfig, data_dir: Path | None = None, record: bool = False,
                   soundness: SoundnessConfig | None = None, engine: tuple[str, Engine] | None = None) -> dict:
    """Certify (or resume certifying) the bundle's first ``config.images`` test images, then check the certificates'
    soundness if asked; write the report into ``out``. ``engine`` is (name, engine) drawing the base classifier, by
    default ("torch", the bundle's PyTorch Pipeline)."""
    bundle = load_bundle(bundle_path)
    transform = bundle.transform
    if transform.kind != "gaussian":
        raise PurifierError(f"{bundle.path} uses the {transform.kind!r} random transform; certification needs the gaussian one "
                            "(train it with 'purifier train atop --transform gaussian --noise-std 0.25 ...')")
    images, labels = bundle.data("test", data_dir).head(config.images).tensors()
    model = bundle.pipeline(seed=config.seed)
    engine_name, engine = engine or ("torch", torch_engine(model))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path, identity = out / "partial.json", _identity(bundle, config, engine_name)
    saved = json.loads(path.read_text()) if path.exists() else {**identity, "certificates": [], "wall_time_s": 0.0}
    if {key: saved.get(key) for key in identity} != identity:
        raise PurifierError(f"{path} belongs to another model or other settings; use another --out or delete it")
    todo = range(len(saved["certificates"]), len(labels))
    for index in [] if not len(todo) else progress(todo, len(todo), f"certify {bundle.name}"):
        began = time.perf_counter()
        certificate = certify(engine, transform, images[index].numpy(), config.n0, config.n, config.alpha, len(bundle.class_names),
                              np.random.default_rng([config.seed, index]), config.batch)
        saved["certificates"].append(asdict(certificate))
        saved["wall_time_s"] += time.perf_counter() - began
        atomic_write_json(path, saved)
    certificates = [Certificate(**c) for c in saved["certificates"]]
    report = _report(bundle, config, certificates, labels.tolist(), saved["wall_time_s"], engine_name)
    if soundness is not None:
        report["soundness"] = _check_soundness(model, engine, images, certificates, len(bundle.class_names), soundness, saved, path)
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", _markdown(report).encode())
    temporary = out / "certified_accuracy.tmp.png"
    _plot(report, certificates, labels.tolist(), temporary)
    os.replace(temporary, out / "certified_accuracy.png")
    if record:
        certified = {key: report[key] for key in ("sigma", "n0", "n", "alpha", "images", "accuracy_at_radius", "abstention_rate", "protocol",
                                                  "soundness") if key in report}
        update_manifest(bundle, lambda manifest: manifest.setdefault("metrics", {}).update(certified=certified))
    return report


def _check_soundness(model: Pipeline, engine: Engine, images, certificates: list[Certificate], num_classes: int, config: SoundnessConfig,
                     saved: dict, path: Path) -> dict:
    """Attack the certified images inside their radii, resuming from and saving to ``saved["soundness"]`` in ``path``."""
    state = saved.setdefault("soundness", {"config": asdict(config), "outcomes": [], "wall_time_s": 0.0})
    if state["config"] != asdict(config):
        raise PurifierError(f"{path} holds a soundness check with other settings; use another --out or delete its 'soundness' entry")
    began = time.perf_counter()

    def save(outcomes: list[dict]) -> None:
        nonlocal began
        state["outcomes"], state["wall_time_s"] = outcomes, state["wall_time_s"] + time.perf_counter() - began
        began = time.perf_counter()
        atomic_write_json(path, saved)

    outcomes = attack_certificates(model, engine, images, certificates, num_classes, config, state["outcomes"], save)
    return summarise(outcomes, config, state["wall_time_s"])


def _report(bundle, config: CertifyConfig, certificates: list[Certificate], labels: list[int], seconds: float, engine_name: str) -> dict:
    count = len(labels)
    at_radius = {f"{r:g}": certified_accuracy(certificates, labels, r) for r in (0.0, *PROTOCOL["radii"])}
    conformant = not config.quick and config.n0 >= PROTOCOL["n0"] and config.n >= PROTOCOL["n"] and config.alpha <= PROTOCOL["alpha"] \
        and count >= PROTOCOL["images"]
    return {
        "bundle": bundle.name, "sigma": bundle.transform.noise_std, "n0": config.n0, "n": config.n, "alpha": config.alpha, "images": count,
        "accuracy_at_radius": at_radius,
        "intervals": {r: [round(b, 4) for b in wilson(round(a * count), count)] for r, a in at_radius.items()},
        "abstention_rate": sum(c.prediction is None for c in certificates) / max(count, 1),
        "radii": [c.radius for c in certificates], "predictions": [c.prediction for c in certificates], "labels": labels,
        "wall_time_s": round(seconds, 1), "seconds_per_image": round(seconds / max(count, 1), 2),
        "protocol": {"method": "CERTIFY (Cohen et al., 2019), Clopper-Pearson", "test_images": f"first {count}", "seed": config.seed,
                     "engine": engine_name, "conformant": conformant},
    }


def _markdown(report: dict) -> str:
    lines = [f"# Certified robustness of `{report['bundle']}`", ""]
    if not report["protocol"]["conformant"]:
        lines += ["**Not protocol-conformant** (reduced sizes): smoke-test figures only.", ""]
    lines += [f"Randomized smoothing with σ = {report['sigma']:g}: CERTIFY with n0 = {report['n0']}, n = {report['n']:,}, α = {report['alpha']:g} "
              f"on the first {report['images']} test images, f drawn on {report['protocol']['engine']}; {report['seconds_per_image']:.1f} s per image, {report['wall_time_s'] / 60:.1f} min "
              f"in all. Abstained on {report['abstention_rate']:.1%} of the images.", "",
              "| L2 radius | certified accuracy [95% Wilson interval] |", "|---|---|"]
    for radius, value in report["accuracy_at_radius"].items():
        low, high = report["intervals"][radius]
        lines.append(f"| {radius} | {value:.1%} [{low:.1%}, {high:.1%}] |")
    lines += ["", "Radius 0 is the smoothed classifier's clean accuracy, an abstention counting as an error. Per-image radii are in "
              "`report.json`.", ""]
    if "soundness" in report:
        check = report["soundness"]
        lines += ["## Soundness check", "",
                  f"{check['attack']}, then {check['predict']} at each adversarial image: {check['contradicted']} of {check['attacked']} "
                  f"certified predictions contradicted ({check['abstained']} abstentions), against at most {check['allowed_rate']:g} per "
                  f"certificate if the certificates are sound (one-sided binomial p = {check['p_value']:.3g}: "
                  f"{'consistent with' if check['sound'] else 'exceeds'} that rate); {check['wall_time_s'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def _plot(report: dict, certificates: list[Certificate], labels: list[int], path: Path) -> None:
    finite = [c.radius for c in certificates if c.radius is not None]
    grid = np.linspace(0, max(finite, default=1.0) * 1.05 or 1.0, 200)
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(grid, [certified_accuracy(certificates, labels, r) for r in grid])
    cap = largest_radius(report["sigma"], report["n"], report["alpha"])
    axis.axvline(cap, color="grey", linestyle=":", label=f"largest radius {report['n']:,} draws can certify ({cap:.2f})")
    axis.set(title=f"Certified accuracy of the smoothed {report['bundle']}\n(noise σ = {report['sigma']:g}, "
                   f"{report['images']} test images, n = {report['n']:,}, α = {report['alpha']:g})",
             xlabel="L2 radius of the perturbation (pixels in [0, 1])", ylabel="share of images correct and certified", ylim=(0, 1))
    axis.legend(loc="lower left")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
