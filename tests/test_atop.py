"""`purifier train atop`: GAN pre-training, adversarial fine-tuning against the pipeline, RT3, export."""

from __future__ import annotations

import json

import pytest
import torch

from cli.main import main
from purifier.assets import CHECKOUT_BUNDLES
from purifier.bundle import load_bundle
from training.atop import AtopConfig, train_atop
from training.gan import ReconstructionGAN


def test_fine_tuning_starts_from_a_pretrained_purifier_and_keeps_its_record(tiny_bundle, tmp_path):
    bundle = train_atop(AtopConfig(out=tmp_path / "atop", classifier=tiny_bundle.path, purifier=tiny_bundle.path, epochs=1,
                                   attack="pgd", attack_steps=2, limit=256, test_limit=500, command="test"))
    manifest = bundle.manifest
    assert manifest["purifier"]["method"] == "atop"
    assert [record["stage"] for record in manifest["training"]] == ["classifier", "purifier", "atop"]
    (epoch,) = manifest["training"][-1]["history"]  # --purifier: no pre-training epochs by default
    assert epoch["lambda"] == 1.0 and {"l1", "gan_g", "gan_d", "ce", "adversarial_accuracy"} <= set(epoch)
    before, after = tiny_bundle.purifier().state_dict(), bundle.purifier().state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert not (tmp_path / ".atop.checkpoint").exists()


