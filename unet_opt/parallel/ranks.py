"""The rank processes of a run on several devices, started once and kept for every trial of a worker.

`RankGroup(placement, cache)` starts `placement.procs` processes (one per GPU with NCCL, or CPU processes
with gloo) the first time it runs something; they join one process group and wait for work. `run(fit, job,
on_epoch)` sends every rank the same `FitJob` and has each call `fit(group, job, its data cache, on_epoch)`,
answers rank 0's epoch reports with `on_epoch` here (which talks to Optuna and MLflow), and returns rank
0's result. A trial then costs a message, not a process start, an import of torch and a load of its data:
each rank keeps a data cache of its own, over the same decode-once cache folder as the caller's.

A rank whose call raises reports it. When every rank has reported within a short grace, and none raised
inside training (`Group.in_lockstep`, where DDP's reductions may be left unmatched), they are all back at
the same point and keep serving. A rank that dies, that raised inside training, or that does not report
while another did (it waits in a collective the failed one never joined, or it hangs and the others time
out waiting for it) takes the whole group down: its processes are killed, `run` raises RankFailed naming
the rank at fault and the next call starts a new group. Between calls each rank lets go
of what the trial held (GPU memory back to the driver); its data stays loaded while its shape holds.
With one process everything runs in the caller's process, on the caller's data cache, with no process
group at all.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import shutil
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch
import torch.distributed as dist

from unet_opt import runtime
from unet_opt.core.data import DataCache
from unet_opt.core.group import Group
from unet_opt.core.train import Fit, FitJob, FitResult, OnEpoch, OnStep
from unet_opt.parallel.placement import Placement
from unet_opt.parallel.processes import children_ignoring, die_with_parent, ignore_stops, left_by_the_dead

COLLECTIVE_TIMEOUT = timedelta(minutes=10)  # a rank that stops answering ends the trial after this (PyTorch's default)
GRACE_SECONDS = 3.0  # after one rank's error, how long the others have to report theirs
STEP_REPORT_SECONDS = 0.25  # how often rank 0 tells the launcher of its progress within an epoch

RENDEZVOUS_PREFIX = "unet-opt-ranks-"  # + the launcher's pid: a folder per group, for the processes to meet


@dataclass(frozen=True)
class RankTask:
    """What every rank is sent for one run: the function that trains it, the job, and whether rank 0
    reports its epochs (answered: stop or go on) and its steps (not answered) to the launcher."""

    fit: Fit
    job: FitJob
    relay_epochs: bool
    relay_steps: bool


class RankFailed(RuntimeError):
    """One process of a multi-process run failed; the message names the rank and its error. `intact`:
    every rank came back from the failed call, so the group can serve the next one."""

    def __init__(self, message: str, intact: bool = False):
        super().__init__(message)
        self.intact = intact

    @property
    def out_of_memory(self) -> bool:
        """torch.OutOfMemoryError on a rank, or NCCL's own words for the same (`Cuda failure 'out of memory'`)."""
        return "OutOfMemoryError" in str(self) or "out of memory" in str(self).lower()


