"""Networks, random transforms and the differentiable Pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from purifier.models.resnet import ResNetSmall
from purifier.models.unet import UNet
from purifier.pipeline import Pipeline
from purifier.transforms import RandomTransform


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_networks_accept_grey_and_colour(channels, size):
    classifier, purifier = ResNetSmall(in_channels=channels), UNet(in_channels=channels)
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        purified = purifier(x, torch.ones(2, 1, size, size))
    assert purified.shape == x.shape and 0 <= float(purified.min()) and float(purified.max()) <= 1
    assert classifier(purified).shape == (2, 10)
    assert classifier.forward_features(x).shape[1] == classifier.num_features


def test_block_mask_statistics():
    transform = RandomTransform("noise_mask", block_size=4, missing_rate=0.25, noise_std=0.1)
    mask, noise = transform.sample(500, (1, 28, 28), np.random.default_rng(0))
    assert mask.shape == (500, 1, 28, 28) and noise.shape == (500, 1, 28, 28)
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert abs((1 - mask.mean()) - 0.25) < 0.01 and abs(noise.std() - 0.1) < 0.005
    blocks = mask[:, 0].reshape(500, 7, 4, 7, 4)
    assert (blocks.min(axis=(2, 4)) == blocks.max(axis=(2, 4))).all()  # constant within a block


def test_apply_masks_noisy_image():
    x = torch.full((1, 1, 4, 4), 0.5)
    mask = torch.tensor([[[[1, 1, 0, 0]] * 4]], dtype=torch.float32)
    out = RandomTransform.apply(x, mask, torch.full_like(x, 0.7))
    assert torch.equal(out, mask * 1.0)  # 0.5 + 0.7 clipped to 1, then masked


def test_rt3_masks_partition_the_dropped_blocks():
    transform = RandomTransform("noise_multimask", block_size=4, missing_rate=0.25, noise_std=0.1, masks=4)
    mask, noise = transform.sample(200, (1, 28, 28), np.random.default_rng(0))
    assert mask.shape == (200, 4, 28, 28) and noise.shape == (200, 1, 28, 28)
    dropped = 1 - mask
    assert (dropped.sum(axis=1) == 1).all()  # N · rate = 1: every pixel is inpainted by exactly one view
    assert np.allclose(dropped.mean(axis=(0, 2, 3)), 0.25, atol=0.02)  # each view drops its share


def test_rt3_takes_each_pixel_from_the_view_that_inpainted_it():
    class Marker(torch.nn.Module):
        """g(x, m) = 1 − m: a 'purifier' that marks the pixels it had to fill in."""

        def forward(self, image, mask):
            return (1 - mask).expand_as(image)

    transform = RandomTransform("noise_multimask", block_size=2, missing_rate=0.25, noise_std=0.0, masks=2)
    mask, noise = (torch.from_numpy(a) for a in transform.sample(8, (1, 8, 8), np.random.default_rng(1)))
    combined = RandomTransform.purify(Marker(), torch.rand(8, 1, 8, 8), mask, noise)
    dropped_somewhere = (1 - mask).sum(1, keepdim=True)
    assert 0 < float(dropped_somewhere.mean()) < 1  # half the blocks are never dropped (2 · 0.25 < 1)
    # Inpainted pixels come from the view that dropped them (value 1); the others average views that kept them (0).
    assert torch.equal(combined, dropped_somewhere)


def test_rt3_rejects_overlapping_settings():
    with pytest.raises(ValueError, match="RT3"):
        RandomTransform("noise_multimask", missing_rate=0.5, masks=3)
    with pytest.raises(ValueError, match="RT3"):
        RandomTransform("noise_mask", masks=2)


def test_identity_transform_samples_nothing():
    mask, noise = RandomTransform().sample(3, (1, 8, 8), np.random.default_rng(0))
    assert (mask == 1).all() and (noise == 0).all()


def _pipeline(seed=0):
    torch.manual_seed(0)
    return Pipeline(ResNetSmall(), UNet(), RandomTransform("noise_mask", noise_std=0.1), seed=seed).eval()


def test_pipeline_seeding_is_explicit():
    x = torch.rand(4, 1, 28, 28)
    a, b, c = _pipeline(seed=1), _pipeline(seed=1), _pipeline(seed=2)
    first = a(x)
    assert torch.equal(first, b(x)) and not torch.equal(first, c(x))
    assert not torch.equal(first, a(x))  # the stream moves on: fresh randomness per call (EOT)
    a.reseed(1)
    assert torch.equal(first, a(x))


def test_full_gradient_flows_through_transform_purifier_and_classifier():
    pipeline = _pipeline()
    x = torch.rand(3, 1, 28, 28, requires_grad=True)
    mask, noise = pipeline.sample(3, (1, 28, 28))
    logits, _ = pipeline.forward_with(x, mask, noise)
    logits.logsumexp(1).sum().backward()
    grad = x.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # Dropped pixels get no gradient through the transform, but kept pixels do (via the purifier).
    kept, dropped = grad[mask.expand_as(grad) == 1], grad[mask.expand_as(grad) == 0]
    assert kept.abs().sum() > 0 and dropped.abs().sum() == 0


def test_pipeline_without_purifier_is_the_classifier():
    classifier = ResNetSmall().eval()
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(Pipeline(classifier)(x), classifier(x))
    assert not Pipeline(classifier).is_stochastic and _pipeline().is_stochastic