def test_cli_trains_an_rt3_pipeline_that_exports_with_parity(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "rt3"
    main(["train", "atop", "--classifier", str(tiny_bundle.path), "--pretrain-epochs", "1", "--epochs", "1", "--limit", "128", "--test-limit", "500",
          "--transform", "noise_multimask", "--masks", "2", "--lam-schedule", "linear", "--out", str(out)])
    main(["export", str(out)])
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["purifier"]["random_transform"] == {"kind": "noise_multimask", "block_size": 4, "missing_rate": 0.25, "noise_std": 0.1, "masks": 2}
    history = manifest["training"][-1]["history"]
    assert [epoch["lambda"] for epoch in history] == [0.0, 1.0] and "ce" not in history[0]
    assert manifest["exports"]["onnx"]["graphs"]["pipeline"]["max_abs_diff"] <= 1e-4
    assert load_bundle(out).pipeline().is_stochastic
    assert {metric["protocol"]["images"] for metric in manifest["metrics"].values()} == {500}


@pytest.mark.parametrize("options, message", [(["--transform", "noise_multimask", "--masks", "5"], "masks * missing_rate <= 1"),
                                             (["--transform", "mask", "--noise-std", "0.1"], "adds no noise")])
def test_invalid_transform_settings_are_one_line_errors(tiny_bundle, tmp_path, capsys, options, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "atop", "--classifier", str(tiny_bundle.path), *options, "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_noise_default_follows_the_transform(tiny_bundle, tmp_path):
    def noise_std(transform: str) -> float:
        return AtopConfig(out=tmp_path / "x", classifier=tiny_bundle.path, transform=transform).random_transform().noise_std
    assert noise_std("mask") == 0.0 and noise_std("noise_mask") == 0.1


def test_hinge_discriminator_learns_to_separate_real_from_blurred():
    """The GAN term can only help if D can tell purified-looking images from real ones."""
    torch.manual_seed(0)
    gan = ReconstructionGAN(in_channels=1, weight=0.01, lr=1e-3)
    real = (torch.rand(64, 1, 28, 28) > 0.5).float()
    fake = torch.nn.functional.avg_pool2d(real, 3, stride=1, padding=1)
    first = gan.discriminator_step(fake, real)["gan_d"]
    for _ in range(100):
        last = gan.discriminator_step(fake, real)["gan_d"]
    assert first > 1.5 and last < 0.5 * first


def test_ema_and_trades_term_fine_tune_and_bundle_the_averaged_weights(tiny_bundle, tmp_path):
    """With --ema the bundle holds the moving average of the same trajectory, not its last weights; --trades-beta adds the KL term."""
    config = dict(classifier=tiny_bundle.path, purifier=tiny_bundle.path, epochs=1, attack="pgd", attack_steps=2, limit=384, test_limit=500,
                  command="test")
    plain = train_atop(AtopConfig(out=tmp_path / "plain", **config))
    averaged = train_atop(AtopConfig(out=tmp_path / "ema", ema=0.5, **config))
    start, last, mean = (bundle.purifier().state_dict() for bundle in (tiny_bundle, plain, averaged))
    moved = [name for name in start if start[name].is_floating_point() and not torch.equal(start[name], last[name])]
    assert moved and all(not torch.equal(mean[name], last[name]) for name in moved)
    stable = train_atop(AtopConfig(out=tmp_path / "trades", trades_beta=1.0, **{**config, "limit": 128}))
    assert stable.manifest["training"][-1]["history"][0]["kl"] >= 0 and "kl" not in plain.manifest["training"][-1]["history"][0]
    with pytest.raises(ValueError, match="--ema"):
        AtopConfig(out=tmp_path / "x", classifier=tiny_bundle.path, ema=1.5)


def test_trades_classifier_loss_adds_a_non_negative_boundary_term(fmnist_test):
    from training.adversarial import trades_loss

    classifier = load_bundle(CHECKOUT_BUNDLES / "fmnist-standard").classifier().train()
    images = torch.from_numpy(fmnist_test.images[:64]).permute(0, 3, 1, 2).float() / 255
    labels = torch.from_numpy(fmnist_test.labels[:64]).long()
    generator = torch.Generator().manual_seed(0)
    plain, logits = trades_loss(classifier, images, labels, 0.1, 3, 0.0, generator)
    robust, _ = trades_loss(classifier, images, labels, 0.1, 3, 6.0, torch.Generator().manual_seed(0))
    assert torch.allclose(plain, torch.nn.functional.cross_entropy(logits, labels)) and robust > plain + 1.0  # an undefended model is far from stable


def test_joint_fine_tuning_updates_the_classifier_too(tiny_bundle, tmp_path):
    bundle = train_atop(AtopConfig(out=tmp_path / "joint", classifier=tiny_bundle.path, purifier=tiny_bundle.path, epochs=1, attack="pgd",
                                   attack_steps=2, limit=256, joint=True, classifier_lr=1e-3, test_limit=500, command="test"))
    before, after = tiny_bundle.classifier().state_dict(), bundle.classifier().state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before if before[name].is_floating_point())
    assert all(torch.equal(before[name], after[name]) for name in before if "running_" in name)  # batch-norm statistics frozen
    assert bundle.manifest["purifier"]["method"] == "atop-joint" and bundle.manifest["classifier"]["fine_tuned"] == "atop-joint"


def test_validation_selects_the_epoch_with_the_best_robust_accuracy(tiny_bundle, tmp_path):
    bundle = train_atop(AtopConfig(out=tmp_path / "selected", classifier=tiny_bundle.path, purifier=tiny_bundle.path, epochs=2, attack="pgd",
                                   attack_steps=1, limit=192, validate=64, test_limit=500, command="test"))
    history = bundle.manifest["training"][-1]["history"]
    assert len(history) == 2 and all(0 <= epoch["robust_validation"] <= 1 for epoch in history)
    from evaluation.accuracy import robust_accuracy
    from purifier.pipeline import Pipeline

    held = tiny_bundle.data("train").head(192).tensors()  # the last 64 of the first 192 training images were held out
    again = robust_accuracy(Pipeline(bundle.classifier(), bundle.purifier(), bundle.transform).eval(), held[0][-64:], held[1][-64:], 0.1,
                            steps=10, eot=2, draws=2, seed=0)
    assert again == max(epoch["robust_validation"] for epoch in history)  # the bundle holds the best epoch's weights
    with pytest.raises(Exception, match="half or more"):
        train_atop(AtopConfig(out=tmp_path / "x", classifier=tiny_bundle.path, purifier=tiny_bundle.path, limit=100, validate=60, command="test"))
