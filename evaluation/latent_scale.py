"""How far a latent perturbation of a flow moves an image: the guide for choosing IJSAT's η.

    python -m evaluation.latent_scale bundles/fmnist-flow --eta 0.01 0.03 0.1 0.3

For each η, every test image's latent code z = F(x) is moved by a random corner of the L∞ ball
(δz = ±η per dimension) and decoded, and the pixel-space distance ‖clip(F⁻¹(z + δz)) − x‖ is
averaged over the images, in L∞ and L2. An η whose random step already moves pixels further
than the image-space radius ε makes the joint-space threat mostly a larger pixel budget.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from purifier.bundle import load_bundle
from purifier.data import load_split


def pixel_displacement(flow: torch.nn.Module, images: torch.Tensor, eta: float, seed: int = 0) -> dict[str, float]:
    """Mean L∞ and L2 pixel distance of clip(F⁻¹(F(x) + δz)) from x for random-sign δz of size η."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latent = flow.encode(images)
        signs = torch.randint(0, 2, latent.shape, generator=generator) * 2 - 1
        moved = (flow.decode(latent + eta * signs).clamp(0, 1) - images).flatten(1)
    return {"linf": moved.abs().amax(1).mean().item(), "l2": moved.norm(dim=1).mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("flow", type=Path, help="flow bundle from 'purifier train flow'")
    parser.add_argument("--eta", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--images", type=int, default=1000, help="first N test images (default 1000)")
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args()
    bundle = load_bundle(args.flow)
    flow = bundle.flow().requires_grad_(False)
    _, images, _ = load_split(bundle.dataset_kind, args.data_dir, "test", args.images)
    print(f"| η | pixel L∞ (mean) | pixel L2 (mean) |  ({len(images)} test images, {args.flow})\n|---|---|---|")
    for eta in args.eta:
        moved = pixel_displacement(flow, images, eta)
        print(f"| {eta:g} | {moved['linf']:.3f} | {moved['l2']:.3f} |")


if __name__ == "__main__":
    main()
