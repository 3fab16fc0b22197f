"""``purifier train …``: one sub-command per trainer, each building its config from the options given.

Unset options are absent from the parsed arguments (argparse.SUPPRESS), so every trainer's
config dataclass supplies its own defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from evaluation.attacks import JOINT_ETA
from purifier.data import DATASETS
from purifier.errors import PurifierError
from purifier.transforms import KINDS
from training.adversarial import METHODS
from training.atop import ATTACKS, LAMBDA_SCHEDULES, TARGETS
from training.common import finished_bundle
from training.jatp import EXAMPLES
from training.precision import AUTO, PRECISIONS, resolve


def _widths(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def _count(text: str) -> int:
    """An image count of 1 or more."""
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return count


def _minutes(text: str) -> float:
    """A number of minutes, 0 or more."""
    minutes = float(text)
    if not minutes >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more minutes, got {text}")
    return minutes


def _add_common_training(parser: argparse.ArgumentParser) -> None:
    """Options every trainer takes. Unset options are absent, so the config's defaults apply."""
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--data-dir", type=Path, help="data location (default for Fashion-MNIST: Debian's dataset-fashion-mnist)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--widths", type=_widths, help="channel widths per stage, e.g. 16,32,64")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--limit", type=_count, help="train on the first N training images only (smoke runs)")
    parser.add_argument("--test-limit", type=_count, help="score the finished bundle on the first N test images only (default: all; "
                        "smoke runs): its recorded metrics say how many")
    parser.add_argument("--name", help="bundle name (default: the --out folder's name)")
    parser.add_argument("--restart", action="store_true", help="discard an existing checkpoint instead of resuming")
    parser.add_argument("--checkpoint-every-min", type=_minutes, help="besides after every epoch, checkpoint within an epoch at most this "
                        "often (default 10; 0: after every batch), so a killed run resumes at the batch it reached")
    parser.add_argument("--precision", choices=(*PRECISIONS, AUTO), help="fp32 (default), bf16 (forward passes under bf16 autocast with "
                        "fp32 master weights: about 2× faster on CPUs with AMX or AVX-512 bf16, about 10× slower on CPUs without; "
                        "benchmarks/training_precision.py) or auto (bf16 where the CPU has those units). A run may resume in another precision")


def _add_purifier_training(parser: argparse.ArgumentParser) -> None:
    """Options of purifier training: the classifier behind it, the random transform and the GAN loss."""
    parser.add_argument("--classifier", type=Path, required=True, help="bundle with the classifier to put the purifier in front of")
    parser.add_argument("--transform", choices=KINDS, help="random transform: mask (RT1), noise_mask (RT2, default), noise_multimask (RT3), or gaussian (noise only: "
                        "randomized smoothing's base classifier, certifiable)")
    parser.add_argument("--block-size", type=int, help="mask block size in pixels (default 4)")
    parser.add_argument("--missing-rate", type=float, help="fraction of blocks each mask drops (default 0.25)")
    parser.add_argument("--noise-std", type=float, help="σ of the Gaussian noise of RT2/RT3 (default 0.1; RT1 adds none)")
    parser.add_argument("--masks", type=int, help="RT3: number of non-overlapping masks N (masks × missing rate ≤ 1)")
    parser.add_argument("--gan-weight", type=float, help="weight w of the hinge GAN term beside L1 (default 0.01; 0: L1 only)")


def _add_validation(parser: argparse.ArgumentParser, unit: str, attack: str) -> None:
    """Robust early stopping (training/selection.py)."""
    parser.add_argument("--validate", type=int, help=f"hold out the last N training images; bundle the {unit} with the best robust "
                        f"accuracy on them ({attack}; default 0: the last epoch)")
    parser.add_argument("--validate-queries", type=int, help="also attack the held-out images PGD leaves standing with Square, Q queries "
                        "each: no gradient, so weights that only mask their gradients are not selected (default 0: PGD only)")


def _train(args: argparse.Namespace) -> None:
    """Build the trainer's config from the options given on the command line, then train."""
    if args.trainer in ("classifier", "ijsat"):
        from training.classifier import ClassifierConfig as Config
        from training.classifier import train_classifier as train
    elif args.trainer == "jatp":
        from training.jatp import JatpConfig as Config
        from training.jatp import train_jatp as train
    elif args.trainer == "flow":
        from training.flow import FlowConfig as Config
        from training.flow import train_flow as train
    else:
        from training.atop import AtopConfig as Config
        from training.atop import train_atop as train
    if args.trainer == "ijsat":
        args.method = "ijsat"
    if args.trainer == "purifier":  # AToP's pre-training stage alone
        args.pretrain_epochs, args.epochs = getattr(args, "epochs", 5), 0
    if hasattr(args, "precision"):
        args.precision = resolve(args.precision)
    names = {field.name for field in dataclasses.fields(Config)}
    try:
        config = Config(**{key: value for key, value in vars(args).items() if key in names})
    except ValueError as error:
        raise PurifierError(str(error)) from None
    finished = finished_bundle(config)
    if finished is not None:
        print(f"{finished.path} is complete: trained by '{finished.manifest['training'][-1].get('command')}'; nothing to do "
              "(pass --restart to train it again)")
        return
    bundle = train(config)
    for name, entry in bundle.manifest["metrics"].items():
        print(f"{name}: {entry['value']:.4f} ({entry['protocol']})")
    print(f"wrote bundle {bundle.path}")



def add_train_command(commands) -> None:
    """The ``train`` sub-command and its trainers, on the top-level sub-parsers ``commands``."""
    train = commands.add_parser("train", help="train a classifier, an AToP purifier, a JATP pre-processor or a flow into a bundle")
    trainers = train.add_subparsers(dest="trainer", required=True, metavar="TRAINER")
    classifier = trainers.add_parser("classifier", help="standard classifier training", argument_default=argparse.SUPPRESS)
    _add_common_training(classifier)
    classifier.add_argument("--dataset", choices=DATASETS, help="fashion-mnist (default), cifar10 or folder")
    classifier.add_argument("--weight-decay", type=float)
    classifier.add_argument("--method", choices=METHODS + ("gaussian",), help="standard (default), pgd (Madry PGD-AT), fgsm_rs (Wong fast AT), "
                            "trades (Zhang et al.) or gaussian (noise augmentation: randomized smoothing's classifier, certifiable)")
    classifier.add_argument("--noise-std", type=float, help="gaussian: σ of the noise augmentation and of the smoothing (default 0.25)")
    classifier.add_argument("--beta", type=float, help="TRADES: weight β of the KL boundary term (default 6)")
    classifier.add_argument("--eps", type=float, help="L∞ radius of adversarial training (default 0.1)")
    classifier.add_argument("--attack-steps", type=int, help="PGD steps per batch in PGD-AT (default 10)")
    classifier.add_argument("--init", type=Path, help="start from this bundle's classifier (same widths) instead of fresh weights")
    _add_validation(classifier, "epoch", "L∞ PGD-10 at --eps")
    purifier = trainers.add_parser(
        "purifier", help="AToP pre-training alone: a GAN purifier that restores clean images from randomly transformed ones", argument_default=argparse.SUPPRESS,
    )
    _add_common_training(purifier)
    _add_purifier_training(purifier)
    atop = trainers.add_parser(
        "atop", help="AToP: purifier pre-training, then fine-tuning on adversarial examples crafted against the whole pipeline",
        argument_default=argparse.SUPPRESS,
    )
    _add_common_training(atop)
    _add_purifier_training(atop)
    atop.add_argument("--purifier", type=Path, help="start from this bundle's pre-trained purifier (then --pretrain-epochs defaults to 0)")
    atop.add_argument("--pretrain-epochs", type=int, help="pre-training epochs before fine-tuning (default 5, or 0 with --purifier); --epochs counts fine-tuning epochs")
    atop.add_argument("--finetune-lr", type=float, help="peak learning rate of fine-tuning (default 5e-4)")
    atop.add_argument("--attack", choices=ATTACKS, help="how x' is crafted against the pipeline: fgsm_rs (default), pgd, or none (x' = x)")
    atop.add_argument("--targets", choices=TARGETS, help="labels of the classification loss: the data's (default) or the classifier's own "
                      "prediction on the clean image (denoised smoothing's stability objective)")
    atop.add_argument("--eps", type=float, help="L∞ radius of x' (default 0.1)")
    atop.add_argument("--attack-steps", type=int, help="PGD steps when --attack pgd (default 5)")
    atop.add_argument("--lam", type=float, help="λ, weight of the classification loss (default 1.0)")
    atop.add_argument("--lam-schedule", choices=LAMBDA_SCHEDULES, help="constant (default) or linear ramp over the fine-tuning epochs")
    atop.add_argument("--trades-beta", type=float, help="β of the TRADES-style term KL(f(g(t(x))) ‖ f(g(t(x')))) in fine-tuning (default 0: off)")
    atop.add_argument("--joint", action="store_true", help="also fine-tune the classifier with the purifier (for a classifier you may "
                      "retrain, e.g. an adversarially trained one)")
    atop.add_argument("--classifier-lr", type=float, help="peak learning rate of the classifier under --joint (default 1e-4)")
    _add_validation(atop, "fine-tuning epoch", "PGD-10 × EOT-2 through the pipeline, worst of 2 draws")
    atop.add_argument("--ema", type=float, help="decay of an exponential moving average of the purifier's weights, bundled instead of "
                      "the last weights (e.g. 0.999; default 0: off)")
    jatp = trainers.add_parser(
        "jatp", help="JATP: a pre-processor trained on full adversarial examples against itself + the frozen classifier",
        argument_default=argparse.SUPPRESS,
    )
    _add_common_training(jatp)
    jatp.add_argument("--classifier", type=Path, required=True, help="bundle with the (frozen) classifier to train the pre-processor for")
    jatp.add_argument("--examples", choices=EXAMPLES, help="full (default: crafted against pre-processor + classifier, every batch) or static (against the classifier alone: the naive baseline)")
    jatp.add_argument("--eps", type=float, help="L∞ radius of the training examples (default 0.1)")
    jatp.add_argument("--attack-steps", type=int, help="PGD steps per batch (default 5)")
    jatp.add_argument("--feature-weight", type=float, help="β, weight of the feature-similarity adversarial risk (default 1.0; 0: pixel loss only)")
    jatp.add_argument("--pixel-weight", type=float, help="α, weight of the pixel-wise L1 loss (default 1.0)")
    ijsat = trainers.add_parser("ijsat", help="IJSAT: a classifier trained on joint-space adversarial Robust Mixup", argument_default=argparse.SUPPRESS)
    _add_common_training(ijsat)
    ijsat.add_argument("--flow", type=Path, required=True, help="flow bundle from 'purifier train flow' (the joint space's latent)")
    ijsat.add_argument("--dataset", choices=DATASETS, help="fashion-mnist (default), cifar10 or folder")
    ijsat.add_argument("--eps", type=float, help="L∞ radius δ in image space (default 0.1)")
    ijsat.add_argument("--eta", type=float, help=f"L∞ radius δz in the flow's latent space (default {JOINT_ETA:g})")
    ijsat.add_argument("--attack-steps", type=int, help="joint PGD steps per batch (default 10)")
    ijsat.add_argument("--mixup-alpha", type=float, help="α of Robust Mixup's λ ~ Beta(α, α) (default 1.0)")
    ijsat.add_argument("--clean-weight", type=float, help="w of the clean-interpolation term w·CE(f(x̄), ȳ) (Lamb et al.; default 0: off)")
    ijsat.add_argument("--weight-decay", type=float)
    ijsat.add_argument("--init", type=Path, help="start from this bundle's classifier, e.g. the PGD-AT control: IJSAT on top of adversarial training")
    _add_validation(ijsat, "epoch", "L∞ PGD-10 at --eps")
    flow = trainers.add_parser("flow", help="a Glow normalizing flow by maximum likelihood (IJSAT's manifold model)", argument_default=argparse.SUPPRESS)
    _add_common_training(flow)
    flow.add_argument("--dataset", choices=DATASETS, help="fashion-mnist (default), cifar10 or folder")
    flow.add_argument("--levels", type=int, help="multi-scale levels (default 2; image sides must divide by 2^levels)")
    flow.add_argument("--steps", type=int, help="flow steps per level (default 4)")
    flow.add_argument("--hidden", type=int, help="channels of the coupling networks (default 64)")
    train.set_defaults(func=_train)
