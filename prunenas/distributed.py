"""Data-parallel training with ``torch.distributed`` only: which worker this is, batch shards, and BatchNorm
over the global batch (Ray stays under ``prunenas.search``; it only starts the workers and the process group).

A trial on N workers keeps the meaning of a trial on one: every worker draws the same global batch (the same
permutation and augmentation draws), trains on its own contiguous slice of it, and DDP averages the gradients,
so with BatchNorm statistics taken over the global batch a step equals the one-worker step up to float rounding.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from prunenas.errors import PrunenasError


def world() -> tuple[int, int]:
    """(rank, number of workers) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_bounds(n: int, rank: int, workers: int) -> tuple[int, int]:
    """Rows [start, stop) of ``n`` rows that worker ``rank`` of ``workers`` takes: contiguous, disjoint, covering
    all rows, sizes differing by at most one (equal when ``workers`` divides ``n``)."""
    return n * rank // workers, n * (rank + 1) // workers


def check_batch_split(batch_size: int, workers: int) -> None:
    """A global batch must split evenly over the workers (each trains ``batch_size / workers`` images a step)."""
    if workers < 1:
        raise PrunenasError(f"workers {workers} must be at least 1")
    if batch_size % workers:
        raise PrunenasError(f"batch size {batch_size} does not split over {workers} workers: use a batch size "
                            f"divisible by {workers}, or a number of workers that divides {batch_size}")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the workers, in place (unchanged on one worker)."""
    if world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def barrier() -> None:
    """Wait for every worker (no-op on one)."""
    if world()[1] > 1:
        dist.barrier()


class _SummedOverWorkers(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the sum of every worker's gradient: the statistics of the global batch
    feed every worker's loss, so each worker's input receives the gradient of the total loss."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, summed over the workers with a
    differentiable all-reduce. Works on CPU (gloo) as on CUDA (NCCL), which ``nn.SyncBatchNorm`` does not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world()[1] > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        stats = torch.cat([x.float().sum(dims), (x.float() * x.float()).sum(dims), count])
        stats = _SummedOverWorkers.apply(stats)
        channels = x.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        var = stats[channels:2 * channels] / total - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * total / (total - 1).clamp(min=1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


class GlobalBatchNorm1d(_GlobalBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over the global batch (still an ``nn.BatchNorm1d`` for code that looks for one)."""


class GlobalBatchNorm2d(_GlobalBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` over the global batch (still an ``nn.BatchNorm2d`` for code that looks for one)."""


_GLOBAL = {nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d}
_LOCAL = {v: k for k, v in _GLOBAL.items()}


def global_batchnorm(model: nn.Module) -> nn.Module:
    """Make every BatchNorm of ``model`` take global-batch statistics, in place.

    The class of each module is swapped rather than the module replaced: parameters, buffers, the optimiser's
    references and the state-dict keys stay the very same objects, and pruning code that reads BN scales (Network
    Slimming) still finds ``nn.BatchNorm2d`` instances."""
    for module in model.modules():
        if type(module) in _GLOBAL:
            module.__class__ = _GLOBAL[type(module)]
    return model


def local_batchnorm(model: nn.Module) -> nn.Module:
    """Undo :func:`global_batchnorm` (the trained model is handed on as plain modules), in place."""
    for module in model.modules():
        if type(module) in _LOCAL:
            module.__class__ = _LOCAL[type(module)]
    return model
