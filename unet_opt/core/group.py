"""The other ranks of a run as a training step sees them: sums over the ranks, the stop decision taken
together, DDP and BatchNorm over the global batch.

One trial on N devices runs on N rank processes, each training on its shard of every global batch with
DistributedDataParallel. Rank 0 alone hands each epoch's (already reduced) metrics to the launching
process, whose `on_epoch` talks to Optuna and MLflow and answers whether to stop; rank 0 broadcasts that
answer (`Group.agree`) so that every rank stops together. With one process (`world` 1) every method is
a no-op, and no process group exists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Group:
    """This process's place in the trial's process group (rank 0 of 1 without one)."""

    device: torch.device
    rank: int = 0
    world: int = 1
    out_of_step: bool = False  # an error left this rank inside `in_lockstep`: the group cannot serve another run

    @contextlib.contextmanager
    def in_lockstep(self) -> Iterator[None]:
        """A stretch of collectives every rank must finish together (DDP's set-up and its asynchronous
        bucket reductions in each backward pass, the sums, the stop decisions). An error inside it, such as
        running out of memory in a step, can leave a collective that one rank issued and another never
        will, which the next run's first collective would be paired with: such a group must be restarted."""
        self.out_of_step = True
        yield
        self.out_of_step = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: list[int]) -> list[int]:
        """Every world-th index from this rank's: the ranks' shards are disjoint and cover `indices`."""
        return list(indices)[self.rank::self.world]

    def sum_(self, *tensors: torch.Tensor) -> None:
        """Sum each tensor over the ranks, in place."""
        if self.world > 1:
            for t in tensors:
                dist.all_reduce(t)

    def sum_with_grad(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over the ranks, differentiably: a loss over the whole global batch."""
        return _SumOverRanks.apply(t) if self.world > 1 else t

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank: stop decisions are taken together."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP over the group, with BatchNorm statistics over the global batch (so results do not depend on N)."""
        if self.world == 1:
            return model
        if self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index])
        return nn.parallel.DistributedDataParallel(cpu_sync_batchnorm(model))


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with a gradient: each rank's input feeds every rank's output, so the gradient
    of an input is the sum of the output gradients over the ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the whole global batch across CPU processes.

    `nn.SyncBatchNorm` runs on GPUs only; this computes the same statistics with summing collectives
    that carry gradients, so the mean and variance are differentiated through as on one process.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        count = torch.tensor(float(x.numel() // x.shape[1]))
        dist.all_reduce(count)
        mean = _SumOverRanks.apply(x.sum(dims)) / count
        centered = x - mean.view(shape)
        var = _SumOverRanks.apply((centered * centered).sum(dims)) / count
        with torch.no_grad():  # running statistics as BatchNorm2d keeps them (unbiased variance)
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(mean, alpha=m)
            self.running_var.mul_(1 - m).add_(var * count / max(1.0, float(count) - 1), alpha=m)
            self.num_batches_tracked += 1
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out


def cpu_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d of `module` becomes a CpuSyncBatchNorm holding the same parameters and buffers."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            setattr(module, name, synced)
        else:
            cpu_sync_batchnorm(child)
    return module
