"""The progress bar every long job shows (training epochs, evaluation batches, quantization checks)."""

from __future__ import annotations

import sys

import torch.distributed as dist
from tqdm import tqdm


def progress(iterable, total: int, description: str, initial: int = 0):
    """A tqdm bar on stderr, starting at ``initial`` of ``total``; sparse updates when stderr is not a terminal (CI logs);
    shown by rank 0 only under torchrun."""
    interactive = sys.stderr.isatty()
    other_rank = dist.is_available() and dist.is_initialized() and dist.get_rank() != 0
    return tqdm(iterable, total=total, initial=initial, desc=description, file=sys.stderr, mininterval=0.2 if interactive else 30.0,
                leave=interactive, dynamic_ncols=True, disable=other_rank)
