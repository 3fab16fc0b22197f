"""The evaluation protocol of DESIGN.md, run on one bundle: clean accuracy, white-box robust
accuracy (full-gradient PGD with EOT, BPDA, AutoAttack), gradient-free and transfer attacks
(Square; PGD examples crafted against other bundles' classifiers) and corruption accuracy, for
the bare classifier beside the full pipeline, so a purifier's gain or loss is visible.

Robust accuracy counts an image as correct only if it is classified correctly under every
attack run at that threat (per-image worst case). The attacks at one threat run as a cascade,
PGD first, then AutoAttack, BPDA and, at L∞ 0.1, Square and the transfer attacks, each on the
images all earlier ones failed to break (as AutoAttack does with its own components): an image
already broken stays broken, so the worst case is the same and no compute goes to images that
are already lost. Gradient-free attacks come last, so every image they break is one the
gradient attacks left standing: the report counts those as a sign of gradient masking.

A served stochastic pipeline draws fresh randomness per request and the attacker may resubmit,
so every adversarial example (and every clean image) of a stochastic model is judged on N
draws (``draws``, default 10; see ``evaluation.accuracy``): ``correct`` is draw 0, the
single-draw figure earlier reports gave, ``correct_all_draws`` whether all N draws were right.
Results of a run made before worst-of-N existed are completed by attacking again the images
that survived each attack (and, judged on all N draws, every attack before it) and judging the new
examples on N draws (``catch_up_seconds``).

Work is split into units (model, attack, norm, ε) done batch by batch; every finished batch is
saved to DIR/partial.json, and rerunning the same command continues from there. Options that
only add work (joint space, draws, Square, transfer sources) may be added to a finished run.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from evaluation.accuracy import correct_on_draws, is_stochastic
from evaluation.attacks import BPDA, JOINT_ETA, joint_pgd, pgd, square
from evaluation.conversion import conversion_agreement
from evaluation.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from purifier.bundle import Bundle, load_bundle
from purifier.errors import PurifierError
from purifier.fsutil import atomic_write_json
from purifier.models.imported import ImportedClassifier
from purifier.progress import progress
from purifier.transforms import NOISELESS_KINDS

HEADLINE = {"linf": 0.1, "l2": 1.5}
GRADIENT_FREE = ("square", "transfer")  # attack kinds that use no gradient of the defence


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
    draws: int = 10
    square_queries: int = 5000
    transfer_from: tuple[Path, ...] = field(default_factory=tuple)

    @classmethod
    def quick_run(cls, **overrides) -> EvaluationConfig:
        """Smoke-test sizes: minutes on a CPU, not protocol-conformant (the report says so)."""
        sizes = dict(images=32, clean_images=500, corruption_images=100, linf_eps=(0.05, 0.1), l2_eps=(0.5, 1.5), steps=5, eot=2,
                     curve_steps=3, curve_eot=1, autoattack_iterations=5, batch_size=32, quick=True, draws=4, square_queries=100)
        return cls(**{**sizes, **overrides})

    @classmethod
    def screening(cls, **overrides) -> EvaluationConfig:
        """The screen that picks which training changes get the full protocol: 100 images, PGD-20 × EOT-4, worst of 4 draws,
        at the headline radii only (minutes per bundle; not protocol-conformant)."""
        sizes = dict(images=100, clean_images=2000, corruption_images=200, linf_eps=(0.1,), l2_eps=(1.5,), steps=20, eot=4, draws=4,
                     autoattack=(), bpda=False, square_queries=0, quick=True)
        return cls(**{**sizes, **overrides})


@dataclass(frozen=True)
class Unit:
    model: str
    attack: str  # pgd, autoattack, bpda, joint_pgd, square, or transfer:SOURCE
    norm: str
    eps: float

    @property
    def key(self) -> str:
        return f"{self.model}|{self.attack}|{self.norm}|{self.eps:g}"

    @property
    def kind(self) -> str:
        return self.attack.split(":")[0]

    @property
    def gradient_free(self) -> bool:
        return self.kind in GRADIENT_FREE


def _models(bundle: Bundle, seed: int) -> dict[str, nn.Module]:
    classifier = bundle.classifier().requires_grad_(False)
    models: dict[str, nn.Module] = {"classifier": classifier}
    if bundle.has_purifier:
        models["pipeline"] = bundle.pipeline(seed=seed)
    return models


@dataclass(frozen=True)
class TransferSource:
    """A bundle whose bare classifier crafts the transfer examples (white-box PGD against it)."""

    name: str
    classifier: nn.Module
    weights: str  # sha256 of its classifier weights

    @classmethod
    def load(cls, path: Path, target: Bundle) -> TransferSource:
        bundle = load_bundle(path)
        if bundle.input_shape != target.input_shape or len(bundle.class_names) != len(target.class_names):
            raise PurifierError(f"transfer source {path} takes {bundle.input_shape} images with {len(bundle.class_names)} classes, "
                                f"but {target.path} takes {target.input_shape} with {len(target.class_names)}; pass a source for the same data")
        return cls(bundle.name, bundle.classifier().requires_grad_(False), bundle.manifest["files"][bundle.manifest["classifier"]["weights"]])


def plan(config: EvaluationConfig, models: list[str], sources: list[TransferSource] = (), own_classifier: str | None = None) -> list[Unit]:
    """Every attack unit the protocol asks for, per model. Transfer from a source with the evaluated classifier's own
    weights is skipped for the bare classifier: it would repeat its white-box PGD."""
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
                if norm == "linf" and config.square_queries > 0:
                    units.append(Unit(model, "square", norm, eps))
                if norm == "linf":
                    units += [Unit(model, f"transfer:{s.name}", norm, eps) for s in sources if not (model == "classifier" and s.weights == own_classifier)]
        if config.joint_flow is not None:
            units.append(Unit(model, "joint_pgd", "joint", config.joint_eps))
    return units


def autoattack_components(config: EvaluationConfig, stochastic: bool) -> list[str]:
    """AutoAttack's "rand" version for stochastic models, "standard" otherwise; Square leaves "standard" when it runs as its
    own unit (same 5,000 queries), so that the images it breaks are counted as gradient-free, not as AutoAttack's."""
    if stochastic:
        return ["apgd-ce", "apgd-dlr"]
    return ["apgd-ce", "apgd-t", "fab-t"] + ([] if config.square_queries > 0 else ["square"])


