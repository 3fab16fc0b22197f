"""Attacks on any model that maps float NCHW images in [0, 1] to logits (classifiers and
whole Pipelines alike): gradients flow through everything the model does; Square uses none."""

from evaluation.attacks.bpda import BPDA
from evaluation.attacks.joint import JOINT_ETA, joint_pgd
from evaluation.attacks.pgd import pgd
from evaluation.attacks.smooth_adv import smooth_adv
from evaluation.attacks.square import square

__all__ = ["BPDA", "JOINT_ETA", "joint_pgd", "pgd", "smooth_adv", "square"]
