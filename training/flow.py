"""Maximum-likelihood training of the Glow flow, IJSAT's exact manifold model (Lau et al., TPAMI 2023).

    min_F E_x [ −log p_F(x̃) ],   x̃ = x + u/256, u ~ U(0, 1)^D   (uniform dequantisation)
    bits/dim = (−log p_F(x̃) + D · log 256) / (D · log 2)

where p_F(x̃) = N(F(x̃); 0, I) · |det ∂F/∂x̃| and x ∈ [0, 1] has 256 levels, so the bits/dim
is that of the discrete 8-bit images (8 for a uniform model). Adam with warm-up and
gradient-norm clipping; the bundle holds the flow alone (role ``flow``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from purifier.bundle import Bundle
from purifier.data import load_split
from purifier.models import FLOWS, build
from training.common import TrainConfig, dataset_entry, metric, publish, seed_everything, train_epochs, training_record
from training.loop import Epoch, TrainState


@dataclass(kw_only=True)
class FlowConfig(TrainConfig):
    dataset: str = "fashion-mnist"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    levels: int = 2
    steps: int = 4
    hidden: int = 64

    def __post_init__(self) -> None:
        if self.precision != "fp32":
            raise ValueError("the flow trains in fp32 only: its log-determinants lose too much in bf16; drop --precision")


def bits_per_dim(flow: torch.nn.Module, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-image bits/dim of 8-bit ``images`` dequantised with ``noise`` ∈ [0, 1)."""
    dims = images[0].numel()
    log_density = flow.log_prob(images + noise / 256.0)
    return (-log_density + dims * math.log(256.0)) / (dims * math.log(2.0))


@torch.no_grad()
def test_bits_per_dim(flow: torch.nn.Module, images: torch.Tensor, seed: int = 0, batch_size: int = 500) -> float:
    flow.eval()
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        total += float(bits_per_dim(flow, batch, torch.rand(batch.shape, generator=generator)).sum())
    return total / len(images)


def train_flow(config: FlowConfig) -> Bundle:
    """Train a Glow flow on ``config.dataset`` and write it as a flow bundle to ``config.out``."""
    seed_everything(config.seed)
    data, images, _ = load_split(config.dataset, config.data_dir, "train", config.limit)
    channels, height, width = data.input_shape
    if height != width or height % (2 ** config.levels):
        raise ValueError(f"the flow needs square images with sides divisible by {2 ** config.levels}; got {height}x{width}")
    model_config = {"in_channels": channels, "levels": config.levels, "steps": config.steps, "hidden": config.hidden, "image_size": height}
    flow = build(FLOWS, "glow", model_config)
    optimizer = torch.optim.Adam(flow.parameters(), lr=config.lr)
    per_epoch = -(-len(images) // config.batch_size)
    warmup = min(500, per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    state = TrainState({"flow": flow}, {"flow": optimizer}, {"flow": scheduler})

    def train_epoch(epoch: int) -> dict[str, float]:
        run = Epoch(state, len(images), config.batch_size, config.seed, f"flow epoch {epoch + 1}/{config.epochs}")
        for index in run:
            batch = images[index]
            loss = bits_per_dim(flow, batch, torch.rand(batch.shape, generator=run.generator)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 50.0)
            optimizer.step()
            scheduler.step()
            run.record(len(index), bits_per_dim=loss.item())
        return run.means()

    train_epochs(state, config, config.epochs, train_epoch)
    test, test_images, _ = load_split(config.dataset, config.data_dir, "test", config.test_limit)
    manifest = {
        "name": config.name or Path(config.out).name,
        "dataset": dataset_entry(data, config.data_dir),
        "classifier": None,
        "purifier": None,
        "flow": {"architecture": "glow", "config": model_config},
        "training": [training_record("flow", config, state)],
        "metrics": {"test_bits_per_dim": metric(test_bits_per_dim(flow, test_images), split="test", images=len(test), dequantization_seed=0)},
    }
    return publish(config.out, manifest, {"flow": flow})