def _autoattack(model: nn.Module, images, labels, unit: Unit, config: EvaluationConfig, stochastic: bool) -> torch.Tensor:
    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    attack = AutoAttack(model, eps=unit.eps, norm="Linf" if unit.norm == "linf" else "L2",
                        version="rand" if stochastic else "standard", seed=config.seed)
    attack.attacks_to_run = autoattack_components(config, stochastic)
    for component in (attack.apgd, attack.apgd_targeted):
        component.n_iter = config.autoattack_iterations
    if config.quick:
        attack.apgd_targeted.n_target_classes, attack.fab.n_target_classes, attack.square.n_queries = 1, 1, 50
        attack.apgd.eot_iter = min(attack.apgd.eot_iter, config.eot)
    adversarial, _ = attack.run_standard_evaluation(images, labels, batch_size=len(images))
    return adversarial


def _attack(model: nn.Module, images, labels, unit: Unit, config: EvaluationConfig, stochastic: bool, generator, flow=None,
            sources: dict[str, TransferSource] | None = None) -> torch.Tensor:
    headline = unit.norm == "joint" or unit.eps == HEADLINE[unit.norm]
    steps = config.steps if headline else config.curve_steps
    eot = (config.eot if headline else config.curve_eot) if stochastic else 1
    if unit.kind == "joint_pgd":
        return joint_pgd(model, flow, images, labels, unit.eps, config.joint_eta, steps=steps, eot=eot, generator=generator)
    if unit.kind == "pgd":
        return pgd(model, images, labels, unit.eps, steps=steps, norm=unit.norm, eot=eot, generator=generator)
    if unit.kind == "bpda":
        return pgd(BPDA(model), images, labels, unit.eps, steps=steps, norm=unit.norm, eot=eot, generator=generator)
    if unit.kind == "square":
        return square(model, images, labels, unit.eps, queries=config.square_queries, norm=unit.norm, seed=int(generator.initial_seed()))
    if unit.kind == "transfer":
        source = sources[unit.attack.split(":", 1)[1]].classifier
        return pgd(source, images, labels, unit.eps, steps=steps, norm=unit.norm, generator=generator)
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

    def draws(self, model: str) -> int:
        """How many draws judge this model: 1 for a deterministic one."""
        return self.config.draws if is_stochastic(self.models[model]) else 1


