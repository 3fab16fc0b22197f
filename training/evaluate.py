"""The evaluation protocol of DESIGN.md, run on one bundle: clean accuracy, white-box robust
accuracy (full-gradient PGD with EOT, BPDA, AutoAttack) and corruption accuracy, for the bare
classifier beside the full pipeline, so a purifier's gain or loss is visible.

Robust accuracy counts an image as correct only if it is classified correctly under every
attack run at that threat (per-image worst case). The attacks at one threat run as a cascade,
PGD first, then AutoAttack, then BPDA, each on the images all earlier ones failed to break (as
AutoAttack does with its own components): an image already broken stays broken, so the worst
case is the same and no compute goes to images that are already lost. A stochastic pipeline's
prediction on an (adversarial) image is one draw of its randomness from a fixed seed, as the
served model makes.

Work is split into units (model, attack, norm, ε) done batch by batch; every finished batch is
saved to DIR/partial.json, and rerunning the same command continues from there. Rerunning a
finished evaluation with ``--joint-flow`` adds the joint-space threat without redoing the rest.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from purifier.bundle import Bundle, load_bundle
from purifier.errors import PurifierError
from purifier.fsutil import atomic_write_json
from purifier.pipeline import Pipeline
from training.attacks import BPDA, JOINT_ETA, joint_pgd, pgd
from training.common import accuracy, dataset_kind, load_split
from training.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from training.loop import progress

HEADLINE = {"linf": 0.1, "l2": 1.5}


@dataclass(kw_only=True)
class EvaluationConfig:
    images: int = 500
    clean_images: int | None = None
    corruption_images: int = 1000
    linf_eps: tuple[float, ...] = (0.02, 0.05, 0.1)
    l2_eps: tuple[float, ...] = (0.5, 1.0, 1.5)
    steps: int = 100
    eot: int = 20
    curve_steps: int = 20
    curve_eot: int = 5
    autoattack: tuple[str, ...] = ("linf",)
    autoattack_iterations: int = 100
    bpda: bool = True
    batch_size: int = 100
    seed: int = 0
    quick: bool = False
    joint_flow: Path | None = None
    joint_eps: float = 0.1
    joint_eta: float = JOINT_ETA

    @classmethod
    def quick_run(cls, **overrides) -> "EvaluationConfig":
        """Smoke-test sizes: minutes on a CPU, not protocol-conformant (the report says so)."""
        sizes = dict(images=32, clean_images=500, corruption_images=100, linf_eps=(0.05, 0.1), l2_eps=(0.5, 1.5), steps=5, eot=2,
                     curve_steps=3, curve_eot=1, autoattack_iterations=5, batch_size=32, quick=True)
        return cls(**{**sizes, **overrides})


@dataclass(frozen=True)
class Unit:
    model: str
    attack: str
    norm: str
    eps: float

    @property
    def key(self) -> str:
        return f"{self.model}|{self.attack}|{self.norm}|{self.eps:g}"


def _models(bundle: Bundle, seed: int) -> dict[str, nn.Module]:
    classifier = bundle.classifier().requires_grad_(False)
    models: dict[str, nn.Module] = {"classifier": classifier}
    if bundle.has_purifier:
        models["pipeline"] = bundle.pipeline(seed=seed)
    return models


def plan(config: EvaluationConfig, models: list[str]) -> list[Unit]:
    """Every attack unit the protocol asks for, per model."""
    units = []
    for model in models:
        for norm, radii in (("linf", config.linf_eps), ("l2", config.l2_eps)):
            for eps in radii:
                units.append(Unit(model, "pgd", norm, eps))
                if eps != HEADLINE[norm]:
                    continue
                if norm in config.autoattack:
                    units.append(Unit(model, "autoattack", norm, eps))
                if config.bpda and model == "pipeline":
                    units.append(Unit(model, "bpda", norm, eps))
        if config.joint_flow is not None:
            units.append(Unit(model, "joint_pgd", "joint", config.joint_eps))
    return units


def _predict(model: nn.Module, images: torch.Tensor, seed: int) -> torch.Tensor:
    if isinstance(model, Pipeline):
        model.reseed(seed)
    with torch.no_grad():
        return model(images).argmax(1)


def _autoattack(model: nn.Module, images, labels, unit: Unit, config: EvaluationConfig, stochastic: bool) -> torch.Tensor:
    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    attack = AutoAttack(model, eps=unit.eps, norm="Linf" if unit.norm == "linf" else "L2",
                        version="rand" if stochastic else "standard", seed=config.seed)
    for component in (attack.apgd, attack.apgd_targeted):
        component.n_iter = config.autoattack_iterations
    if config.quick:
        attack.apgd_targeted.n_target_classes, attack.fab.n_target_classes, attack.square.n_queries = 1, 1, 50
        attack.apgd.eot_iter = min(attack.apgd.eot_iter, config.eot)
    adversarial, _ = attack.run_standard_evaluation(images, labels, batch_size=len(images))
    return adversarial


def _attack(model: nn.Module, images, labels, unit: Unit, config: EvaluationConfig, stochastic: bool, generator, flow=None) -> torch.Tensor:
    headline = unit.norm == "joint" or unit.eps == HEADLINE[unit.norm]
    steps = config.steps if headline else config.curve_steps
    eot = (config.eot if headline else config.curve_eot) if stochastic else 1
    if unit.attack == "joint_pgd":
        return joint_pgd(model, flow, images, labels, unit.eps, config.joint_eta, steps=steps, eot=eot, generator=generator)
    if unit.attack == "pgd":
        return pgd(model, images, labels, unit.eps, steps=steps, norm=unit.norm, eot=eot, generator=generator)
    if unit.attack == "bpda":
        return pgd(BPDA(model), images, labels, unit.eps, steps=steps, norm=unit.norm, eot=eot, generator=generator)
    return _autoattack(model, images, labels, unit, config, stochastic)


@dataclass
class Evaluation:
    """Everything report.py needs: the bundle, the config, the plan and the finished results."""

    bundle: Bundle
    config: EvaluationConfig
    units: list[Unit]
    results: dict
    images: torch.Tensor
    labels: torch.Tensor
    models: dict[str, nn.Module]


# Options that only add the joint-space unit: a finished evaluation may be rerun with them to add it.
_ADDITIVE = ("joint_flow", "joint_eps", "joint_eta")


def _options(config: EvaluationConfig) -> dict:
    return {k: v for k, v in json.loads(json.dumps(asdict(config), default=str)).items() if k not in _ADDITIVE}


def _model_identity(bundle: Bundle) -> dict:
    """What an evaluation's results depend on, wherever the bundle lies: weight files' sha256 and the random transform."""
    weights = {name: digest for name, digest in sorted(bundle.manifest["files"].items()) if name.endswith(".safetensors")}
    return {"weights": weights, "transform": (bundle.manifest.get("purifier") or {}).get("random_transform")}


def _load_saved(path: Path) -> dict:
    """A saved partial.json; options added after its run started count as their defaults (so older runs still resume)."""
    saved = json.loads(path.read_text())
    saved["config"] = {**_options(EvaluationConfig()), **{k: v for k, v in saved.get("config", {}).items() if k not in _ADDITIVE}}
    return saved


def classifier_attacks(report_dir: Path, bundle: Bundle, config: EvaluationConfig) -> dict:
    """The attack results on the bare classifier in another evaluation of the same classifier weights with the
    same options: a composed bundle (``purifier compose``) need not attack its classifier again."""
    source = Path(report_dir) / "partial.json"
    if not source.exists():
        raise PurifierError(f"{source} does not exist; pass a report directory written by 'purifier evaluate'")
    saved = _load_saved(source)
    theirs = saved.get("model", {}).get("weights", {}).get("classifier.safetensors")
    if theirs != _model_identity(bundle)["weights"]["classifier.safetensors"] or saved["config"] != _options(config):
        raise PurifierError(f"{report_dir} evaluated another classifier or used other options; evaluate without reusing it")
    return {key: value for key, value in saved["results"].items() if key.startswith("classifier|")}


class _Partial:
    """DIR/partial.json: finished work, the model and options it belongs to, and wall time so far."""

    def __init__(self, path: Path, bundle: Bundle, config: EvaluationConfig) -> None:
        self.path, self.identity = path, {"model": _model_identity(bundle), "config": _options(config)}
        self.results: dict = {"wall_time_s": 0.0}
        if path.exists():
            saved = _load_saved(path)
            if {k: saved.get(k) for k in self.identity} != self.identity:
                raise PurifierError(f"{path} belongs to another model or other options; use another --out or delete it")
            self.results = saved["results"]
            print(f"resuming the evaluation saved in {path}", file=sys.stderr)
        self.last = time.perf_counter()

    def save(self) -> None:
        now = time.perf_counter()
        self.results["wall_time_s"] += now - self.last
        self.last = now
        atomic_write_json(self.path, {**self.identity, "results": self.results})


def evaluate(bundle_path: Path, out: Path, config: EvaluationConfig, data_dir: Path | None = None,
             reuse_classifier: Path | None = None) -> Evaluation:
    """Run (or resume) the protocol on a bundle; report.py turns the result into files. ``reuse_classifier``: a report
    directory whose finished attacks on the same classifier are taken instead of being run again."""
    bundle = load_bundle(bundle_path)
    models = _models(bundle, config.seed)  # a bundle or flow that cannot be used fails before anything is written
    flow_bundle = load_bundle(config.joint_flow) if config.joint_flow is not None else None
    flow = flow_bundle.flow().requires_grad_(False) if flow_bundle is not None else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    partial = _Partial(out / "partial.json", bundle, config)
    results = partial.results
    if reuse_classifier is not None:
        for key, record in classifier_attacks(reuse_classifier, bundle, config).items():
            if len(record["correct"]) > len(results.get(key, {}).get("correct", [])):
                results[key] = record
        results["classifier_attacks_from"] = str(reuse_classifier)
    stochastic = {name: isinstance(model, Pipeline) and model.is_stochastic for name, model in models.items()}
    _, all_images, all_labels = load_split(dataset_kind(bundle), data_dir, "test")

    if "clean" not in results:
        images, labels = all_images[: config.clean_images], all_labels[: config.clean_images]
        results["clean"] = {"images": len(labels), **{name: _accuracy(model, images, labels, config.seed) for name, model in models.items()}}
        partial.save()

    images, labels = all_images[: config.images], all_labels[: config.images]
    units = plan(config, list(models))
    for position, unit in enumerate(units):
        record = results.setdefault(unit.key, {"correct": [], "attacked": 0, "seconds": 0.0})
        if unit.norm == "joint":
            settings = {"flow": _model_identity(flow_bundle)["weights"], "eta": config.joint_eta}
            if record.setdefault("settings", settings) != settings:
                raise PurifierError(f"{out / 'partial.json'} holds joint-space results of another flow or η; use another --out")
        earlier = [results[u.key]["correct"] for u in units[:position] if (u.model, u.norm, u.eps) == (unit.model, unit.norm, unit.eps)]
        todo = list(range(len(record["correct"]), len(labels), config.batch_size))
        for start in [] if not todo else progress(todo, len(todo), f"{unit.model} {unit.attack} {unit.norm} eps={unit.eps:g}"):
            began = time.perf_counter()
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + start)
            x, y = images[start:start + config.batch_size], labels[start:start + config.batch_size]
            alive = torch.tensor([all(outcome[i] for outcome in earlier) for i in range(start, start + len(y))], dtype=torch.bool)
            correct = torch.zeros(len(y), dtype=torch.bool)
            if alive.any():
                adversarial = _attack(models[unit.model], x[alive], y[alive], unit, config, stochastic[unit.model], generator, flow)
                correct[alive] = _predict(models[unit.model], adversarial, config.seed) == y[alive]
            record["correct"] += correct.tolist()
            record["attacked"] += int(alive.sum())
            record["seconds"] += time.perf_counter() - began
            partial.save()

    if "corruptions" not in results:
        images_c, labels_c = all_images[: config.corruption_images], all_labels[: config.corruption_images]
        accuracies: dict[str, dict[str, float]] = {name: {} for name in models}
        for corruption in CORRUPTIONS:
            for severity in SEVERITIES:
                corrupted = corrupt(images_c, corruption, severity, seed=config.seed)
                for name, model in models.items():
                    accuracies[name][f"{corruption}/{severity}"] = _accuracy(model, corrupted, labels_c, config.seed)
        results["corruptions"] = {"images": len(labels_c), **accuracies}
        partial.save()
    return Evaluation(bundle, config, units, results, images, labels, models)


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, seed: int) -> float:
    if isinstance(model, Pipeline):
        model.reseed(seed)
    return accuracy(model, images, labels)
