"""Top-1 accuracy of a model, and the judgement of a stochastic defence on several fresh draws.

A served stochastic pipeline draws new transform randomness for every request, so an attacker
may resubmit one adversarial image until a draw misclassifies it. ``correct_on_draws`` judges
each image on N draws: draw 0 is the single-draw prediction from ``seed`` (what earlier reports
counted: the stream restarted at ``seed``, one pass over the batches), draws 1 … N−1 are further
passes continuing the same seeded stream. An image is robust only if all N are
correct, so the worst-of-N figure can never exceed the single-draw one.
"""

from __future__ import annotations

import torch
from torch import nn

from purifier.pipeline import Pipeline


def is_stochastic(model: nn.Module) -> bool:
    return isinstance(model, Pipeline) and model.is_stochastic


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` (logits out) in eval mode."""
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(images[start:start + batch_size])
        correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    return correct / max(len(labels), 1)


def robust_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int, eot: int, draws: int,
                    seed: int = 0, queries: int = 0) -> float:
    """Accuracy under L∞ PGD (``steps`` steps, EOT ``eot``) through the whole model in eval mode, judged on the worst of
    ``draws`` draws: the cheap robust check that selects training epochs, not a protocol figure.

    With ``queries`` > 0 the images PGD leaves standing are also attacked with Square (that many
    queries, no gradient) and count only if they survive it too, so weights that merely mask their
    gradients score no better than they are.
    """
    from evaluation.attacks import pgd, square

    model.eval()
    adversarial = pgd(model, images, labels, eps, steps=steps, eot=eot if is_stochastic(model) else 1,
                      generator=torch.Generator().manual_seed(seed))
    robust = correct_on_draws(model, adversarial, labels, seed, draws)[1]
    standing = robust.nonzero().squeeze(1)
    if queries and len(standing):
        found = square(model, images[standing], labels[standing], eps, queries=queries, seed=seed)
        robust[standing] = correct_on_draws(model, found, labels[standing], seed, draws)[1]
    return float(robust.float().mean())


@torch.no_grad()
def correct_on_draws(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, seed: int, draws: int,
                     batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct on draw 0, correct on all ``draws`` draws) per image, as bool tensors.

    A deterministic model is judged once (``draws`` is ignored): every draw would be the same.
    """
    model.eval()
    if isinstance(model, Pipeline):
        model.reseed(seed)
    outcomes = torch.stack([
        torch.cat([model(images[start:start + batch_size]).argmax(1) == labels[start:start + batch_size]
                   for start in range(0, len(labels), batch_size)])
        for _ in range(draws if is_stochastic(model) else 1)
    ])
    return outcomes[0], outcomes.all(0)
