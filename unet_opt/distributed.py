"""Process launch, DDP setup and teardown, reductions, rank helpers.

One trial on N devices: `launch` starts N processes (one per GPU with NCCL, or N CPU processes with
gloo), each trains on its shard of every global batch with DistributedDataParallel. Rank 0 alone hands
each epoch's (already reduced) metrics to the launching process, whose `on_epoch` talks to Optuna and
MLflow and answers whether to stop; rank 0 broadcasts that answer so that every rank stops together.
A rank that fails ends the whole group: the others are terminated and `launch` raises `RankFailed`.
With one process everything runs in the caller's process, with no process group at all.
"""

from __future__ import annotations

import os
import pickle
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp
from torch import nn
from torch.multiprocessing.spawn import ProcessException

from unet_opt import runtime
from unet_opt.errors import UserError
from unet_opt.processes import die_with_parent

COLLECTIVE_TIMEOUT = timedelta(minutes=10)  # a rank that stops answering ends the trial after this


class RankFailed(RuntimeError):
    """One process of a multi-process trial failed; the message names the rank and its error."""


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


# ---------------------------------------------------------------------------------------------
# Launching a trial's processes

OnEpoch = Callable[[int, dict[str, float], float], bool]  # (epoch, metrics, best so far) -> stop?
Target = Callable[..., Any]  # target(group, on_epoch, *args) -> result, importable by name


def launch(placement: Placement, target: Target, args: tuple, on_epoch: OnEpoch | None) -> Any:
    """Run `target(group, on_epoch, *args)` on every rank of `placement` and return rank 0's result.

    One process: here, directly. Several: spawned processes; `on_epoch` still runs here, fed by rank 0.
    """
    if placement.procs == 1:
        device = torch.device("cpu")
        if placement.device == "cuda":
            device = torch.device("cuda", placement.gpu_ids[0] if placement.gpu_ids else 0)
            torch.cuda.set_device(device)  # a worker's kernels and caches go to its own GPU
        return target(Group(device), on_epoch, *args)

    parent_end, child_end = torch_mp.get_context("spawn").Pipe()
    with tempfile.TemporaryDirectory(prefix="unet-opt-ranks-") as rendezvous:
        context = torch_mp.start_processes(
            _rank_main, args=(placement, f"file://{rendezvous}/store", target, args, child_end, on_epoch is not None),
            nprocs=placement.procs, join=False, start_method="spawn")
        child_end.close()
        try:
            return _supervise(context, parent_end, on_epoch)
        finally:
            for process in context.processes:  # whatever happened here, no rank outlives the trial
                if process.is_alive():
                    process.kill()
                process.join()
            for path in context.error_files:
                if os.path.exists(path):
                    os.remove(path)
            parent_end.close()


def _supervise(context: Any, conn: Any, on_epoch: OnEpoch | None) -> Any:
    """Answer rank 0's epoch reports until every rank has exited; a failed rank raises RankFailed."""
    result: dict[str, Any] = {}
    try:
        while not context.join(timeout=0.05):
            _serve(conn, on_epoch, result)
    except ProcessException as e:
        raise RankFailed(_first_failure(context, e)) from None
    _serve(conn, on_epoch, result)
    if "value" not in result:
        raise RankFailed("rank 0 exited without a result")
    return result["value"]


def _serve(conn: Any, on_epoch: OnEpoch | None, result: dict[str, Any]) -> None:
    while conn.poll():
        try:
            kind, *payload = pickle.loads(conn.recv_bytes())
        except EOFError:  # every rank has exited; `join` tells how
            return
        if kind == "epoch":
            stop = on_epoch(*payload) if on_epoch is not None else False
            conn.send_bytes(pickle.dumps(bool(stop)))
        else:
            result["value"] = payload[0]


def _first_failure(context: Any, error: Exception) -> str:
    """The rank that failed first (the others usually fail after it, on a closed connection)."""
    written = [(os.stat(path).st_mtime_ns, rank, path) for rank, path in enumerate(context.error_files)
               if os.path.exists(path)]
    if written:
        _, rank, path = min(written)
        with open(path, "rb") as f:
            trace = pickle.load(f)
        last = [line for line in trace.strip().splitlines() if line.strip()][-1]
        return f"rank {rank} failed: {last.strip()}"
    return f"rank {getattr(error, 'error_index', '?')} {str(error).strip()}"  # killed by a signal or os._exit


def _rank_main(rank: int, placement: Placement, rendezvous: str, target: Target, args: tuple, conn: Any,
               relay: bool) -> None:
    """One rank: join the group, run the target, send rank 0's result home, leave the group."""
    die_with_parent()
    runtime.setup(prefix=f"[rank {rank}] ")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to handle: it ends the ranks
    if placement.threads:
        torch.set_num_threads(placement.threads)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(placement.procs), LOCAL_RANK=str(rank))
    if placement.device == "cuda":
        device = torch.device("cuda", placement.gpu_ids[rank])
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(placement.backend, init_method=rendezvous, rank=rank, world_size=placement.procs,
                            timeout=COLLECTIVE_TIMEOUT, device_id=device if device.type == "cuda" else None)
    try:
        on_epoch = _relay(conn) if rank == 0 and relay else None
        value = target(Group(device, rank, placement.procs), on_epoch, *args)
        if rank == 0:
            conn.send_bytes(pickle.dumps(("result", value)))
    finally:
        dist.destroy_process_group()
        conn.close()


def _relay(conn: Any) -> OnEpoch:
    def on_epoch(epoch: int, metrics: dict[str, float], best: float) -> bool:
        conn.send_bytes(pickle.dumps(("epoch", epoch, metrics, best)))
        return pickle.loads(conn.recv_bytes())

    return on_epoch
