"""The resumable epoch loop every trainer uses: progress bar, per-epoch checkpoint, resume."""

from __future__ import annotations

import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from purifier.progress import progress
from training import distributed
from training.checkpoint import load_checkpoint, save_checkpoint


@dataclass
class TrainState:
    """Everything that changes during training and must survive a restart."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self, fingerprint: dict[str, Any]) -> dict[str, Any]:
        return {
            "fingerprint": fingerprint,
            "epoch": self.epoch,
            "elapsed_s": self.elapsed_s,
            "history": self.history,
            **{f"module.{k}": m.state_dict() for k, m in self.modules.items()},
            **{f"optimizer.{k}": o.state_dict() for k, o in self.optimizers.items()},
            **{f"scheduler.{k}": s.state_dict() for k, s in self.schedulers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.elapsed_s, self.history = state["epoch"], state["elapsed_s"], state["history"]
        for group in ("module", "optimizer", "scheduler"):
            for key, target in getattr(self, f"{group}s").items():
                target.load_state_dict(state[f"{group}.{key}"])


def batches(count: int, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    """Index batches of a permutation that depends only on (seed, epoch), so resumes replay exactly.

    Under torchrun, rank r gets every W-th index of each global batch (a final global batch too
    small to give every rank an image is dropped, so all ranks take the same number of steps).
    """
    rank, size = distributed.world()
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(count, generator=generator)
    for start in range(0, count, batch_size):
        batch = order[start:start + batch_size]
        if size > 1 and len(batch) < size:
            return
        yield batch[rank::size]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of everything random in one epoch: batch order and the trainer's own draws depend only on (seed, epoch)."""
    return seed * 100_003 + epoch


class Epoch:
    """One epoch of a trainer: its batches, the torch generator of its random choices (attack starts, noise), and per-image
    running means of the batch metrics, shown on the progress bar and returned for the history."""

    def __init__(self, count: int, batch_size: int, seed: int, epoch: int, description: str) -> None:
        self.generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        self.bar = progress(batches(count, batch_size, seed, epoch), -(-count // batch_size), description)
        self.sums: dict[str, float] = defaultdict(float)
        self.seen = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.bar)

    def record(self, images: int, **metrics: float) -> None:
        """Add one batch's metrics (batch means), weighted by its number of images."""
        for key, value in metrics.items():
            self.sums[key] += value * images
        self.seen += images
        self.bar.set_postfix({key: f"{value / self.seen:.4f}" for key, value in self.sums.items()}, refresh=False)

    def means(self) -> dict[str, float]:
        return {key: value / max(self.seen, 1) for key, value in self.sums.items()}


def run_epochs(
    state: TrainState,
    epochs: int,
    train_epoch: Callable[[int], dict[str, float]],
    checkpoint_dir: Path,
    fingerprint: dict[str, Any],
    restart: bool = False,
    defaults: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> TrainState:
    """Run ``train_epoch(epoch)`` for the epochs not done yet, checkpointing after each one.

    If ``checkpoint_dir`` holds a checkpoint made with the same ``fingerprint`` the run resumes
    after its last finished epoch (arguments it does not record count as the same at their
    ``defaults``); ``restart`` discards it instead. ``settings`` (unfingerprinted arguments such as
    the precision, which may change between resumes) are recorded in each epoch's history entry;
    entries from before they were recorded take the checkpoint's recorded value, else the default.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if restart and checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)
    main = distributed.is_main()
    saved = load_checkpoint(checkpoint_dir, fingerprint, defaults)
    settings = settings or {}
    if saved is not None:
        state.load_state_dict(saved)
        for entry in state.history:
            for key in settings:
                entry.setdefault(key, saved["fingerprint"].get(key, (defaults or {}).get(key)))
        if main:
            print(f"resuming from {checkpoint_dir} after epoch {state.epoch}/{epochs}", file=sys.stderr)
    distributed.attach(state.modules, state.optimizers)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    while state.epoch < epochs:
        started = time.perf_counter()
        for module in state.modules.values():
            module.train()
        metrics = train_epoch(state.epoch)
        distributed.synchronize(state.modules)
        state.elapsed_s += time.perf_counter() - started
        state.epoch += 1
        state.history.append({"epoch": state.epoch, **settings, **{k: round(v, 5) for k, v in metrics.items()}})
        if main:
            save_checkpoint(checkpoint_dir, state.state_dict(fingerprint))
            summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            print(f"epoch {state.epoch}/{epochs}: {summary} ({state.elapsed_s:.0f}s so far)", file=sys.stderr)
        distributed.barrier()
    for module in state.modules.values():
        module.eval()
    return state
