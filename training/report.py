"""Turn an Evaluation into report.json, report.md and PNG plots, and optionally record the
headline figures in the bundle's bundle.json."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from purifier.bundle import update_manifest  # noqa: E402
from purifier.fsutil import atomic_write_bytes, atomic_write_json  # noqa: E402
from purifier.pipeline import Pipeline  # noqa: E402
from training.attacks import pgd  # noqa: E402
from training.evaluate import HEADLINE, Evaluation  # noqa: E402

PACKAGES = ("torch", "onnxruntime", "pyautoattack", "numpy", "pillow")


def robust_table(evaluation: Evaluation) -> dict:
    """model -> norm -> eps -> {attack: accuracy after the cascade up to this attack, ..., 'worst_case': accuracy}."""
    table: dict = {}
    surviving: dict = {}
    for unit in evaluation.units:
        threat = (unit.model, unit.norm, unit.eps)
        outcome = np.array(evaluation.results[unit.key]["correct"], dtype=bool)
        surviving[threat] = outcome & surviving.get(threat, True)
        table.setdefault(unit.model, {}).setdefault(unit.norm, {}).setdefault(f"{unit.eps:g}", {})[unit.attack] = float(surviving[threat].mean())
    for (model, norm, eps), outcome in surviving.items():
        if norm == "joint":  # the joint ball contains the L∞ ball of the same ε (δz = 0): its attacks count too
            outcome = outcome & surviving.get((model, "linf", eps), True)
        table[model][norm][f"{eps:g}"]["worst_case"] = float(outcome.mean())
    return table


def corruption_summary(evaluation: Evaluation) -> dict:
    corruptions = evaluation.results["corruptions"]
    summary = {}
    for model in evaluation.models:
        by_type: dict[str, list[float]] = {}
        for key, value in corruptions[model].items():
            by_type.setdefault(key.split("/")[0], []).append(value)
        summary[model] = {"mean": float(np.mean(list(corruptions[model].values()))), "per_type": {k: float(np.mean(v)) for k, v in by_type.items()}}
    return summary


def protocol(evaluation: Evaluation) -> dict:
    config = evaluation.config
    conformant = not config.quick and config.images >= 500 and config.steps >= 100 and config.eot >= 20 and "linf" in config.autoattack
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        **json.loads(json.dumps(asdict(config), default=str)), "robust_images": len(evaluation.labels), "conformant": conformant,
        "prediction": "one draw of the transform from the seed", "classifier_attacks_from": evaluation.results.get("classifier_attacks_from"),
        "packages": versions,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.system()}",
    }


def _headline_threats(config) -> list[tuple[str, float, str]]:
    """(norm, ε, column title) of the threats in the headline: L∞ 0.1, L2 1.5, and the joint space when evaluated."""
    threats = [("linf", HEADLINE["linf"], "L∞ 0.1"), ("l2", HEADLINE["l2"], "L2 1.5")]
    if config.joint_flow is not None:
        threats.append(("joint", config.joint_eps, f"joint ε {config.joint_eps:g} η {config.joint_eta:g}"))
    return threats


def _worst_case(robust: dict, model: str, norm: str, eps: float):
    return robust[model].get(norm, {}).get(f"{eps:g}", {}).get("worst_case")


def headline(evaluation: Evaluation, robust: dict, corruptions: dict) -> dict:
    """Clean, worst-case L∞ 0.1, worst-case L2 1.5 (and joint-space, when run) and corruption mean of the defended model."""
    model = "pipeline" if "pipeline" in evaluation.models else "classifier"
    head = {"model": model, "clean": evaluation.results["clean"][model]}
    for norm, eps, _ in _headline_threats(evaluation.config):
        head[f"{norm}_{eps:g}_worst_case"] = _worst_case(robust, model, norm, eps)
    return {**head, "corruption_mean": corruptions[model]["mean"]}


def _markdown(evaluation: Evaluation, robust: dict, corruptions: dict, head: dict, proto: dict) -> str:
    results = evaluation.results
    lines = [f"# Evaluation of `{evaluation.bundle.name}`", ""]
    if not proto["conformant"]:
        lines += ["**Not protocol-conformant** (quick or reduced sizes): smoke-test figures only.", ""]
    lines += [
        f"Clean accuracy on {results['clean']['images']} test images; robust accuracy on the first {proto['robust_images']} "
        f"(PGD {evaluation.config.steps} steps, EOT {evaluation.config.eot} for stochastic models, at the headline radii); "
        f"corruptions on the first {results['corruptions']['images']}. Wall time {results['wall_time_s'] / 60:.1f} min.", "",
    ]
    threats = _headline_threats(evaluation.config)
    lines += ["| model | clean | " + " | ".join(f"{title} worst case" for *_, title in threats) + " | corruptions mean |",
              "|---|---|" + "---|" * len(threats) + "---|"]
    for model in evaluation.models:
        cells = [_worst_case(robust, model, norm, eps) for norm, eps, _ in threats]
        lines.append(f"| {model} | {results['clean'][model]:.2%} | " + " | ".join("—" if c is None else f"{c:.2%}" for c in cells)
                     + f" | {corruptions[model]['mean']:.2%} |")
    lines += ["", "## Robust accuracy after each attack", "",
              "Attacks at one threat run in this order, each on the images no earlier attack broke, so each row is the accuracy "
              "left after that attack and all above it; the last row of a threat is the per-image worst case (for the joint "
              "space, which contains the L∞ ball of the same ε, it also counts the L∞ attacks).", "",
              "| model | threat | ε | attack | accuracy |", "|---|---|---|---|---|"]
    for model, norms in robust.items():
        for norm, radii in norms.items():
            for eps, attacks in radii.items():
                for attack, value in attacks.items():
                    lines.append(f"| {model} | {norm} | {eps} | {attack} | {value:.2%} |")
    lines += ["", "## Corruptions (mean over 3 severities)", "", "| corruption | " + " | ".join(evaluation.models) + " |",
              "|---|" + "---|" * len(evaluation.models)]
    for name in next(iter(corruptions.values()))["per_type"]:
        lines.append(f"| {name} | " + " | ".join(f"{corruptions[m]['per_type'][name]:.2%}" for m in evaluation.models) + " |")
    lines += ["", "Plots: `accuracy_vs_eps.png`, `corruptions.png`, `examples.png`. Every parameter is in `report.json`.", ""]
    return "\n".join(lines)


def _plot_eps(robust: dict, path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, norm, label in ((axes[0], "linf", "L∞ ε"), (axes[1], "l2", "L2 ε")):
        for model, norms in robust.items():
            radii = sorted(norms.get(norm, {}), key=float)
            axis.plot([0.0] + [float(r) for r in radii], [np.nan] + [norms[norm][r]["worst_case"] for r in radii], marker="o", label=model)
        axis.set(xlabel=label, ylabel="robust accuracy (worst case)", ylim=(0, 1))
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_corruptions(corruptions: dict, path: Path) -> None:
    names = list(next(iter(corruptions.values()))["per_type"])
    figure, axis = plt.subplots(figsize=(10, 3.5))
    width = 0.8 / len(corruptions)
    for index, (model, summary) in enumerate(corruptions.items()):
        axis.bar(np.arange(len(names)) + index * width, [summary["per_type"][n] for n in names], width, label=model)
    axis.set_xticks(np.arange(len(names)) + width * (len(corruptions) - 1) / 2, names, rotation=30, ha="right")
    axis.set(ylabel="accuracy", ylim=(0, 1))
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_examples(evaluation: Evaluation, path: Path, count: int = 6) -> None:
    """Clean, adversarial (headline L∞ PGD against the defended model) and purified images, with predictions."""
    model_name = "pipeline" if "pipeline" in evaluation.models else "classifier"
    model = evaluation.models[model_name]
    images, labels = evaluation.images[:count], evaluation.labels[:count]
    config = evaluation.config
    stochastic = isinstance(model, Pipeline) and model.is_stochastic
    adversarial = pgd(model, images, labels, HEADLINE["linf"], steps=config.steps, eot=config.eot if stochastic else 1,
                      generator=torch.Generator().manual_seed(config.seed))
    names = evaluation.bundle.class_names
    rows = [("clean", images), ("adversarial", adversarial)]
    if isinstance(model, Pipeline) and model.purifier is not None:
        model.reseed(config.seed)
        with torch.no_grad():
            rows.append(("purified", model.purify(adversarial)))
    classifier = model.classifier if isinstance(model, Pipeline) else model
    figure, axes = plt.subplots(len(rows), count, figsize=(1.6 * count, 1.9 * len(rows)), squeeze=False)
    for row, (title, batch) in enumerate(rows):
        with torch.no_grad():
            predictions = classifier(batch).argmax(1)
        for column in range(count):
            axis = axes[row][column]
            picture = batch[column].permute(1, 2, 0).squeeze(-1).numpy()
            axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
            right = int(predictions[column]) == int(labels[column])
            axis.set_title(f"{title}\n{names[int(predictions[column])]}", fontsize=7, color="green" if right else "red")
            axis.axis("off")
    figure.suptitle("prediction of the classifier on each row; green = correct", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _png(figure_writer, path: Path, *args) -> None:
    """Draw to a temporary name, then rename: no half-written plots."""
    temporary = path.with_suffix(".tmp.png")
    figure_writer(*args, temporary)
    os.replace(temporary, path)


def write_report(evaluation: Evaluation, out: Path, record: bool = False) -> dict:
    out = Path(out)
    robust, corruptions = robust_table(evaluation), corruption_summary(evaluation)
    proto = protocol(evaluation)
    head = headline(evaluation, robust, corruptions)
    report = {
        "bundle": evaluation.bundle.name, "bundle_path": str(evaluation.bundle.path), "headline": head, "clean": evaluation.results["clean"], "robust": robust,
        "corruptions": {"images": evaluation.results["corruptions"]["images"], **corruptions},
        "per_image_worst_case_images": proto["robust_images"], "wall_time_s": round(evaluation.results["wall_time_s"], 1), "protocol": proto,
    }
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", _markdown(evaluation, robust, corruptions, head, proto).encode())
    _png(_plot_eps, out / "accuracy_vs_eps.png", robust)
    _png(_plot_corruptions, out / "corruptions.png", corruptions)
    _png(_plot_examples, out / "examples.png", evaluation)
    if record:
        robustness = {**head, "protocol": proto, "wall_time_s": report["wall_time_s"]}
        update_manifest(evaluation.bundle, lambda manifest: manifest.setdefault("metrics", {}).update(robustness=robustness))
    return report
