"""Robust early stopping (Rice et al., ICML 2020, "Overfitting in adversarially robust deep learning").

Adversarial training can overfit: robust accuracy on unseen images peaks and then falls while
training accuracy keeps rising (and with few-step attacks it can collapse, "catastrophic
overfitting"). The remedy is model selection on held-out data: keep the last N training images
aside, score every epoch's weights on them under a cheap attack, and ship the best-scoring
epoch's weights,

    θ* = θ_e*,   e* = argmax_e  acc( f_θe, PGD(x_held) ).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from purifier.errors import DataError
from training.loop import TrainState

SCORE = "robust_validation"  # the history key of each validated epoch's score


def check_settings(count: int, queries: int) -> None:
    """Refuse --validate N / --validate-queries Q that cannot work, before any training is spent."""
    if count < 0 or queries < 0:
        raise ValueError("--validate and --validate-queries are counts (0: off), not negative")
    if queries and not count:
        raise ValueError("--validate-queries attacks the images held out by --validate N; pass --validate too")


def hold_out(images: torch.Tensor, labels: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(training images, training labels, held-out images, held-out labels): the last ``count`` images are held out."""
    if count >= len(labels) // 2:
        raise DataError(f"--validate {count} would hold out half or more of the {len(labels)} training images; pass fewer")
    return images[:-count], labels[:-count], images[-count:], labels[-count:]


class BestEpoch:
    """The weights of the epoch with the highest held-out score, kept in the training state (so they are checkpointed
    and survive a resume) as ``<name>_selected`` beside each watched module."""

    def __init__(self, state: TrainState, watched: dict[str, nn.Module], score: Callable[[], float]) -> None:
        self.state, self.watched, self.score = state, watched, score
        for name, module in watched.items():
            state.modules[f"{name}_selected"] = copy.deepcopy(module)

    def check(self) -> float:
        """Score the current weights; they become the selected ones if the score beats every earlier epoch's."""
        value = self.score()
        if value > max((record.get(SCORE, -1.0) for record in self.state.history), default=-1.0):
            for name, module in self.watched.items():
                self.state.modules[f"{name}_selected"].load_state_dict(module.state_dict())
        return value

    def selected(self, name: str) -> nn.Module:
        return self.state.modules[f"{name}_selected"]
