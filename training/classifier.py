"""Classifier training: standard, min_θ E_(x,y) CE(f_θ(x), y), or adversarial (see adversarial.py,
and ijsat.py for IJSAT's joint-space Robust Mixup), or with Gaussian noise augmentation,
min_θ E_(x,y) E_δ CE(f_θ(clip(x + δ)), y), δ ~ N(0, σ²I) (Cohen et al., ICML 2019): the classifier
of randomized smoothing, bundled with the identity purifier and the gaussian random transform so
that ``purifier certify`` certifies it.

The baselines every defence is measured against, and the classifier a purifier is put in
front of. SGD with Nesterov momentum and a one-cycle learning-rate schedule; with --validate N,
robust early stopping (selection.py) on L∞ PGD-10 accuracy of the last N training images (then
Square with --validate-queries Q, which gradient masking cannot fool).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from evaluation.accuracy import accuracy, robust_accuracy
from evaluation.attacks import JOINT_ETA
from purifier.bundle import Bundle, load_bundle
from purifier.data import load_split
from purifier.errors import PurifierError
from purifier.models import CLASSIFIERS, build
from purifier.models.identity import Identity
from purifier.transforms import RandomTransform
from training.adversarial import adversarial_batch, trades_loss
from training.common import (
    TrainConfig, channel_stats, dataset_entry, metric, publish, seed_everything, train_epochs, training_record,
)
from training.ijsat import robust_mixup_batch
from training.loop import Epoch, TrainState
from training.selection import SCORE, BestEpoch, check_settings, hold_out
from training.precision import autocast, prepare


@dataclass(kw_only=True)
class ClassifierConfig(TrainConfig):
    dataset: str = "fashion-mnist"
    weight_decay: float = 5e-4
    method: str = "standard"
    eps: float = 0.1
    attack_steps: int = 10
    flow: Path | None = None
    eta: float = JOINT_ETA
    mixup_alpha: float = 1.0
    beta: float = 6.0  # TRADES' weight of the boundary term
    clean_weight: float = 0.0  # IJSAT: weight of the clean-interpolation term
    noise_std: float = 0.25  # method gaussian: σ of the noise augmentation (and of the smoothing it is certified with)
    init: Path | None = None  # start from this bundle's classifier (e.g. IJSAT on top of a PGD-AT classifier)
    validate: int = 0  # hold out the last N training images and bundle the epoch with the best robust accuracy on them
    validate_queries: int = 0  # and attack what PGD leaves standing there with Square, this many queries

    def __post_init__(self) -> None:
        if (self.method == "ijsat") != (self.flow is not None):
            raise ValueError("IJSAT training needs --flow BUNDLE (a flow from 'purifier train flow'), and only IJSAT uses a flow")
        if self.clean_weight and self.method != "ijsat":
            raise ValueError("--clean-weight is IJSAT's clean-interpolation term; other methods have none")
        if self.widths and min(self.widths[:-1]) < 8:  # they feed the stride-2 1x1 shortcut convolutions
            raise ValueError("--widths below 8 before the last stage crash, or corrupt the gradients of, stride-2 1x1 convolutions "
                             "on AVX2 CPUs (oneDNN issue uxlfoundation/oneDNN#6035); use 8 or more")
        check_settings(self.validate, self.validate_queries)


def _starting_point(config: ClassifierConfig, data, images: torch.Tensor) -> tuple[dict, dict | None]:
    """(ResNetSmall config, initial weights): fresh for the data, or those of ``--init``'s classifier."""
    if config.init is None:
        mean, std = channel_stats(images)
        return {"in_channels": data.input_shape[0], "num_classes": len(data.class_names),
                "widths": list(config.widths or (16, 32, 64)), "mean": mean, "std": std}, None
    source = load_bundle(config.init)
    entry = source.manifest.get("classifier") or {}
    if entry.get("architecture") != "resnet_small":
        raise PurifierError(f"--init {config.init}: only a resnet_small classifier can be trained further, not {entry.get('architecture')!r}")
    if config.widths and list(config.widths) != entry["config"]["widths"]:
        raise PurifierError(f"--init {config.init} has widths {entry['config']['widths']}; drop --widths or pass those")
    if entry["config"]["num_classes"] != len(data.class_names) or entry["config"]["in_channels"] != data.input_shape[0]:
        raise PurifierError(f"--init {config.init} was trained for other images or classes than this data set's; pass a classifier of this data set")
    return dict(entry["config"]), source.classifier().state_dict()