# Options that only add work (units, or draws judging finished ones): a finished evaluation may be rerun with them.
_ADDITIVE = ("joint_flow", "joint_eps", "joint_eta", "draws", "square_queries", "transfer_from")


def _options(config: EvaluationConfig) -> dict:
    return {k: v for k, v in json.loads(json.dumps(asdict(config), default=str)).items() if k not in _ADDITIVE}


def _model_identity(bundle: Bundle) -> dict:
    """What an evaluation's results depend on, wherever the bundle lies: weight files' sha256 and the random transform."""
    return {"weights": bundle.weight_digests(), "transform": _canonical_transform((bundle.manifest.get("purifier") or {}).get("random_transform"))}


def _canonical_transform(transform: dict | None) -> dict | None:
    """A transform record with settings its kind ignores zeroed: RT1 bundles once recorded a noise σ they never used."""
    if transform is not None and transform.get("kind") in NOISELESS_KINDS:
        transform = {**transform, "noise_std": 0.0}
    return transform


def _load_saved(path: Path) -> dict:
    """A saved partial.json; options added after its run started count as their defaults (so older runs still resume)."""
    saved = json.loads(path.read_text())
    if "model" in saved:
        saved["model"]["transform"] = _canonical_transform(saved["model"].get("transform"))
    saved["config"] = {**_options(EvaluationConfig()), **{k: v for k, v in saved.get("config", {}).items() if k not in _ADDITIVE}}
    return saved


def classifier_attacks(report_dir: Path, bundle: Bundle, config: EvaluationConfig) -> dict:
    """The attack results on the bare classifier in another evaluation of the same classifier weights with the
    same options: a composed bundle (``purifier compose``) need not attack its classifier again."""
    source = Path(report_dir) / "partial.json"
    if not source.exists():
        raise PurifierError(f"{source} does not exist; pass a report directory written by 'purifier evaluate'")
    saved = _load_saved(source)
    weights = bundle.manifest["classifier"]["weights"]
    theirs = saved.get("model", {}).get("weights", {}).get(weights)
    if theirs != _model_identity(bundle)["weights"][weights] or saved["config"] != _options(config):
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


def _rate(outcomes: torch.Tensor) -> float:
    return int(outcomes.sum()) / max(len(outcomes), 1)


def _bits(outcomes: torch.Tensor) -> str:
    """Per-image outcomes as a compact string of 0/1 (10,000 clean images stay small in partial.json)."""
    return "".join("1" if value else "0" for value in outcomes.tolist())


def _check_settings(record: dict, settings: dict, path: Path) -> None:
    if record.setdefault("settings", settings) != settings:
        raise PurifierError(f"{path} holds results of {record['settings']} for this attack, not {settings}; use another --out")


