"""Attacks on any model that maps float NCHW images in [0, 1] to logits (classifiers and
whole Pipelines alike): gradients flow through everything the model does."""

from training.attacks.bpda import BPDA
from training.attacks.joint import JOINT_ETA, joint_pgd
from training.attacks.pgd import pgd

__all__ = ["BPDA", "JOINT_ETA", "joint_pgd", "pgd"]
