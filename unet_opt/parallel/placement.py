"""Where a run trains: `Placement` (the processes and devices of one run), planned from `--device`,
`--gpus` and `--procs`, split between `--workers`, and the global batch's split over the processes.

One trial on N devices runs on N rank processes (`ranks.RankGroup`: one per GPU with NCCL, or N CPU
processes with gloo); what a rank needs inside the trial (DDP, reductions) is `core.group.Group`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

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
        return [replace(self, threads=share_of_cores(workers * self.procs)) for _ in range(workers)]


def plan(device: str, gpus: str | None, procs: int | None) -> Placement:
    """`--device auto|cpu|cuda`, `--gpus all|N`, `--procs N` -> a Placement, or a UserError naming the fix."""
    if gpus is not None and gpus != "all" and not (gpus.isdigit() and int(gpus) >= 1):
        raise UserError(f"--gpus {gpus!r}: give 'all' or a number of GPUs from 1 up; e.g. --gpus all or --gpus 2")
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
        # each rank's share of the cores, as torchrun gives: N ranks at every core each would fight over them
        # wherever the CPU works (batches gathered from host memory, the scoring of the launcher)
        return Placement("cuda", n, tuple(range(n)), threads=share_of_cores(n) if n > 1 else 0)
    if gpus not in (None, "all"):
        raise UserError(f"--gpus {gpus} needs CUDA GPUs but this run trains on the CPU; "
                        f"use --procs {gpus} for CPU processes")
    n = procs or 1
    return Placement("cpu", n, threads=share_of_cores(n) if n > 1 else 0)


def share_of_cores(processes: int) -> int:
    """CPU threads for each of `processes` processes that train at once on this machine."""
    return max(1, (os.cpu_count() or 1) // processes)


def check_divisible(batch_sizes: list[int], procs: int, searched: bool = True) -> None:
    """The global batch is split evenly over the processes: refuse a space (or a fixed batch) that cannot be."""
    bad = [b for b in batch_sizes if b % procs]
    if bad:
        counts = [n for n in range(1, bad[0] + 1) if all(b % n == 0 for b in batch_sizes)]
        fix = (f"use batch sizes that are multiples of {procs} (low and step) or another process count"
               if searched else f"use a process or GPU count that divides it (--procs N / --gpus N: "
               f"{', '.join(map(str, counts[-3:]))})")
        raise UserError(f"train.batch_size = {bad[0]} cannot be split evenly over {procs} processes; {fix}")
