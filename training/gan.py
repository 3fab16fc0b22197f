"""The purifier's generative loss L_gan+rec of AToP (Lin et al., ICLR 2024), with a hinge GAN.

The purifier g is the generator; a small patch discriminator D judges its outputs:

    L_D       = E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̂))]          x̂ = g(t(x_in)), x clean
    L_gan+rec = ‖x̂ − x‖₁ + w · (−E[D(x̂)])

(hinge loss of Lim & Ye, 2017, with spectral normalisation in D, Miyato et al., ICLR 2018).
With w = 0 the loss is plain L1 reconstruction and no discriminator exists. D is only a
training aid: it is checkpointed for resumes but never written to a bundle.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm


class PatchDiscriminator(nn.Module):
    """Spectrally normalised conv net mapping (N, C, H, W) images to (N, 1, H/4, W/4) realness scores."""

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            spectral_norm(nn.Conv2d(in_channels, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * width, 1, 3, padding=1)),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layers(image)


class ReconstructionGAN:
    """L_gan+rec for the generator and the hinge update of D; ``modules``/``optimizers`` go into the TrainState."""

    def __init__(self, in_channels: int, weight: float, lr: float = 2e-4) -> None:
        self.weight = weight
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        if weight > 0:
            self.discriminator = PatchDiscriminator(in_channels)
            self.modules["discriminator"] = self.discriminator
            self.optimizers["discriminator"] = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))

    def generator_loss(self, purified: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """‖x̂ − x‖₁ + w · (−E[D(x̂)]), and its parts for the training log."""
        l1 = F.l1_loss(purified, clean)
        if self.weight == 0:
            return l1, {"l1": l1.item()}
        self.discriminator.requires_grad_(False)
        adversarial = -self.discriminator(purified).mean()
        self.discriminator.requires_grad_(True)
        return l1 + self.weight * adversarial, {"l1": l1.item(), "gan_g": adversarial.item()}

    def discriminator_step(self, purified: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
        """One hinge-loss update of D on real (clean) and fake (purified, detached) images."""
        if self.weight == 0:
            return {}
        loss = F.relu(1 - self.discriminator(clean)).mean() + F.relu(1 + self.discriminator(purified.detach())).mean()
        optimizer = self.optimizers["discriminator"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"gan_d": loss.item()}
