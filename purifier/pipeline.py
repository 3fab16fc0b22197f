"""The defended model as one differentiable module: random transform -> purifier -> classifier.

``Pipeline(x)`` maps float NCHW images in [0, 1] to logits, sampling fresh transform
randomness on every call from its own seeded generator, so any attack library can attack the
whole system end to end (gradients flow through the transform, purifier and classifier) and
EOT is simply repeated calls. ``forward_with(x, mask, noise)`` runs it on given randomness,
the form exported to ONNX.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from purifier.transforms import RandomTransform


class Pipeline(nn.Module):
    def __init__(
        self,
        classifier: nn.Module,
        purifier: nn.Module | None = None,
        transform: RandomTransform = RandomTransform(),
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.purifier = purifier
        self.transform = transform
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """Restart the transform's random stream (``None``: from OS entropy)."""
        self.rng = np.random.default_rng(seed)

    def sample(self, batch: int, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        mask, noise = self.transform.sample(batch, shape, self.rng)
        return torch.from_numpy(mask), torch.from_numpy(noise)

    def purify_with(self, image: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """g(t(x)) for given mask and noise; the identity when there is no purifier."""
        if self.purifier is None:
            return image
        return RandomTransform.purify(self.purifier, image, mask, noise)

    def purify(self, image: torch.Tensor) -> torch.Tensor:
        """g(t(x)) with freshly sampled randomness."""
        mask, noise = self.sample(image.shape[0], tuple(image.shape[1:]))
        return self.purify_with(image, mask.to(image.device), noise.to(image.device))

    def forward_with(self, image: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits f(g(t(x))), purified g(t(x))) for given randomness."""
        purified = self.purify_with(image, mask, noise)
        return self.classifier(purified), purified

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purify(image))

    @property
    def is_stochastic(self) -> bool:
        return self.purifier is not None and self.transform.kind != "none"
