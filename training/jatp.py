"""Joint Adversarial Training based Pre-processing, JATP (Zhou et al., 2021).

A pre-processing network P (the U-Net purifier, without random transform) is trained in front
of a frozen classifier f = head ∘ φ, φ its last feature map:

    x' = argmax_{‖x' − x‖∞ ≤ ε} ‖φ(P(x')) − φ(x)‖₁         full adversarial examples, found in
                                                           feature space against P and f together
    min_P E [ β · ‖φ(P(x')) − φ(x)‖₁ + α · ‖P(x') − x‖₁ ]   feature-similarity adversarial risk
                                                           + pixel-wise loss (for transfer)

x' is re-crafted for every batch with the current P (joint adversarial training); only P is
updated. ``examples="static"`` is the naive approach the paper improves on: x' crafted by PGD
against f alone, independent of P, so P always sees the same kind of examples whatever it
becomes; with β = 0 that is a plain pixel-wise denoiser.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from evaluation.accuracy import accuracy
from evaluation.attacks import pgd
from purifier.bundle import Bundle
from purifier.models import PURIFIERS, build
from purifier.models.unet import sized_for
from purifier.pipeline import Pipeline
from purifier.transforms import RandomTransform
from training.common import (
    TrainConfig, classifier_and_training_data, metric, publish, scoring_split, seed_everything, train_epochs, training_record,
)
from training.loop import Epoch, TrainState
from training.precision import autocast, prepare

EXAMPLES = ("full", "static")


@dataclass(kw_only=True)
class JatpConfig(TrainConfig):
    classifier: Path
    epochs: int = 5
    lr: float = 1e-3
    examples: str = "full"
    eps: float = 0.1
    attack_steps: int = 5
    feature_weight: float = 1.0
    pixel_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.examples not in EXAMPLES:
            raise ValueError(f"examples must be one of {EXAMPLES}")


def feature_distance(features: torch.Tensor, clean_features: torch.Tensor) -> torch.Tensor:
    """Per-image mean |φ(P(x')) − φ(x)|: the feature-similarity adversarial risk."""
    return (features - clean_features).abs().flatten(1).mean(1)


class _ProcessedFeatures(nn.Module):
    """x ↦ φ(P(x)): what the full adversarial example is crafted against."""

    def __init__(self, preprocessor: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.preprocessor, self.classifier = preprocessor, classifier

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier.forward_features(self.preprocessor(image, torch.ones_like(image[:, :1])))


def train_jatp(config: JatpConfig) -> Bundle:
    """Train a U-Net pre-processor for ``config.classifier``; write classifier + pre-processor as a bundle."""
    seed_everything(config.seed)
    base, data, images, labels = classifier_and_training_data(config)
    model_config = {"in_channels": data.input_shape[0], "widths": list(config.widths)} if config.widths else sized_for(data.input_shape)
    preprocessor = build(PURIFIERS, "unet", model_config)
    classifier = base.classifier().requires_grad_(False)
    prepare(config.precision, classifier, preprocessor)
    target = _ProcessedFeatures(preprocessor, classifier).eval()
    optimizer = torch.optim.Adam(preprocessor.parameters(), lr=config.lr)
    steps = config.epochs * -(-len(labels) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.1)
    state = TrainState({"preprocessor": preprocessor}, {"preprocessor": optimizer}, {"preprocessor": scheduler})

    def craft(clean: torch.Tensor, clean_features: torch.Tensor, labels_: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        preprocessor.eval()
        if config.examples == "full":
            return pgd(target, clean, clean_features, config.eps, steps=config.attack_steps, generator=generator, keep_best=False,
                       objective=feature_distance)
        return pgd(classifier, clean, labels_, config.eps, steps=config.attack_steps, generator=generator, keep_best=False)

    def train_epoch(epoch: int) -> dict[str, float]:
        run = Epoch(state, len(labels), config.batch_size, config.seed, f"jatp epoch {epoch + 1}/{config.epochs}")
        for index in run:
            clean, target_labels = images[index], labels[index]
            with autocast(config.precision):
                with torch.no_grad():
                    clean_features = classifier.forward_features(clean).float()
                adversarial = craft(clean, clean_features, target_labels, run.generator)
                preprocessor.train()
                processed = preprocessor(adversarial, torch.ones_like(adversarial[:, :1])).float()
                features = classifier.forward_features(processed).float()
                feature_loss, pixel_loss = feature_distance(features, clean_features).mean(), F.l1_loss(processed, clean)
                loss = config.feature_weight * feature_loss + config.pixel_weight * pixel_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad(), autocast(config.precision):
                correct = float((classifier.forward_head(features).argmax(1) == target_labels).float().mean())
            run.record(len(index), feature=feature_loss.item(), pixel=pixel_loss.item(), adversarial_accuracy=correct)
        return run.means()

    train_epochs(state, config, config.epochs, train_epoch)
    preprocessor.eval()
    test_images, test_labels, protocol = scoring_split(base, config)
    manifest = {
        "name": config.name or Path(config.out).name,
        "dataset": base.manifest["dataset"],
        "classifier": base.manifest["classifier"],
        "purifier": {"architecture": "unet", "config": model_config, "method": "jatp" if config.examples == "full" else "static-preprocessor",
                     "random_transform": RandomTransform().to_dict()},
        "training": base.training_records("classifier") + [training_record("jatp", config, state)],
        "metrics": {
            "clean_accuracy_classifier": metric(accuracy(classifier, test_images, test_labels), **protocol),
            "clean_accuracy_pipeline": metric(accuracy(Pipeline(classifier, preprocessor), test_images, test_labels), **protocol),
        },
    }
    return publish(config.out, manifest, {"classifier": classifier, "purifier": preprocessor})
