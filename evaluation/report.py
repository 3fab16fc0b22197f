"""Turn an Evaluation into report.json, report.md and PNG plots, and optionally record the
headline figures in the bundle's bundle.json (its robustness card).

Every figure carries a 95% Wilson interval. A stochastic pipeline's headline is its worst of N
draws (an image counts only if every draw of its adversarial example is right); the single-draw
figure stands beside it. Images broken only by attacks that use no gradient of the defence
(Square, transfer) are counted and flagged as possible gradient masking.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import textwrap
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from evaluation.attacks import pgd
from evaluation.evaluate import HEADLINE, Evaluation, Unit
from evaluation.stats import wilson
from purifier.bundle import update_manifest
from purifier.fsutil import atomic_write_bytes, atomic_write_json
from purifier.pipeline import Pipeline

PACKAGES = ("torch", "onnxruntime", "pyautoattack", "numpy", "pillow")
ATTACK_NAMES = {"pgd": "PGD", "autoattack": "AutoAttack", "bpda": "BPDA", "square": "Square", "joint_pgd": "joint-space PGD"}
TRAINING_NAMES = {"standard": "standard training", "pgd": "PGD adversarial training", "fgsm_rs": "FGSM-RS adversarial training",
                  "trades": "TRADES", "gaussian": "Gaussian-noise training"}


def attack_title(attack: str) -> str:
    """'transfer:fmnist-standard' -> 'transfer from fmnist-standard'; 'pgd' -> 'PGD'."""
    kind, _, source = attack.partition(":")
    return f"transfer from {source}" if kind == "transfer" else ATTACK_NAMES.get(kind, kind)


def _outcomes(record: dict, all_draws: bool) -> np.ndarray:
    """Per-image outcomes of one unit: on draw 0, or on every draw (a deterministic model's record has one list)."""
    return np.array(record["correct_all_draws" if all_draws and "correct_all_draws" in record else "correct"], dtype=bool)


def _threat_outcomes(units: list[Unit], results: dict, all_draws: bool) -> tuple[dict, dict]:
    """(per threat, per attack: outcome after the cascade up to it; per threat: the per-image worst case)."""
    cascade: dict = {}
    surviving: dict = {}
    for unit in units:
        threat = (unit.model, unit.norm, unit.eps)
        surviving[threat] = _outcomes(results[unit.key], all_draws) & surviving.get(threat, True)
        cascade.setdefault(threat, {})[unit.attack] = surviving[threat]
    worst = {}
    for (model, norm, eps), outcome in surviving.items():
        if norm == "joint":  # the joint ball contains the L∞ ball of the same ε (δz = 0): its attacks count too
            outcome = outcome & surviving.get((model, "linf", eps), True)
        worst[(model, norm, eps)] = outcome
    return cascade, worst


def per_image(evaluation: Evaluation) -> dict:
    """model -> threat ('linf_0.1') -> {'single': bits, 'worst_of_n': bits}: the per-image worst case, for paired tests."""
    _, single = _threat_outcomes(evaluation.units, evaluation.results, all_draws=False)
    _, every = _threat_outcomes(evaluation.units, evaluation.results, all_draws=True)
    table: dict = {}
    for (model, norm, eps), outcome in single.items():
        table.setdefault(model, {})[f"{norm}_{eps:g}"] = {"single": _bits(outcome), "worst_of_n": _bits(every[(model, norm, eps)])}
    return table


def _bits(outcome: np.ndarray) -> str:
    return "".join("1" if value else "0" for value in outcome)


def robust_table(evaluation: Evaluation) -> dict:
    """model -> norm -> eps -> {attack: accuracy after the cascade up to this attack, ..., 'worst_case': accuracy,
    'worst_of_n': accuracy when every draw of a stochastic model must be right (= worst_case when deterministic)}."""
    cascade, worst = _threat_outcomes(evaluation.units, evaluation.results, all_draws=False)
    _, worst_all = _threat_outcomes(evaluation.units, evaluation.results, all_draws=True)
    table: dict = {}
    for (model, norm, eps), attacks in cascade.items():
        cell = table.setdefault(model, {}).setdefault(norm, {}).setdefault(f"{eps:g}", {})
        cell.update({attack: float(outcome.mean()) for attack, outcome in attacks.items()})
        cell["worst_case"] = float(worst[(model, norm, eps)].mean())
        if any("correct_all_draws" in evaluation.results[u.key] for u in evaluation.units if u.model == model):
            cell["worst_of_n"] = float(worst_all[(model, norm, eps)].mean())
    return table


def gradient_masking(evaluation: Evaluation) -> dict:
    """model -> {attack: images it broke that every gradient attack left standing (single draw), 'worst_of_n': the same
    count judged on every draw, 'flagged': any such image}: at L∞ 0.1, where the gradient-free attacks run."""
    summary = {}
    for model in evaluation.models:
        units = [u for u in evaluation.units if (u.model, u.norm, u.eps) == (model, "linf", HEADLINE["linf"])]
        free = [u for u in units if u.gradient_free]
        if not free:
            continue
        entry: dict = {}
        for all_draws, name in ((False, "single"), (True, "worst_of_n")):
            standing = np.logical_and.reduce([_outcomes(evaluation.results[u.key], all_draws) for u in units if not u.gradient_free])
            broken = {}
            for unit in free:
                outcome = _outcomes(evaluation.results[unit.key], all_draws)
                broken[unit.attack] = int((standing & ~outcome).sum())
                standing = standing & outcome
            entry[name] = broken
        entry["flagged"] = any(entry["single"].values()) or any(entry["worst_of_n"].values())
        autoattack = evaluation.results.get(Unit(model, "autoattack", "linf", HEADLINE["linf"]).key)
        entry["autoattack_included_square"] = bool(autoattack) and "square" in autoattack.get("components", ["square"] if evaluation.draws(model) == 1 else [])
        summary[model] = entry
    return summary


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
    conformant = (not config.quick and config.images >= 500 and config.steps >= 100 and config.eot >= 20 and "linf" in config.autoattack
                  and config.draws >= 10 and config.square_queries >= 5000)
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    stochastic = [name for name in evaluation.models if evaluation.draws(name) > 1]
    return {
        **json.loads(json.dumps(asdict(config), default=str)), "robust_images": len(evaluation.labels), "conformant": conformant,
        "prediction": (f"single draw: one draw of the transform from the seed; worst of {config.draws}: correct on all {config.draws} draws "
                       f"(for {', '.join(stochastic)})") if stochastic else "deterministic: every draw is the same, so N = 1",
        "classifier_attacks_from": evaluation.results.get("classifier_attacks_from"),
        "packages": versions,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.system()}",
    }


