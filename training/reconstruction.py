"""Purifier pre-training by reconstruction (AToP's first stage, Lin et al., ICLR 2024).

    min_θ E_x E_t ‖g_θ(t(x)) − x‖₁

The purifier g sees a randomly transformed clean image t(x) (block masking, optionally
after Gaussian noise) and learns to restore x. Adam, cosine learning-rate schedule. The
result is bundled with the (frozen, unchanged) classifier it will sit in front of.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from purifier.bundle import Bundle, load_bundle
from purifier.errors import DataError
from purifier.models import PURIFIERS, build
from purifier.pipeline import Pipeline
from purifier.transforms import RandomTransform
from training.common import (
    TrainConfig, accuracy, checkpoint_dir_for, dataset_kind, fingerprint, load_split, metric, publish, seed_everything, training_record,
)
from training.loop import TrainState, batches, progress, run_epochs


@dataclass(kw_only=True)
class ReconstructionConfig(TrainConfig):
    classifier: Path
    epochs: int = 5
    lr: float = 2e-3
    transform: str = "noise_mask"
    block_size: int = 4
    missing_rate: float = 0.25
    noise_std: float = 0.1


def train_reconstruction(config: ReconstructionConfig) -> Bundle:
    """Train a U-Net purifier on ``config.classifier``'s data set; write classifier + purifier as a bundle."""
    seed_everything(config.seed)
    base = load_bundle(config.classifier)
    data, images, _ = load_split(dataset_kind(base), config.data_dir, "train", config.limit)
    if tuple(data.input_shape) != base.input_shape:
        raise DataError(f"data images are {data.input_shape} but classifier bundle {config.classifier} expects {base.input_shape}; use the classifier's data")
    transform = RandomTransform(config.transform, config.block_size, config.missing_rate, config.noise_std)
    model_config = {"in_channels": data.input_shape[0], "widths": list(config.widths)}
    purifier = build(PURIFIERS, "unet", model_config)
    optimizer = torch.optim.Adam(purifier.parameters(), lr=config.lr)
    steps = config.epochs * -(-len(images) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.1)
    state = TrainState({"purifier": purifier}, {"purifier": optimizer}, {"purifier": scheduler})

    def train_epoch(epoch: int) -> dict[str, float]:
        rng = np.random.default_rng([config.seed, epoch])
        total, seen = 0.0, 0
        count = -(-len(images) // config.batch_size)
        bar = progress(batches(len(images), config.batch_size, config.seed, epoch), count, f"purifier epoch {epoch + 1}/{config.epochs}")
        for index in bar:
            clean = images[index]
            mask, noise = (torch.from_numpy(a) for a in transform.sample(len(index), data.input_shape, rng))
            loss = F.l1_loss(purifier(transform.apply(clean, mask, noise), mask), clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(index)
            seen += len(index)
            bar.set_postfix(l1=f"{total / seen:.4f}", refresh=False)
        return {"l1": total / seen}

    run_epochs(state, config.epochs, train_epoch, checkpoint_dir_for(config.out), fingerprint(config), config.restart)
    classifier = base.classifier()
    test, test_images, test_labels = load_split(dataset_kind(base), config.data_dir, "test")
    pipeline = Pipeline(classifier, purifier, transform, seed=0)
    protocol = {"split": "test", "images": len(test)}
    manifest = {
        "name": config.name or Path(config.out).name,
        "dataset": base.manifest["dataset"],
        "classifier": base.manifest["classifier"],
        "purifier": {"architecture": "unet", "config": model_config, "method": "reconstruction", "random_transform": transform.to_dict()},
        "training": base.manifest["training"] + [training_record("purifier", config, state)],
        "metrics": {
            "clean_accuracy_classifier": metric(accuracy(classifier, test_images, test_labels), **protocol),
            "clean_accuracy_pipeline": metric(accuracy(pipeline, test_images, test_labels), **protocol, transform_seed=0),
        },
    }
    return publish(config.out, manifest, {"classifier": classifier, "purifier": purifier})