class RankGroup:
    """One worker's rank processes; use as a context manager, so that none outlives the worker."""

    def __init__(self, placement: Placement, cache: DataCache, start: bool = False,
                 timeout: timedelta = COLLECTIVE_TIMEOUT):
        """`cache`: the caller's data cache (runs in this process use it; rank processes make their own over
        its folder). `start`: start the processes now (they import torch while the caller goes on), not on
        first use. `timeout`: how long a rank waits for the others in a collective."""
        self.placement, self.cache, self.timeout = placement, cache, timeout
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.conns: list[Connection] = []
        self.rendezvous = ""
        self.starts = 0  # how many times the processes were started: 1 unless a failure restarted them
        if start and placement.procs > 1:
            self.start()

    def __enter__(self) -> RankGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def run(self, fit: Fit, job: FitJob, on_epoch: OnEpoch | None, on_step: OnStep | None = None) -> FitResult:
        """`fit` of `job` on every rank; rank 0's result."""
        if self.placement.procs == 1:
            return self.run_here(fit, job, on_epoch, on_step)
        if any(not p.is_alive() for p in self.processes):  # one died between trials
            self.close()
        if not self.processes:
            self.start()
        try:
            message = pickle.dumps(RankTask(fit, job, on_epoch is not None, on_step is not None))
            for conn in self.conns:
                conn.send_bytes(message)
            return self.collect(on_epoch, on_step)
        except RankFailed as e:
            if not e.intact:
                self.close()
            raise
        except BaseException:  # Ctrl-C, or on_epoch failed: the ranks are mid-trial, they cannot go on
            self.close()
            raise

    def run_here(self, fit: Fit, job: FitJob, on_epoch: OnEpoch | None, on_step: OnStep | None) -> FitResult:
        device = self.placement.main_device
        if device.type == "cuda":
            torch.cuda.set_device(device)  # a worker's kernels and caches go to its own GPU
        try:
            return fit(Group(device), job, self.cache, on_epoch, on_step)
        finally:
            release_memory(device)

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
        remove_stale_rendezvous()
        self.rendezvous = tempfile.mkdtemp(prefix=f"{RENDEZVOUS_PREFIX}{os.getpid()}-")
        with children_ignoring(signal.SIGINT):  # Ctrl-C is the launcher's to handle: it ends the ranks
            for rank in range(self.placement.procs):
                parent_end, child_end = context.Pipe()
                process = context.Process(target=rank_main, name=f"rank-{rank}",
                                          args=(rank, self.placement, f"file://{self.rendezvous}/store", child_end,
                                                self.cache.cache_dir, self.timeout))
                process.start()
                child_end.close()
                self.processes.append(process)
                self.conns.append(parent_end)
        self.starts += 1

    def collect(self, on_epoch: OnEpoch | None, on_step: OnStep | None = None) -> FitResult:
        """Serve rank 0's epoch reports (and pass on its step reports) until every rank has answered, or
        one failed."""
        waiting = dict(enumerate(self.conns))
        value, errors, deadline = None, {}, None
        while waiting:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            sentinels = {self.processes[rank].sentinel: rank for rank in waiting}
            ready = wait([*waiting.values(), *sentinels], timeout)
            if not ready:  # the grace is over: a rank is stuck where the failed one never came
                break
            for item in ready:
                rank = sentinels.get(item)
                if rank is not None:  # a process ended; its last message, if any, is read first
                    if rank in waiting and not waiting[rank].poll():
                        raise RankFailed(f"rank {rank} died ({describe_exit(self.processes[rank])})")
                    continue
                rank = self.conns.index(item)
                try:
                    kind, payload = pickle.loads(item.recv_bytes())
                except EOFError:
                    raise RankFailed(f"rank {rank} died ({describe_exit(self.processes[rank])})") from None
                if kind == "step":  # no answer: the rank does not wait for it
                    if on_step is not None:
                        on_step(*payload)
                    continue
                if kind == "epoch":
                    answer = pickle.dumps(bool(on_epoch(*payload)) if on_epoch is not None else False)
                    try:
                        item.send_bytes(answer)
                    except OSError:  # it died right after its report
                        raise RankFailed(f"rank {rank} died ({describe_exit(self.processes[rank])})") from None
                    continue
                del waiting[rank]
                if kind == "error":
                    errors[rank] = payload
                    deadline = deadline or time.monotonic() + GRACE_SECONDS
                elif rank == 0:
                    value = payload
        if errors:
            rank, (message, *_) = next(iter(errors.items()))
            if waiting and all(waited for *_, waited in errors.values()):  # they gave up on a silent one
                silent = " and ".join(map(str, waiting))
                raise RankFailed(f"rank {silent} stopped answering (hung or suspended): rank {rank} gave up "
                                 f"waiting for it in a collective after {self.timeout.total_seconds():g} s: {message}")
            every_rank_back = not waiting and all(clean for _, clean, _ in errors.values())
            raise RankFailed(f"rank {rank} failed: {message}", intact=every_rank_back)
        return value

    def close(self) -> None:
        """Kill the processes (they hold nothing worth saving between trials) and wait for them."""
        for process in self.processes:
            if process.is_alive():
                process.kill()
        for process in self.processes:
            process.join()
        for conn in self.conns:
            conn.close()
        self.processes, self.conns = [], []
        if self.rendezvous:
            shutil.rmtree(self.rendezvous, ignore_errors=True)
            self.rendezvous = ""