def train_classifier(config: ClassifierConfig) -> Bundle:
    """Train a ResNetSmall classifier and write it as a bundle (no purifier) to ``config.out``."""
    seed_everything(config.seed)
    data, images, labels = load_split(config.dataset, config.data_dir, "train", config.limit)
    if config.validate:
        images, labels, held_images, held_labels = hold_out(images, labels, config.validate)
    model_config, weights = _starting_point(config, data, images)
    model = build(CLASSIFIERS, "resnet_small", model_config)
    if weights is not None:
        model.load_state_dict(weights)
    prepare(config.precision, model)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(labels) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.15)
    state = TrainState({"classifier": model}, {"classifier": optimizer}, {"classifier": scheduler})
    flow = load_bundle(config.flow).flow().requires_grad_(False) if config.flow else None

    def loss_and_logits(index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, logits, targets) of one batch: hard labels, or IJSAT's mixed soft labels."""
        if config.method == "trades":
            loss, logits = trades_loss(model, images[index], labels[index], config.eps, config.attack_steps, config.beta, generator)
            return loss, logits, labels[index]
        if config.method == "gaussian":
            noisy = torch.clamp(images[index] + config.noise_std * torch.randn(images[index].shape, generator=generator), 0, 1)
            logits = model(noisy)
            return F.cross_entropy(logits.float(), labels[index]), logits, labels[index]
        if flow is None:
            inputs = adversarial_batch(model, images[index], labels[index], config.method, config.eps, config.attack_steps, generator)
            logits = model(inputs)
            return F.cross_entropy(logits.float(), labels[index]), logits, labels[index]
        adversarial, mixed, targets = robust_mixup_batch(model, flow, images[index], labels[index], len(data.class_names), config.eps,
                                                         config.eta, config.attack_steps, config.mixup_alpha, generator)
        logits = model(adversarial)
        loss = F.cross_entropy(logits.float(), targets)
        if config.clean_weight:
            loss = loss + config.clean_weight * F.cross_entropy(model(mixed).float(), targets)
        return loss, logits, targets

    def train_epoch(epoch: int) -> dict[str, float]:
        run = Epoch(state, len(labels), config.batch_size, config.seed, f"classifier epoch {epoch + 1}/{config.epochs}")
        for index in run:
            with autocast(config.precision):
                loss, logits, targets = loss_and_logits(index, run.generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            dominant = targets if targets.dim() == 1 else targets.argmax(1)  # IJSAT: the label with the larger mixing weight
            run.record(len(index), loss=loss.item(), train_accuracy=float((logits.argmax(1) == dominant).float().mean()))
        return {**run.means(), **({SCORE: best.check()} if best is not None else {})}

    best = None
    if config.validate:  # run_epochs puts the model back in train mode at the start of every epoch
        best = BestEpoch(state, {"classifier": model}, lambda: robust_accuracy(
            model, held_images, held_labels, config.eps, steps=10, eot=1, draws=1, seed=config.seed,
            queries=config.validate_queries))
    train_epochs(state, config, config.epochs, train_epoch)
    if best is not None:  # the bundle holds the selected weights
        model = best.selected("classifier").eval()
    test, test_images, test_labels = load_split(config.dataset, config.data_dir, "test", config.test_limit)
    classifier_entry = {"architecture": "resnet_small", "config": model_config, "method": config.method}
    if config.method not in ("standard", "gaussian"):
        classifier_entry.update(eps=config.eps, attack_steps=1 if config.method == "fgsm_rs" else config.attack_steps)
    if config.method == "trades":
        classifier_entry.update(beta=config.beta)
    if flow is not None:
        classifier_entry.update(eta=config.eta, mixup_alpha=config.mixup_alpha, flow=load_bundle(config.flow).name, clean_weight=config.clean_weight)
    if config.init is not None:
        classifier_entry.update(init=load_bundle(config.init).name)
    manifest = {
        "name": config.name or Path(config.out).name,
        "dataset": dataset_entry(data, config.data_dir),
        "classifier": classifier_entry,
        "purifier": None if config.method != "gaussian" else {
            "architecture": "identity", "config": {"in_channels": data.input_shape[0]}, "method": "none",
            "random_transform": RandomTransform("gaussian", missing_rate=0.0, noise_std=config.noise_std).to_dict()},
        "training": [training_record("classifier", config, state)],
        "metrics": {"clean_accuracy_classifier": metric(accuracy(model, test_images, test_labels), split="test", images=len(test))},
    }
    models = {"classifier": model} if config.method != "gaussian" else {"classifier": model, "purifier": Identity(data.input_shape[0])}
    return publish(config.out, manifest, models)
