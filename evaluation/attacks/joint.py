"""Joint-space PGD: IJSAT's threat model (Lau et al., TPAMI 2023), an image-space perturbation
plus a perturbation of the image's latent code under a normalizing flow F:

    x' = clip(F⁻¹(F(x) + δz) + δ, 0, 1),   ‖δ‖∞ ≤ ε,   ‖δz‖∞ ≤ η

Both perturbations start uniformly at random in their balls and take signed-gradient steps of
2.5·radius/steps on cross-entropy (EOT over a stochastic model's randomness, as in pgd.py); each
image's strongest iterate is returned. δz moves x along the data manifold the flow learned
(off-manifold in pixel space, on-manifold in shape), so it reaches images an L∞ ball does not.

>>> x_adv = joint_pgd(model, flow, images, labels, eps=0.1, eta=JOINT_ETA, steps=100)
"""

from __future__ import annotations

import torch
from torch import nn

from evaluation.attacks.pgd import cross_entropy

# The latent radius IJSAT trains with and the evaluation attacks with, one threat for both. On
# bundles/fmnist-flow a random step of this size moves pixels by about half of ε = 0.1 in L∞
# (python -m evaluation.latent_scale); 0.1 moved them by 0.18 and IJSAT training stayed at chance.
JOINT_ETA = 0.03


def joint_pgd(
    model: nn.Module,
    flow: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    eta: float,
    steps: int = 10,
    eot: int = 1,
    generator: torch.Generator | None = None,
    keep_best: bool = True,
) -> torch.Tensor:
    """Adversarial images (N, C, H, W) in [0, 1] under the joint-space threat (ε image, η latent)."""
    with torch.no_grad():
        latent = flow.encode(images)
    image_delta = (torch.rand(images.shape, generator=generator) * 2 - 1) * eps
    latent_delta = (torch.rand(latent.shape, generator=generator) * 2 - 1) * eta
    best, best_loss = images.clone(), torch.full((len(images),), -float("inf"))
    for step in range(steps + 1):
        image_delta.requires_grad_(True)
        latent_delta.requires_grad_(True)
        decoded = flow.decode(latent + latent_delta)
        adversarial = (decoded + image_delta).clamp(0, 1)
        total = torch.zeros(len(images))
        for _ in range(eot):
            loss = cross_entropy(model(adversarial), labels)
            total += loss.detach()
            loss.sum().backward(retain_graph=True)
        with torch.no_grad():
            improved = total > best_loss
            best[improved], best_loss[improved] = adversarial[improved], total[improved]
            if step == steps:
                break
            # As in pgd.py, δ is re-read from the clipped image, so no pixel stays stuck outside [0, 1].
            stepped = (decoded + image_delta + 2.5 * eps / steps * image_delta.grad.sign()).clamp(0, 1)
            image_delta = (stepped - decoded).clamp(-eps, eps)
            latent_delta = (latent_delta + 2.5 * eta / steps * latent_delta.grad.sign()).clamp(-eta, eta)
    if keep_best:
        return best.detach()
    with torch.no_grad():
        return (flow.decode(latent + latent_delta) + image_delta).clamp(0, 1)