def _headline_threats(config) -> list[tuple[str, float, str]]:
    """(norm, ε, column title) of the threats in the headline: L∞ 0.1, L2 1.5, and the joint space when evaluated."""
    threats = [("linf", HEADLINE["linf"], "L∞ 0.1"), ("l2", HEADLINE["l2"], "L2 1.5")]
    if config.joint_flow is not None:
        threats.append(("joint", config.joint_eps, f"joint ε {config.joint_eps:g} η {config.joint_eta:g}"))
    return threats


def _cell(robust: dict, model: str, norm: str, eps: float, key: str = "worst_case"):
    cell = robust[model].get(norm, {}).get(f"{eps:g}", {})
    return cell.get(key, cell.get("worst_case"))


def _clean(evaluation: Evaluation, model: str) -> tuple[float, float, int]:
    """(single-draw, worst-of-N, images) clean accuracy of a model."""
    draws = evaluation.results["clean_draws"]
    single, every = draws[model]["single"], draws[model]["all_draws"]
    return single.count("1") / len(single), every.count("1") / len(every), len(single)


def _interval(value: float, images: int) -> list[float]:
    return [round(bound, 4) for bound in wilson(round(value * images), images)]


def headline(evaluation: Evaluation, robust: dict, corruptions: dict) -> dict:
    """The robustness card: clean, worst case at L∞ 0.1 and L2 1.5 (and joint space, when run), on one draw and on the
    worst of N draws, corruption mean, 95% Wilson intervals, the gradient-masking flag, and which figure is the headline."""
    model = "pipeline" if "pipeline" in evaluation.models else "classifier"
    draws = evaluation.draws(model)
    clean_single, clean_all, clean_images = _clean(evaluation, model)
    robust_images = len(evaluation.labels)
    head = {"model": model, "clean": evaluation.results["clean"][model]}
    intervals = {"clean": _interval(clean_single, clean_images)}
    for norm, eps, _ in _headline_threats(evaluation.config):
        key = f"{norm}_{eps:g}"
        head[f"{key}_worst_case"] = _cell(robust, model, norm, eps)
        intervals[f"{key}_worst_case"] = _interval(head[f"{key}_worst_case"], robust_images)
    head["corruption_mean"] = corruptions[model]["mean"]
    head.update(draws=draws, headline="worst_of_n" if draws > 1 else "single draw (deterministic model)", clean_worst_of_n=clean_all)
    intervals["clean_worst_of_n"] = _interval(clean_all, clean_images)
    for norm, eps, _ in _headline_threats(evaluation.config):
        key = f"{norm}_{eps:g}"
        head[f"{key}_worst_of_n"] = _cell(robust, model, norm, eps, "worst_of_n")
        intervals[f"{key}_worst_of_n"] = _interval(head[f"{key}_worst_of_n"], robust_images)
    masking = gradient_masking(evaluation).get(model)
    return {**head, "intervals": intervals, "gradient_masking": masking}


