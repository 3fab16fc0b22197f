"""The resumable epoch loop every trainer uses: progress bar, checkpoints after each epoch and within it, resume."""

from __future__ import annotations

import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from purifier.errors import PurifierError
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
    # where a checkpoint made within an epoch stopped (Epoch.progress); the next Epoch of that epoch carries on from it
    within_epoch: dict[str, Any] | None = None
    # set by run_epochs while it runs: Epoch offers it its progress after every batch, and it takes it when a checkpoint is due
    save_within_epoch: Callable[[Callable[[], dict[str, Any]]], None] | None = field(default=None, repr=False)

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
        self.within_epoch = state.get("within_epoch")
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
    running means of the batch metrics, shown on the progress bar and returned for the history.

    The epoch is ``state.epoch``. Its random streams are the generator plus any numpy ``streams`` the trainer draws from
    (a transform's masks, say); with them the batches done and the running sums make up its ``progress``, which a
    checkpoint made within the epoch keeps, so a resumed epoch carries on where it stopped and replays exactly.
    """

    def __init__(self, state: TrainState, count: int, batch_size: int, seed: int, description: str,
                 streams: dict[str, np.random.Generator] | None = None) -> None:
        self.state, self.epoch, self.streams = state, state.epoch, streams or {}
        self.generator = torch.Generator().manual_seed(epoch_seed(seed, self.epoch))
        self.sums: dict[str, float] = defaultdict(float)
        self.seen = self.done = 0
        self.total = -(-count // batch_size)
        if state.within_epoch is not None and state.within_epoch["epoch"] == self.epoch:
            self._carry_on(state.within_epoch)
        state.within_epoch = None
        remaining = islice(batches(count, batch_size, seed, self.epoch), self.done, None)
        self.bar = progress(remaining, self.total, description, initial=self.done)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for index in self.bar:
            yield index  # the trainer's loop body runs here; when it asks for the next batch, this one is finished
            self.done += 1
            if self.state.save_within_epoch is not None and self.done < self.total:
                self.state.save_within_epoch(self.progress)

    def record(self, images: int, **metrics: float) -> None:
        """Add one batch's metrics (batch means), weighted by its number of images."""
        for key, value in metrics.items():
            self.sums[key] += value * images
        self.seen += images
        self.bar.set_postfix({key: f"{value / self.seen:.4f}" for key, value in self.sums.items()}, refresh=False)

    def means(self) -> dict[str, float]:
        return {key: value / max(self.seen, 1) for key, value in self.sums.items()}

    def progress(self) -> dict[str, Any]:
        """Where this epoch stands: what a checkpoint made within it keeps (plain types and tensors only)."""
        return {"epoch": self.epoch, "batches": self.done, "generator": self.generator.get_state(),
                "streams": {name: stream.bit_generator.state for name, stream in self.streams.items()},
                "sums": dict(self.sums), "seen": self.seen}

    def _carry_on(self, progress: dict[str, Any]) -> None:
        if set(progress["streams"]) != set(self.streams):
            raise PurifierError(f"the checkpoint stopped within epoch {self.epoch + 1} of a trainer with other random streams "
                                f"({', '.join(sorted(progress['streams'])) or 'none'}); pass --restart to start over")
        self.done, self.seen = progress["batches"], progress["seen"]
        self.sums.update(progress["sums"])
        self.generator.set_state(progress["generator"])
        for name, stream in self.streams.items():
            stream.bit_generator.state = progress["streams"][name]


def run_epochs(
    state: TrainState,
    epochs: int,
    train_epoch: Callable[[int], dict[str, float]],
    checkpoint_dir: Path,
    fingerprint: dict[str, Any],
    restart: bool = False,
    defaults: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    every_s: float = 600.0,
) -> TrainState:
    """Run ``train_epoch(epoch)`` for the epochs not done yet, checkpointing after each one and, within an epoch, after the
    first batch that ends ``every_s`` seconds or more after the last checkpoint (one process only; under torchrun, after
    each epoch only).

    If ``checkpoint_dir`` holds a checkpoint made with the same ``fingerprint`` the run resumes
    where it stopped, within an epoch too (arguments it does not record count as the same at their
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
            within = f", batch {state.within_epoch['batches']} of epoch {state.epoch + 1}" if state.within_epoch else ""
            print(f"resuming from {checkpoint_dir} after epoch {state.epoch}/{epochs}{within}", file=sys.stderr)
    distributed.attach(state.modules, state.optimizers)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    last_saved = time.perf_counter()

    def save_within_epoch(progress: Callable[[], dict[str, Any]]) -> None:
        nonlocal last_saved
        if time.perf_counter() - last_saved >= every_s:
            save_checkpoint(checkpoint_dir, {**state.state_dict(fingerprint), "within_epoch": progress(),
                                             "elapsed_s": state.elapsed_s + time.perf_counter() - started})
            last_saved = time.perf_counter()

    state.save_within_epoch = save_within_epoch if distributed.world()[1] == 1 else None
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
            last_saved = time.perf_counter()
            summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            print(f"epoch {state.epoch}/{epochs}: {summary} ({state.elapsed_s:.0f}s so far)", file=sys.stderr)
        distributed.barrier()
    state.save_within_epoch = None
    for module in state.modules.values():
        module.eval()
    return state
