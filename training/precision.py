"""Numeric precision of training: fp32, or bf16 autocast with fp32 master weights.

On CPUs with AMX or AVX-512-bf16 units (and on GPUs) bf16 matrix products run several times
faster than fp32. ``--precision bf16`` runs every forward pass of a training step (the attack
that crafts the training examples included) under ``torch.autocast(dtype=bfloat16)``; weights,
optimiser state and gradients stay fp32, and the models use the channels_last memory layout
oneDNN's bf16 convolutions want. Evaluation attacks always run in fp32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")


def autocast(precision: str, device: str = "cpu") -> AbstractContextManager:
    """The context a training step's forward passes run in (a no-op for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")


def prepare(precision: str, *modules: nn.Module) -> None:
    """Put the models in the memory layout their precision runs fastest in (channels_last for bf16)."""
    if precision == "bf16":
        for module in modules:
            module.to(memory_format=torch.channels_last)