def _percent(value: float, images: int) -> str:
    low, high = wilson(round(value * images), images)
    return f"{value:.1%} [{low:.1%}, {high:.1%}]"


def _markdown(evaluation: Evaluation, robust: dict, corruptions: dict, masking: dict, proto: dict) -> str:
    results, config = evaluation.results, evaluation.config
    images = proto["robust_images"]
    lines = [f"# Evaluation of `{evaluation.bundle.name}`", ""]
    if not proto["conformant"]:
        lines += ["**Not protocol-conformant** (quick or reduced sizes): smoke-test figures only.", ""]
    lines += [
        f"Clean accuracy on {results['clean']['images']} test images; robust accuracy on the first {images} "
        f"(PGD {config.steps} steps, EOT {config.eot} for stochastic models, at the headline radii); "
        f"corruptions on the first {results['corruptions']['images']}. Every figure: accuracy [95% Wilson interval]. "
        f"Wall time {results['wall_time_s'] / 60:.1f} min.", "",
        f"Prediction: {proto['prediction']}. The attacker may resubmit an image to a served stochastic defence until one "
        "draw misclassifies it, so for a stochastic model the worst-of-N figure is the one to quote.", "",
    ]
    threats = _headline_threats(config)
    lines += ["| model | draws | clean | " + " | ".join(f"{title} worst case" for *_, title in threats) + " | corruptions mean |",
              "|---|---|---|" + "---|" * len(threats) + "---|"]
    for model in evaluation.models:
        draws = evaluation.draws(model)
        single, every, clean_images = _clean(evaluation, model)
        rows = [("one draw", single, "worst_case")] + ([(f"worst of {draws}", every, "worst_of_n")] if draws > 1 else [])
        for label, clean, key in rows:
            cells = [_cell(robust, model, norm, eps, key) for norm, eps, _ in threats]
            lines.append(f"| {model} | {label if draws > 1 else '1 (deterministic)'} | {_percent(clean, clean_images)} | "
                         + " | ".join("—" if c is None else _percent(c, images) for c in cells) + f" | {corruptions[model]['mean']:.2%} |")
    lines += ["", "## Gradient masking check (L∞ 0.1)", ""]
    for model, entry in masking.items():
        found = ", ".join(f"{attack_title(a)} {n}" for a, n in entry["single"].items())
        found_all = ", ".join(f"{attack_title(a)} {n}" for a, n in entry["worst_of_n"].items())
        verdict = ("**possible gradient masking**: attacks that use no gradient of the defence broke images every gradient "
                   "attack left standing" if entry["flagged"] else "no sign of gradient masking: the gradient-free attacks broke no "
                   "image the gradient attacks left standing")
        note = (" AutoAttack ran its own Square in this evaluation (made before Square ran apart), so images Square broke there "
                "count as AutoAttack's and this check only sees what the gradient attacks and that Square both missed."
                if entry["autoattack_included_square"] else "")
        lines.append(f"- {model}: {verdict} (images broken: {found}; judged on every draw: {found_all}).{note}")
    if "conversion" in results:
        lines += ["", "## Imported classifier: the served ONNX graph vs the PyTorch conversion the attacks used", ""]
        conversion = results["conversion"]
        for name in ("clean", "adversarial"):
            entry = conversion[name]
            what = "evaluated clean images" if name == "clean" else f"examples of {conversion['adversarial_attack']}"
            lines.append(f"- {what}: same prediction on {entry['argmax_agreement']:.1%} of {conversion['images']}, "
                         f"largest logit difference {entry['max_abs_logit_diff']:.1e}.")
    lines += ["", "## Robust accuracy after each attack", "",
              "Attacks at one threat run in this order, each on the images no earlier attack broke, so each row is the accuracy "
              "left after that attack and all above it; the last rows of a threat are the per-image worst case (for the joint "
              "space, which contains the L∞ ball of the same ε, it also counts the L∞ attacks). Off the headline radii the "
              f"attack is lighter (PGD {config.curve_steps} steps, EOT {config.curve_eot}).", "",
              "| model | threat | ε | attack | accuracy | seconds |", "|---|---|---|---|---|---|"]
    for model, norms in robust.items():
        for norm, radii in norms.items():
            for eps, attacks in radii.items():
                for attack, value in attacks.items():
                    record = results.get(Unit(model, attack, norm, float(eps)).key, {})
                    seconds = record.get("seconds", 0.0) + record.get("catch_up_seconds", 0.0)
                    title = {"worst_case": "worst case, one draw", "worst_of_n": f"worst case, worst of {evaluation.draws(model)} draws"}.get(attack, attack_title(attack))
                    lines.append(f"| {model} | {norm} | {eps} | {title} | {_percent(value, images)} | {f'{seconds:.0f}' if record else ''} |")
    lines += ["", "## Corruptions (mean over 3 severities, one draw)", "", "| corruption | " + " | ".join(evaluation.models) + " |",
              "|---|" + "---|" * len(evaluation.models)]
    for name in next(iter(corruptions.values()))["per_type"]:
        lines.append(f"| {name} | " + " | ".join(f"{corruptions[m]['per_type'][name]:.2%}" for m in evaluation.models) + " |")
    lines += ["", "Plots: `accuracy_vs_eps.png`, `corruptions.png`, `examples.png`. Every parameter is in `report.json`.", ""]
    return "\n".join(lines)