def launch(placement: Placement, fit: Fit, job: FitJob, on_epoch: OnEpoch | None, cache: DataCache) -> FitResult:
    """One run on fresh ranks (a benchmark, a test): `RankGroup.run` once."""
    with RankGroup(placement, cache) as ranks:
        return ranks.run(fit, job, on_epoch)


def remove_stale_rendezvous() -> None:
    """The rendezvous folders of killed launchers (SIGKILL leaves no time to remove them), by their pid."""
    for folder in left_by_the_dead(RENDEZVOUS_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)


def describe_exit(process: multiprocessing.process.BaseProcess) -> str:
    process.join(1)  # its exit code is known a moment after its connection closed
    code = process.exitcode
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def release_memory(device: torch.device) -> None:
    """What a finished trial held on a GPU goes back: tensors held in reference cycles, then the cached
    blocks. (Not on the CPU: there a full collection only costs time, a third of a second a trial.)"""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def rank_main(rank: int, placement: Placement, rendezvous: str, conn: Connection, cache_dir: Path | None,
              timeout: timedelta) -> None:
    """One rank: join the group, then run each job sent until the connection closes."""
    ignore_stops(signal.SIGINT)  # Ctrl-C is the launcher's to handle
    die_with_parent()
    runtime.setup(prefix=f"[rank {rank}] ")
    DataCache.says_folder_warnings = False
    runtime.setup_torch(placement.threads)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(placement.procs), LOCAL_RANK=str(rank))
    device = torch.device("cpu")
    if placement.device == "cuda":
        device = torch.device("cuda", placement.gpu_ids[rank])
        torch.cuda.set_device(device)
    dist.init_process_group(placement.backend, init_method=rendezvous, rank=rank, world_size=placement.procs,
                            timeout=timeout, device_id=device if device.type == "cuda" else None)
    group, cache = Group(device, rank, placement.procs), DataCache(cache_dir)  # the data stays for the next job
    while True:
        try:
            task: RankTask = pickle.loads(conn.recv_bytes())
        except EOFError:  # the launcher closed the group
            return
        on_epoch = relay_to(conn) if rank == 0 and task.relay_epochs else None
        on_step = relay_steps_to(conn) if rank == 0 and task.relay_steps else None
        group.out_of_step = False
        try:
            value = task.fit(group, task.job, cache, on_epoch, on_step)
            reply = ("result", value if rank == 0 else None)  # only rank 0's result travels
        except Exception as e:  # reported; an error amid the collectives leaves the group unusable, another not
            reply = ("error", (traceback.format_exception_only(e)[-1].strip(),
                               not (group.out_of_step or broke_the_group(e)), timed_out(e)))
            del e
        release_memory(device)
        conn.send_bytes(pickle.dumps(reply))


DISTRIBUTED_WORDS = ("gloo", "nccl", "timed out", "timeout", "connection", "pair closure", "process group")


def broke_the_group(error: Exception) -> bool:
    """Whether an error came from the process group itself (a timed-out or broken collective): then the
    ranks are out of step and must be restarted. Gloo reports these as plain RuntimeErrors."""
    text = str(error).lower()
    return isinstance(error, dist.DistError) or any(word in text for word in DISTRIBUTED_WORDS)


def timed_out(error: Exception) -> bool:
    """Whether a rank gave up waiting for another in a collective (gloo: "Timed out waiting 600000ms for recv";
    NCCL's watchdog: "... collective operation timeout"), rather than failing on its own."""
    text = str(error).lower()
    return "timed out" in text or "timeout" in text


def relay_to(conn: Connection) -> OnEpoch:
    def on_epoch(epoch: int, metrics: dict[str, float], best: float) -> bool:
        conn.send_bytes(pickle.dumps(("epoch", (epoch, metrics, best))))
        return pickle.loads(conn.recv_bytes())

    return on_epoch


def relay_steps_to(conn: Connection, every: float = STEP_REPORT_SECONDS) -> OnStep:
    """Step reports, a few a second at most (each is a message the launcher reads), and the epoch's last."""
    last = 0.0

    def on_step(done: int, steps: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= every or done == steps:
            last = now
            conn.send_bytes(pickle.dumps(("step", (done, steps))))

    return on_step