def _unit_settings(unit: Unit, config: EvaluationConfig, flow_bundle: Bundle | None, sources: dict[str, TransferSource]) -> dict | None:
    """What a unit's results depend on beyond the evaluation's options: they are checked on resume."""
    if unit.kind == "joint_pgd":
        return {"flow": _model_identity(flow_bundle)["weights"], "eta": config.joint_eta}
    if unit.kind == "square":
        return {"queries": config.square_queries}
    if unit.kind == "transfer":
        return {"source": sources[unit.attack.split(":", 1)[1]].weights}
    return None


@dataclass
class _Judge:
    """Attacks chosen images of a batch with one unit's attack and judges the adversarial examples on ``draws`` draws."""

    model: nn.Module
    unit: Unit
    config: EvaluationConfig
    stochastic: bool
    draws: int
    images: torch.Tensor
    labels: torch.Tensor
    flow: nn.Module | None
    sources: dict[str, TransferSource]

    def __call__(self, start: int, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(correct on draw 0, correct on every draw) for the batch at ``start``; False where not chosen."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + start)
        x, y = self.images[start:start + len(chosen)], self.labels[start:start + len(chosen)]
        single, every = torch.zeros(len(y), dtype=torch.bool), torch.zeros(len(y), dtype=torch.bool)
        if chosen.any():
            adversarial = _attack(self.model, x[chosen], y[chosen], self.unit, self.config, self.stochastic, generator, self.flow, self.sources)
            single[chosen], every[chosen] = correct_on_draws(self.model, adversarial, y[chosen], self.config.seed, self.draws)
        return single, every


def _prepare_draws(record: dict, draws: int, path: Path) -> None:
    """Give a stochastic model's record its worst-of-N list; one made before draws existed starts an empty one (catch-up)."""
    if "correct_all_draws" in record:
        if record["draws"] != draws:
            raise PurifierError(f"{path} judged this attack on {record['draws']} draws, not {draws}; pass --draws {record['draws']} or use another --out")
        return
    record["draws"], record["correct_all_draws"] = draws, []
    if record["correct"]:
        record["catch_up_seconds"] = 0.0


def evaluate(bundle_path: Path, out: Path, config: EvaluationConfig, data_dir: Path | None = None,
             reuse_classifier: Path | None = None) -> Evaluation:
    """Run (or resume) the protocol on a bundle; report.py turns the result into files. ``reuse_classifier``: a report
    directory whose finished attacks on the same classifier are taken instead of being run again."""
    bundle = load_bundle(bundle_path)
    models = _models(bundle, config.seed)  # a bundle or flow that cannot be used fails before anything is written
    flow_bundle = load_bundle(config.joint_flow) if config.joint_flow is not None else None
    flow = flow_bundle.flow().requires_grad_(False) if flow_bundle is not None else None
    sources = {source.name: source for source in (TransferSource.load(path, bundle) for path in config.transfer_from)}
    all_images, all_labels = bundle.data("test", data_dir).tensors()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    partial = _Partial(out / "partial.json", bundle, config)
    results = partial.results
    if reuse_classifier is not None:
        for key, record in classifier_attacks(reuse_classifier, bundle, config).items():
            if len(record["correct"]) > len(results.get(key, {}).get("correct", [])):
                results[key] = record
        results["classifier_attacks_from"] = str(reuse_classifier)
    stochastic = {name: is_stochastic(model) for name, model in models.items()}

    if "clean" not in results:
        images, labels = all_images[: config.clean_images], all_labels[: config.clean_images]
        results["clean"] = {"images": len(labels), **{name: _rate(correct_on_draws(model, images, labels, config.seed, 1)[0])
                                                      for name, model in models.items()}}
        partial.save()
    if results.get("clean_draws", {}).get("draws") != config.draws:
        images, labels = all_images[: results["clean"]["images"]], all_labels[: results["clean"]["images"]]
        outcomes = {name: correct_on_draws(model, images, labels, config.seed, config.draws) for name, model in models.items()}
        results["clean_draws"] = {"draws": config.draws, "images": len(labels),
                                  **{name: {"single": _bits(single), "all_draws": _bits(every)} for name, (single, every) in outcomes.items()}}
        partial.save()

    images, labels = all_images[: config.images], all_labels[: config.images]
    if isinstance(models["classifier"], ImportedClassifier) and "conversion" not in results:
        results["conversion"] = conversion_agreement(models["classifier"], images, labels, config.seed)
        partial.save()
    units = plan(config, list(models), list(sources.values()), bundle.manifest["files"].get(bundle.manifest["classifier"]["weights"]))
    for position, unit in enumerate(units):
        record = results.setdefault(unit.key, {"correct": [], "attacked": 0, "seconds": 0.0})
        settings = _unit_settings(unit, config, flow_bundle, sources)
        if settings is not None:
            _check_settings(record, settings, partial.path)
        if unit.kind == "autoattack" and not record["correct"]:  # records made before this list included Square
            record["components"] = autoattack_components(config, stochastic[unit.model])
        draws = config.draws if stochastic[unit.model] else 1
        if draws > 1:
            _prepare_draws(record, draws, partial.path)
        earlier = [results[u.key]["correct"] for u in units[:position] if (u.model, u.norm, u.eps) == (unit.model, unit.norm, unit.eps)]
        judge = _Judge(models[unit.model], unit, config, stochastic[unit.model], draws, images, labels, flow, sources)
        name = f"{unit.model} {unit.attack} {unit.norm} eps={unit.eps:g}"
        todo = list(range(len(record["correct"]), len(labels), config.batch_size))
        for start in [] if not todo else progress(todo, len(todo), name):
            began = time.perf_counter()
            batch = range(start, min(start + config.batch_size, len(labels)))
            alive = torch.tensor([all(outcome[i] for outcome in earlier) for i in batch], dtype=torch.bool)
            single, every = judge(start, alive)
            record["correct"] += single.tolist()
            if draws > 1:
                record["correct_all_draws"] += every.tolist()
            record["attacked"] += int(alive.sum())
            record["seconds"] += time.perf_counter() - began
            partial.save()
        if draws > 1:  # a record made before worst-of-N: attack again the images that survived it and every earlier attack on all draws
            todo = list(range(len(record["correct_all_draws"]), len(record["correct"]), config.batch_size))
            earlier_all = [results[u.key]["correct_all_draws"] for u in units[:position] if (u.model, u.norm, u.eps) == (unit.model, unit.norm, unit.eps)]
            for start in [] if not todo else progress(todo, len(todo), f"{name}: worst of {draws} draws"):
                began = time.perf_counter()
                batch = range(start, min(start + config.batch_size, len(labels)))
                survived = torch.tensor([record["correct"][i] and all(outcome[i] for outcome in earlier_all) for i in batch], dtype=torch.bool)
                record["correct_all_draws"] += judge(start, survived)[1].tolist()
                record["catch_up_seconds"] += time.perf_counter() - began
                partial.save()

    if "corruptions_per_image" not in results:  # runs saved before per-image outcomes were kept redo it (seeded: same rates)
        images_c, labels_c = all_images[: config.corruption_images], all_labels[: config.corruption_images]
        accuracies: dict[str, dict[str, float]] = {name: {} for name in models}
        outcomes: dict[str, dict[str, str]] = {name: {} for name in models}
        for corruption in CORRUPTIONS:
            for severity in SEVERITIES:
                corrupted = corrupt(images_c, corruption, severity, seed=config.seed)
                for name, model in models.items():
                    correct = correct_on_draws(model, corrupted, labels_c, config.seed, 1)[0]
                    accuracies[name][f"{corruption}/{severity}"] = _rate(correct)
                    outcomes[name][f"{corruption}/{severity}"] = _bits(correct)
        results["corruptions"] = {"images": len(labels_c), **accuracies}
        results["corruptions_per_image"] = outcomes
        partial.save()
    return Evaluation(bundle, config, units, results, images, labels, models)
