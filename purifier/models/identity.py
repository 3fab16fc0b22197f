"""The identity purifier: no network, the transformed image goes straight to the classifier.

It makes a classifier trained with Gaussian noise augmentation (``purifier train classifier
--method gaussian``) a bundle with the gaussian random transform, i.e. randomized smoothing's
base classifier f(x) = classifier(clip(x + δ)) without a denoiser, the control of denoised
smoothing. Same interface as every purifier: ``forward(image, mask) -> image``.

>>> Identity()(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2)).shape
torch.Size([1, 1, 2, 2])
"""

from __future__ import annotations

import torch
from torch import nn


class Identity(nn.Module):
    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return image
