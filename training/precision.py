"""Numeric precision of training: fp32, or bf16 autocast with fp32 master weights.

On CPUs with AMX or AVX-512-bf16 units (and on GPUs) bf16 matrix products run several times
faster than fp32. ``--precision bf16`` runs every forward pass of a training step (the attack
that crafts the training examples included) under ``torch.autocast(dtype=bfloat16)``; weights,
optimiser state and gradients stay fp32, and the models use the channels_last memory layout
oneDNN's bf16 convolutions want. Evaluation attacks always run in fp32.

Precision is a speed setting, not part of the recipe: the same short adversarial training run in each
precision and attacked alike comes out no weaker in bf16 (benchmarks/adversarial_precision.py). So a
run may resume in the other precision (on a machine without bf16 units, say); each epoch's precision
is kept in the training history.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager

import torch
from torch import nn

from purifier.machine import cpu_model_and_matrix_flags

PRECISIONS = ("fp32", "bf16")
AUTO = "auto"  # --precision auto: bf16 where the CPU has bf16 units, fp32 elsewhere (resolve)
# CPU flags of units that multiply bf16 natively; without one, oneDNN emulates bf16 and it runs far slower than fp32
BF16_UNITS = ("amx_bf16", "avx512_bf16")


def autocast(precision: str, device: str = "cpu") -> AbstractContextManager:
    """The context a training step's forward passes run in (a no-op for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")


def prepare(precision: str, *modules: nn.Module) -> None:
    """Put the models in the memory layout their precision runs fastest in (channels_last for bf16), and warn when
    bf16 is asked of a CPU that has to emulate it."""
    if precision == "bf16":
        if not has_bf16_units():
            print(f"warning: this CPU has no bf16 matrix units ({' or '.join(BF16_UNITS)}), so bf16 runs emulated, many "
                  "times slower than fp32 (benchmarks/training_precision.py); drop --precision bf16 here", file=sys.stderr)
        for module in modules:
            module.to(memory_format=torch.channels_last)


def has_bf16_units(flags: dict[str, bool] | None = None) -> bool:
    """Whether CPU ``flags`` (purifier.machine's reading; default: this CPU's) include a unit that multiplies bf16 natively."""
    flags = cpu_model_and_matrix_flags()[1] if flags is None else flags
    return any(flags.get(flag, False) for flag in BF16_UNITS)


def resolve(choice: str) -> str:
    """The precision ``--precision choice`` trains in: ``auto`` is bf16 where the CPU has bf16 units, else fp32."""
    if choice != AUTO:
        return choice
    return "bf16" if has_bf16_units() else "fp32"