def _curve(norms: dict, norm: str, clean: float) -> tuple[list[float], list[float], list[bool]]:
    """(ε, accuracy, headline?) points of one model's curve: clean at ε = 0, then the worst case (worst of N when judged so)."""
    radii = sorted(norms.get(norm, {}), key=float)
    values = [norms[norm][r].get("worst_of_n", norms[norm][r]["worst_case"]) for r in radii]
    return [0.0] + [float(r) for r in radii], [clean] + values, [True] + [float(r) == HEADLINE[norm] for r in radii]


def _baseline_label(report: dict) -> str:
    """A baseline report's defended model in words, e.g. "baseline: classifier, PGD adversarial training (fmnist-pgd-at)";
    the training method is read from the baseline's bundle.json when it is at the report's bundle_path."""
    kind = "purifier → classifier" if report["headline"]["model"] == "pipeline" else "classifier"
    manifest = Path(report.get("bundle_path", "")) / "bundle.json"
    method = json.loads(manifest.read_text()).get("classifier", {}).get("method") if kind == "classifier" and manifest.is_file() else None
    return f"baseline: {kind}" + (f", {TRAINING_NAMES[method]}" if method in TRAINING_NAMES else "") + f" ({report['bundle']})"


def _plot_eps(evaluation: Evaluation, robust: dict, baselines: list[dict], path: Path) -> None:
    """Accuracy vs ε for this bundle's models (solid) and the baseline reports' defended models (dashed), on the same axes."""
    lines = []
    names = {"pipeline": "this bundle: purifier → classifier", "classifier": "this bundle: classifier alone"}
    for model, norms in robust.items():
        lines.append((names[model], norms, _clean(evaluation, model)[1], evaluation.draws(model), "-"))
    for report in baselines:
        model = report["headline"]["model"]
        clean = report["headline"].get("clean_worst_of_n", report["headline"]["clean"])
        lines.append((_baseline_label(report), report["robust"][model], clean, report["headline"].get("draws", 1), "--"))
    figure, axes = plt.subplots(1, 2, figsize=(11, 5))
    for axis, norm, title in ((axes[0], "linf", "L∞ attacks"), (axes[1], "l2", "L2 attacks")):
        for index, (label, norms, clean, draws, style) in enumerate(lines):
            xs, ys, full = _curve(norms, norm, clean)
            color = f"C{index}"
            axis.plot(xs, ys, style, color=color, label=label + (f" (worst of {draws} draws)" if draws > 1 else ""))
            axis.scatter([x for x, f in zip(xs, full) if f], [y for y, f in zip(ys, full) if f], color=color, zorder=3)
            axis.scatter([x for x, f in zip(xs, full) if not f], [y for y, f in zip(ys, full) if not f], facecolors="white", edgecolors=color, zorder=3)
        axis.set(title=f"Robust accuracy under {title}", xlabel="perturbation size ε", ylabel="accuracy (worst case over attacks)", ylim=(0, 1))
        axis.grid(alpha=0.3)
    config = evaluation.config
    headline_attacks = ", ".join(dict.fromkeys(attack_title(u.attack) for u in evaluation.units if u.norm == "linf" and u.eps == HEADLINE["linf"]))
    caption = textwrap.wrap(f"Filled points: clean (ε = 0) and the headline radius ({headline_attacks}; PGD-{config.steps} × EOT-{config.eot}); "
                            f"hollow points: lighter attack (PGD-{config.curve_steps} × EOT-{config.curve_eot}). {len(evaluation.labels)} images; "
                            "baselines (dashed) as in their own reports.", 150)
    figure.text(0.5, 0.01, "\n".join(caption), ha="center", va="bottom", fontsize=7)
    legend_rows = -(-len(lines) // 2)
    bottom = 0.02 + 0.03 * len(caption)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8, frameon=False, bbox_to_anchor=(0.5, bottom))
    figure.tight_layout(rect=(0, bottom + 0.045 * legend_rows, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_corruptions(corruptions: dict, path: Path) -> None:
    names = list(next(iter(corruptions.values()))["per_type"])
    labels = {"pipeline": "purifier → classifier", "classifier": "classifier alone"}
    figure, axis = plt.subplots(figsize=(10, 3.8))
    width = 0.8 / len(corruptions)
    for index, (model, summary) in enumerate(corruptions.items()):
        axis.bar(np.arange(len(names)) + index * width, [summary["per_type"][n] for n in names], width, label=labels[model])
    axis.set_xticks(np.arange(len(names)) + width * (len(corruptions) - 1) / 2, names, rotation=30, ha="right")
    axis.set(title="Accuracy on corrupted images (mean of 3 severities)", ylabel="accuracy", ylim=(0, 1))
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_examples(evaluation: Evaluation, path: Path, count: int = 6) -> None:
    """Clean, adversarial (headline L∞ PGD against the defended model) and purified images, each with the defended model's
    prediction; the purified row is the draw that made the adversarial row's prediction."""
    model_name = "pipeline" if "pipeline" in evaluation.models else "classifier"
    model = evaluation.models[model_name]
    images, labels = evaluation.images[:count], evaluation.labels[:count]
    config = evaluation.config
    stochastic = evaluation.draws(model_name) > 1
    eps = HEADLINE["linf"]
    adversarial = pgd(model, images, labels, eps, steps=config.steps, eot=config.eot if stochastic else 1,
                      generator=torch.Generator().manual_seed(config.seed))
    pipeline = model if isinstance(model, Pipeline) else Pipeline(model)
    rows = []
    for title, batch in (("clean", images), ("adversarial", adversarial)):
        pipeline.reseed(config.seed)
        with torch.no_grad():
            purified = pipeline.purify(batch)
            rows.append((title, batch, pipeline.classifier(purified).argmax(1)))
    if pipeline.purifier is not None:
        rows.append(("purified adversarial", purified, rows[-1][2]))
    names = evaluation.bundle.class_names
    figure, axes = plt.subplots(len(rows), count, figsize=(1.7 * count, 2.0 * len(rows)), squeeze=False)
    for row, (title, batch, predictions) in enumerate(rows):
        for column in range(count):
            axis = axes[row][column]
            picture = batch[column].permute(1, 2, 0).squeeze(-1).numpy()
            axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
            right = int(predictions[column]) == int(labels[column])
            axis.set_title(names[int(predictions[column])], fontsize=7, color="green" if right else "red")
            axis.set_xticks([]), axis.set_yticks([])
        axes[row][0].set_ylabel(title, fontsize=8)
    what = "purifier → classifier" if pipeline.purifier is not None else "classifier"
    figure.suptitle(f"{evaluation.bundle.name}: prediction of the defended model ({what}) under each image, green = correct.\n"
                    f"Adversarial: L∞ ε = {eps:g}, PGD-{config.steps}" + (f" × EOT-{config.eot}" if stochastic else "")
                    + " through the whole defended model; one draw of its random transform shown.", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _png(figure_writer, path: Path, *args) -> None:
    """Draw to a temporary name, then rename: no half-written plots."""
    temporary = path.with_suffix(".tmp.png")
    figure_writer(*args, temporary)
    os.replace(temporary, path)


def write_report(evaluation: Evaluation, out: Path, record: bool = False, baselines: list[Path] = ()) -> dict:
    """Write report.json, report.md and the plots into ``out``; ``baselines``: report directories whose defended models
    are drawn beside this one in accuracy_vs_eps.png."""
    out = Path(out)
    baseline_reports = [json.loads((Path(directory) / "report.json").read_text()) for directory in baselines]
    robust, corruptions = robust_table(evaluation), corruption_summary(evaluation)
    proto = protocol(evaluation)
    head = headline(evaluation, robust, corruptions)
    masking = gradient_masking(evaluation)
    report = {
        "bundle": evaluation.bundle.name, "bundle_path": str(evaluation.bundle.path), "headline": head, "clean": evaluation.results["clean"], "robust": robust,
        "gradient_masking": masking, "corruptions": {"images": evaluation.results["corruptions"]["images"], **corruptions},
        "per_image_worst_case_images": proto["robust_images"], "per_image": per_image(evaluation),
        "clean_per_image": {model: draws for model, draws in evaluation.results["clean_draws"].items() if isinstance(draws, dict)},
        "corruption_per_image": evaluation.results["corruptions_per_image"],
        **({"conversion": evaluation.results["conversion"]} if "conversion" in evaluation.results else {}),
        "wall_time_s": round(evaluation.results["wall_time_s"], 1), "added_wall_time_s": round(added_wall_time(evaluation), 1), "protocol": proto,
    }
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", _markdown(evaluation, robust, corruptions, masking, proto).encode())
    _png(_plot_eps, out / "accuracy_vs_eps.png", evaluation, robust, baseline_reports)
    _png(_plot_corruptions, out / "corruptions.png", corruptions)
    _png(_plot_examples, out / "examples.png", evaluation)
    if record:
        robustness = {**head, "protocol": proto, "wall_time_s": report["wall_time_s"]}
        update_manifest(evaluation.bundle, lambda manifest: manifest.setdefault("metrics", {}).update(robustness=robustness))
    return report


def added_wall_time(evaluation: Evaluation) -> float:
    """Seconds spent on what worst of N, Square and transfer added: catch-up re-attacks and the gradient-free units."""
    results = evaluation.results
    return sum(results[u.key].get("catch_up_seconds", 0.0) + (results[u.key]["seconds"] if u.gradient_free else 0.0) for u in evaluation.units)
