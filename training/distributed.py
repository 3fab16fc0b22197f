"""Data-parallel training under torchrun: gloo on CPU, NCCL on GPU; a no-op without torchrun.

Every rank builds the same models from the same seed and rank 0's weights are broadcast once;
each epoch's permutation is cut into global batches and rank r takes every W-th image of each
(disjoint shards, the same global batch as one process); gradients are averaged over ranks
before every optimizer step (an optimizer step pre-hook, so trainers need no changes); at the
end of every epoch, parameters and buffers are made identical again (batch-norm statistics
averaged, the rest from rank 0). Rank 0 alone shows progress, writes checkpoints and the
bundle; every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size), joining the process group on first use under torchrun; (0, 1) otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), size


def is_main() -> bool:
    return world()[0] == 0


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def _average_gradients(optimizer: torch.optim.Optimizer, *_) -> None:
    """All-reduce the gradients of ``optimizer``'s parameters as one flat tensor, divided by the world size."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world()[1]
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def attach(modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Make a training state data-parallel: rank 0's weights everywhere, gradients averaged at every step."""
    if world()[1] == 1:
        return
    synchronize(modules, average_buffers=False)
    for optimizer in optimizers.values():
        optimizer.register_step_pre_hook(_average_gradients)


def synchronize(modules: dict[str, nn.Module], average_buffers: bool = True) -> None:
    """Parameters (and integer buffers) from rank 0; float buffers (batch-norm statistics) averaged or from rank 0."""
    if world()[1] == 1:
        return
    for module in modules.values():
        for parameter in module.parameters():
            dist.broadcast(parameter.data, src=0)
        for buffer in module.buffers():
            if average_buffers and buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer /= world()[1]
            elif buffer.dtype == torch.bool:  # gloo broadcasts no bools
                as_bytes = buffer.to(torch.uint8)
                dist.broadcast(as_bytes, src=0)
                buffer.copy_(as_bytes.bool())
            else:
                dist.broadcast(buffer, src=0)
