"""Where a run trains (placement) and what a rank of it needs inside a trial: DDP, reductions, BatchNorm.

One trial on N devices runs on N rank processes (`ranks.RankGroup`: one per GPU with NCCL, or N CPU
processes with gloo), each training on its shard of every global batch with DistributedDataParallel.
Rank 0 alone hands each epoch's (already reduced) metrics to the launching process, whose `on_epoch`
talks to Optuna and MLflow and answers whether to stop; rank 0 broadcasts that answer (`Group.agree`)
so that every rank stops together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch import nn

from unet_opt.errors import UserError


@dataclass(frozen=True)
class Placement:
    """Where one run (a trial, a retrain) trains: `procs` processes on `device`; on CUDA rank r uses GPU
    `gpu_ids[r]`."""

    device: str = "cpu"  # "cpu" or "cuda"
    procs: int = 1
    gpu_ids: tuple[int, ...] = ()
    threads: int = 0  # CPU threads per process; 0: torch's default

    @property
    def main_device(self) -> torch.device:
        """Rank 0's device, where the launching process scores a trained model."""
        return torch.device("cuda", self.gpu_ids[0]) if self.device == "cuda" else torch.device("cpu")

    @property
    def backend(self) -> str:
        return "nccl" if self.device == "cuda" else "gloo"

    def describe(self) -> str:
        if self.device == "cuda":
            return f"{self.procs} GPU{'s' if self.procs > 1 else ''} ({','.join(map(str, self.gpu_ids))})"
        return f"{self.procs} CPU process{'es' if self.procs > 1 else ''}"

    def split(self, workers: int) -> list[Placement]:
        """One placement per worker of `--workers K`: disjoint GPU groups, or a share of the CPU cores."""
        if self.device == "cuda":
            if len(self.gpu_ids) % workers:
                raise UserError(f"--workers {workers} cannot share {len(self.gpu_ids)} GPU(s) evenly; use a "
                                f"number of workers that divides it, e.g. --workers {len(self.gpu_ids)}")
            per = len(self.gpu_ids) // workers
            return [replace(self, procs=per, gpu_ids=self.gpu_ids[i * per:(i + 1) * per]) for i in range(workers)]
        threads = max(1, (os.cpu_count() or 1) // (workers * self.procs))
        return [replace(self, threads=threads) for _ in range(workers)]


def plan(device: str, gpus: str | None, procs: int | None) -> Placement:
    """`--device auto|cpu|cuda`, `--gpus all|N`, `--procs N` -> a Placement, or a UserError naming the fix."""
    if gpus is not None and gpus != "all" and not (gpus.isdigit() and int(gpus) >= 1):
        raise UserError(f"--gpus {gpus!r} is not 'all' or a number of GPUs; e.g. --gpus all or --gpus 2")
    cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    if device == "cuda":
        if not cuda:
            raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
        if procs is not None:
            raise UserError("--procs is for --device cpu; on GPUs use --gpus N (one process per GPU)")
        visible = torch.cuda.device_count()
        n = visible if gpus in (None, "all") else int(gpus)
        if n > visible:
            raise UserError(f"--gpus {n} but {visible} GPU(s) are visible; use --gpus {visible} or --gpus all")
        return Placement("cuda", n, tuple(range(n)))
    if gpus not in (None, "all"):
        raise UserError(f"--gpus {gpus} needs CUDA GPUs but this run trains on the CPU; "
                        f"use --procs {gpus} for CPU processes")
    n = procs or 1
    return Placement("cpu", n, threads=max(1, (os.cpu_count() or 1) // n) if n > 1 else 0)


def check_divisible(batch_sizes: list[int], procs: int, searched: bool = True) -> None:
    """The global batch is split evenly over the processes: refuse a space (or a fixed batch) that cannot be."""
    bad = [b for b in batch_sizes if b % procs]
    if bad:
        counts = [n for n in range(1, bad[0] + 1) if all(b % n == 0 for b in batch_sizes)]
        fix = (f"use batch sizes that are multiples of {procs} (low and step) or another process count"
               if searched else f"use a process or GPU count that divides it (--procs N / --gpus N: "
               f"{', '.join(map(str, counts[-3:]))})")
        raise UserError(f"train.batch_size = {bad[0]} cannot be split evenly over {procs} processes; {fix}")


# ---------------------------------------------------------------------------------------------
# Inside a trial: what `train.fit` needs to know about the other ranks


@dataclass
class Group:
    """This process's place in the trial's process group (rank 0 of 1 without one)."""

    device: torch.device
    rank: int = 0
    world: int = 1

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
