"""Adversarial Training on Purification, AToP (Lin et al., ICLR 2024), in two stages.

Pre-training: the purifier g learns to restore clean images from randomly transformed ones,

    min_g E_x E_t L_gan+rec(x),   L_gan+rec(x_in) = ‖g(t(x_in)) − x‖₁ + w · (−E[D(g(t(x_in)))])

(see gan.py). Fine-tuning adds the classification loss of the frozen classifier f on
adversarial inputs:

    min_g E_(x,y) E_t [ L_gan+rec(x') + λ · CE(y, f(g(t(x')))) ],
    x' = argmax_{‖x' − x‖∞ ≤ ε} CE(y, f(g(t(x'))))     (FGSM-RS or PGD)

x' is crafted against the *whole* pipeline RT → g → f with the current purifier, fresh
randomness at each attack step, and re-crafted for every batch: not against f alone, the
reference code's weakness. λ is constant or ramps linearly over the fine-tuning epochs.

With ``--attack none --targets classifier`` and the gaussian transform this is denoised
smoothing's denoiser training (Salman et al., NeurIPS 2020): reconstruction plus the stability
objective CE(f(g(x + δ)), f(x)), δ ~ N(0, σ²I), the classifier's own clean prediction as target.

Two additions from adversarial training's recipe, both off by default: a TRADES-style
stability term (Zhang et al., ICML 2019) that pulls the pipeline's prediction on x' towards its
prediction on the clean x under the same transform draw,

    + β · KL( f(g(t(x))) ‖ f(g(t(x'))) )        (--trades-beta β)

and an exponential moving average of the purifier's weights, θ̄ ← d·θ̄ + (1 − d)·θ after every
step (--ema d, e.g. 0.999), which is what the bundle then holds.

Robust early stopping (--validate N, selection.py): the last N training images are held out;
after every fine-tuning epoch the pipeline's accuracy on them under PGD-10 × EOT-2, judged on
the worst of 2 draws (and Square with --validate-queries Q), is recorded, and the bundle holds the
weights of the epoch where it was highest.

Joint fine-tuning (--joint, for a classifier one may retrain, e.g. an adversarially trained one,
as CARSO composes purification with adversarial training): the classifier's weights f are
updated by the same loss, min_{g,f} E [ L_gan+rec(x') + λ · CE(y, f(g(t(x')))) ], x' crafted
against the current g and f; its batch-norm statistics stay frozen.
Both stages run in one resumable loop; ``--purifier BUNDLE`` starts from a pre-trained
purifier instead (pre-training then defaults to 0 epochs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from evaluation.accuracy import accuracy, robust_accuracy
from purifier.bundle import Bundle, load_bundle
from purifier.errors import DataError
from purifier.models import PURIFIERS, build
from purifier.pipeline import Pipeline
from purifier.models.unet import sized_for
from purifier.transforms import NOISELESS_KINDS, RandomTransform, block_size_for
from training.adversarial import adversarial_batch, kl_divergence
from training.common import (
    TrainConfig, classifier_and_training_data, metric, publish, scoring_split, seed_everything, train_epochs, training_record,
)
from training.gan import ReconstructionGAN
from training.loop import Epoch, TrainState
from training.selection import SCORE, BestEpoch, check_settings, hold_out
from training.precision import autocast, prepare

ATTACKS = ("fgsm_rs", "pgd", "none")
TARGETS = ("labels", "classifier")
LAMBDA_SCHEDULES = ("constant", "linear")


@dataclass(kw_only=True)
class AtopConfig(TrainConfig):
    classifier: Path
    purifier: Path | None = None
    pretrain_epochs: int | None = None
    epochs: int = 5
    lr: float = 2e-3
    finetune_lr: float = 5e-4
    transform: str = "noise_mask"
    block_size: int | None = None  # None: scaled with the image (transforms.block_size_for)
    missing_rate: float | None = None  # None: 0.25, or 0 for the gaussian transform (which masks nothing)
    noise_std: float | None = None  # None: 0.1 for the noisy transforms (RT2, RT3), 0.25 for gaussian, 0 for RT1
    masks: int = 1
    gan_weight: float = 0.01
    attack: str = "fgsm_rs"
    eps: float = 0.1
    attack_steps: int = 5
    lam: float = 1.0
    lam_schedule: str = "constant"
    trades_beta: float = 0.0
    ema: float = 0.0
    joint: bool = False
    classifier_lr: float = 1e-4
    validate: int = 0
    validate_queries: int = 0
    targets: str = "labels"

    def __post_init__(self) -> None:
        if self.noise_std is None:
            self.noise_std = 0.0 if self.transform in NOISELESS_KINDS else 0.25 if self.transform == "gaussian" else 0.1
        if self.missing_rate is None:
            self.missing_rate = 0.0 if self.transform == "gaussian" else 0.25
        if self.pretrain_epochs is None:
            self.pretrain_epochs = 0 if self.purifier else 5
        if self.attack not in ATTACKS or self.lam_schedule not in LAMBDA_SCHEDULES or self.targets not in TARGETS:
            raise ValueError(f"attack must be one of {ATTACKS}, lam_schedule one of {LAMBDA_SCHEDULES} and targets one of {TARGETS}")
        if not 0.0 <= self.ema < 1.0 or self.trades_beta < 0:
            raise ValueError("--ema is a decay in [0, 1) (0: off) and --trades-beta a weight ≥ 0")
        check_settings(self.validate, self.validate_queries)
        self.random_transform()  # validates the transform settings before any work starts

    def random_transform(self, shape: tuple[int, int, int] | None = None) -> RandomTransform:
        """The transform for images of ``shape`` (C, H, W); without a shape, only its settings are checked."""
        block_size = self.block_size or (block_size_for(*shape[1:]) if shape else 4)
        return RandomTransform(self.transform, block_size, self.missing_rate, self.noise_std, self.masks)

    def lam_at(self, finetune_epoch: int) -> float:
        """λ for a fine-tuning epoch (0-based)."""
        return self.lam if self.lam_schedule == "constant" else self.lam * (finetune_epoch + 1) / self.epochs


def _cosine(step: int, steps: int, peak: float, warmup: float = 0.05) -> float:
    """Learning rate with a linear warm-up over the first ``warmup`` fraction, then cosine decay to 0."""
    rise = max(1, int(steps * warmup))
    if step < rise:
        return peak * (step + 1) / rise
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - rise) / max(1, steps - rise))))


def _initial_purifier(config: AtopConfig, shape: tuple[int, int, int]):
    """(purifier, architecture config, earlier training records): fresh, or from ``config.purifier``."""
    if config.purifier is None:
        model_config = {"in_channels": shape[0], "widths": list(config.widths)} if config.widths else sized_for(shape)
        return build(PURIFIERS, "unet", model_config), model_config, []
    pretrained = load_bundle(config.purifier)
    if not pretrained.has_purifier:
        raise DataError(f"{config.purifier} has no purifier; pass a bundle written by 'purifier train purifier' or 'purifier train atop'")
    return pretrained.purifier(), pretrained.manifest["purifier"]["config"], pretrained.training_records("purifier")


def train_atop(config: AtopConfig) -> Bundle:
    """Pre-train and/or fine-tune a U-Net purifier for ``config.classifier``; write classifier + purifier as a bundle."""
    seed_everything(config.seed)
    base, data, images, labels = classifier_and_training_data(config)
    if config.validate:
        images, labels, held_images, held_labels = hold_out(images, labels, config.validate)
    transform = config.random_transform(data.input_shape)
    purifier, model_config, earlier_records = _initial_purifier(config, data.input_shape)
    if config.joint and base.manifest["classifier"].get("imported"):
        raise DataError(f"{config.classifier} holds an imported classifier, which the bundle keeps as its ONNX graph; --joint cannot fine-tune it")
    classifier = base.classifier().requires_grad_(config.joint)
    prepare(config.precision, classifier, purifier)
    pipeline = Pipeline(classifier, purifier, transform).eval()
    gan = ReconstructionGAN(data.input_shape[0], config.gan_weight)

    per_epoch = -(-len(labels) // config.batch_size)
    pre_steps, fine_steps = config.pretrain_epochs * per_epoch, config.epochs * per_epoch
    optimizer = torch.optim.Adam(purifier.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (
        _cosine(step, pre_steps, config.lr) if step < pre_steps else _cosine(step - pre_steps, fine_steps, config.finetune_lr)))
    averaged = {"purifier_ema": AveragedModel(purifier, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)} if config.ema else {}
    state = TrainState({"purifier": purifier, **averaged, **gan.modules}, {"purifier": optimizer, **gan.optimizers}, {"purifier": scheduler})
    if config.joint:  # the classifier learns in the fine-tuning stage only (no classification loss before it)
        classifier_optimizer = torch.optim.Adam(classifier.parameters(), lr=1.0)
        state.modules["classifier"], state.optimizers["classifier"] = classifier, classifier_optimizer
        state.schedulers["classifier"] = torch.optim.lr_scheduler.LambdaLR(classifier_optimizer, lambda step: (
            0.0 if step < pre_steps else _cosine(step - pre_steps, fine_steps, config.classifier_lr)))
    total_epochs = config.pretrain_epochs + config.epochs

    def train_epoch(epoch: int) -> dict[str, float]:
        finetuning = epoch >= config.pretrain_epochs
        lam = config.lam_at(epoch - config.pretrain_epochs) if finetuning else 0.0
        rng = np.random.default_rng([config.seed, epoch])
        pipeline.reseed([config.seed, epoch, 1])
        classifier.eval()  # frozen, or under --joint learning with its batch-norm statistics frozen
        stage = f"atop fine-tune {epoch - config.pretrain_epochs + 1}/{config.epochs}" if finetuning else f"purifier pre-train {epoch + 1}/{config.pretrain_epochs}"
        run = Epoch(state, len(labels), config.batch_size, config.seed, stage, streams={"transform": rng, "pipeline": pipeline.rng})
        for index in run:
            clean, target = images[index], labels[index]
            if config.targets == "classifier":  # denoised smoothing's stability objective: agree with f on the clean image
                with torch.no_grad(), autocast(config.precision):
                    target = classifier(clean).argmax(1)
            with autocast(config.precision):
                attack = "standard" if config.attack == "none" else config.attack
                inputs = adversarial_batch(pipeline, clean, target, attack, config.eps, config.attack_steps, run.generator) if finetuning else clean
                mask, noise = (torch.from_numpy(a) for a in transform.sample(len(index), data.input_shape, rng))
                purifier.train()
                purified = transform.purify(purifier, inputs, mask, noise).float()
                loss, parts = gan.generator_loss(purified, clean)
                if finetuning:
                    logits = classifier(purified).float()
                    cross_entropy = F.cross_entropy(logits, target)
                    loss = loss + lam * cross_entropy
                    parts.update(ce=cross_entropy.item(), adversarial_accuracy=float((logits.argmax(1) == target).float().mean()))
                if finetuning and config.trades_beta > 0:
                    clean_logits = classifier(transform.purify(purifier, clean, mask, noise)).float()
                    stability = kl_divergence(logits, F.softmax(clean_logits, dim=1)).mean()
                    loss = loss + config.trades_beta * stability
                    parts.update(kl=stability.item())
            for name in ("purifier", "classifier") if config.joint else ("purifier",):
                state.optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            for name in ("purifier", "classifier") if config.joint else ("purifier",):
                state.optimizers[name].step()
                state.schedulers[name].step()
            if averaged:
                averaged["purifier_ema"].update_parameters(purifier)
            with autocast(config.precision):
                parts.update(gan.discriminator_step(purified, clean))
            purifier.eval()
            run.record(len(index), **parts)
        metrics = {"lambda": lam, **run.means()}
        if finetuning and best is not None:
            metrics[SCORE] = best.check()
        return metrics

    best = None
    if config.validate:  # robust accuracy on the held-out images of the weights the bundle would hold (the averaged ones, with --ema)
        watched = {"purifier": averaged["purifier_ema"].module if averaged else purifier, **({"classifier": classifier} if config.joint else {})}
        best = BestEpoch(state, watched, lambda: robust_accuracy(
            Pipeline(classifier, watched["purifier"], transform), held_images, held_labels, config.eps, steps=10, eot=2, draws=2,
            seed=config.seed, queries=config.validate_queries))
    train_epochs(state, config, total_epochs, train_epoch)
    classifier.requires_grad_(False).eval()
    if best is not None:  # the bundle holds the selected weights
        purifier = best.selected("purifier")
        classifier = (best.selected("classifier") if config.joint else classifier).requires_grad_(False).eval()
    elif averaged:  # the bundle holds the averaged weights
        purifier = averaged["purifier_ema"].module
    purifier.eval()
    test_images, test_labels, protocol = scoring_split(base, config)
    method = ("atop-joint" if config.joint else "atop") if config.epochs > 0 else "reconstruction"
    stage_name = "atop" if config.epochs > 0 else "purifier"
    manifest = {
        "name": config.name or Path(config.out).name,
        "dataset": base.manifest["dataset"],
        "classifier": {**base.manifest["classifier"], **({"fine_tuned": "atop-joint"} if config.joint else {})},
        "purifier": {"architecture": "unet", "config": model_config, "method": method, "random_transform": transform.to_dict()},
        "training": base.training_records("classifier") + earlier_records + [training_record(stage_name, config, state)],
        "metrics": {
            "clean_accuracy_classifier": metric(accuracy(classifier, test_images, test_labels), **protocol),
            "clean_accuracy_pipeline": metric(accuracy(Pipeline(classifier, purifier, transform, seed=0), test_images, test_labels),
                                              **protocol, transform_seed=0),
        },
    }
    return publish(config.out, manifest, {"classifier": classifier, "purifier": purifier})
