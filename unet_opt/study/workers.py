"""`--workers K`: K processes on this machine run the worker loop on one study and one parent run."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType

import optuna

from unet_opt import runtime
from unet_opt.config.paths import Paths
from unet_opt.config.schema import Config
from unet_opt.core.data import DataCache
from unet_opt.core.train import Fit
from unet_opt.parallel.placement import Placement
from unet_opt.parallel.processes import die_with_parent
from unet_opt.runs.runner import Runner
from unet_opt.study.context import SearchContext
from unet_opt.study.ledger import TrialLedger
from unet_opt.study.loop import MAX_FAILURES_IN_A_ROW, WorkerEnd, work
from unet_opt.study.pruning import make_pruner, make_sampler
from unet_opt.study.storage import open_storage, study_name
from unet_opt.tracking.tracker import Tracker
from unet_opt.tracking.writer import ArtifactWriter

log = logging.getLogger(__name__)
STOP_WAIT = 60.0  # seconds the stopped workers are given, all together, to record their trials and end


@dataclass(frozen=True)
class WorkerPlan:
    """What a worker process is started with (it opens its own storage and MLflow connections)."""

    cfg: Config
    paths: Paths
    parent_id: str
    deadline: float
    verbose: bool
    fit: Fit


def run_workers(plan: WorkerPlan, placements: list[Placement], ids: list[str]) -> WorkerEnd:
    """Start one worker process per placement and wait for them; their worker ids are added to `ids`."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    ready = [context.Event() for _ in placements]
    processes = [context.Process(target=worker_main, name=f"worker-{i}", args=(i, plan, placement, ready[i]))
                 for i, placement in enumerate(placements)]
    try:
        for p in processes:
            p.start()
            ids.append(f"{socket.gethostname()}:{p.pid}")
        while alive := [p for p in processes if p.is_alive()]:
            runtime.raise_pending_stop()
            multiprocessing.connection.wait([p.sentinel for p in alive], timeout=1.0)
            for p in (p for p in alive if (p.exitcode or 0) < 0):  # killed (out of memory...): said now, not at the end
                log.warning("%s died (killed by %s): a trial it was running is closed as `worker died` by the next "
                            "trial to start or the next command; workers still running: %d", p.name,
                            signal.Signals(-p.exitcode).name, sum(q.is_alive() for q in processes))
    except KeyboardInterrupt:
        # the stop is passed on (a worker that a terminal's Ctrl-C reached too ignores it). A worker still
        # starting has no trial to record: it is ended at once (a SIGINT would end it mid-import with a
        # traceback).
        started = [p for p, is_ready in zip(processes, ready) if is_ready.is_set()]
        starting = [p for p in processes if p.pid is not None and p not in started]
        for p in starting:
            p.kill()
        stop_workers(started, STOP_WAIT)
        for p in starting:  # killed, not stopped: never one that "did not stop"
            p.join()
        for p in (p for p in started if p.is_alive()):  # the trial it runs is closed as its worker died
            log.warning("%s did not stop within %g s of the stop; killed", p.name, STOP_WAIT)
        raise
    finally:
        for p in (p for p in processes if p.pid is not None):  # those started
            if p.is_alive():
                p.kill()
            p.join()
    outcome = WorkerEnd()
    codes = [p.exitcode for p in processes]
    outcome.failed_out = any(code == 1 for code in codes)
    if outcome.failed_out:
        outcome.stopped_reason = f"a worker stopped after {MAX_FAILURES_IN_A_ROW} trials in a row failed"
    elif any(code not in (0, 1) for code in codes):
        outcome.stopped_reason = f"worker exit codes {codes}"
    elif time.time() > plan.deadline:
        outcome.stopped_reason = f"timeout of {plan.cfg.search.timeout:g} s reached"
    return outcome


def stop_workers(processes: list[multiprocessing.process.BaseProcess], wait: float, clock=time.monotonic,
                 send_signal=os.kill) -> None:
    """Pass the stop on to the workers, and give them time to record their trials as interrupted: at
    most `wait` seconds in all, however many there are; the caller kills the rest."""
    for p in processes:
        if p.is_alive():
            send_signal(p.pid, signal.SIGINT)
    end = clock() + wait
    for p in processes:
        p.join(max(0.0, end - clock()))


def worker_main(index: int, plan: WorkerPlan, placement: Placement, ready: EventType) -> None:
    """One worker process: its own storage and MLflow connections, the shared study and parent run, a
    sampler seeded for this worker. It dies with the launching process, as the trial's ranks do."""
    die_with_parent()
    runtime.setup(plan.verbose, prefix=f"[w{index}] ")
    DataCache.says_folder_warnings = False
    runtime.handle_stop_signals(first_only=True)  # its launcher passes each stop on, and kills it if it must
    ready.set()  # from here a stop records the trial in progress
    try:
        outcome = search_as_worker(plan, placement)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if outcome.stopped_reason:
        log.info("stopped: %s", outcome.stopped_reason)
    raise SystemExit(1 if outcome.failed_out else 0)


def search_as_worker(plan: WorkerPlan, placement: Placement) -> WorkerEnd:
    cfg, paths = plan.cfg, plan.paths
    name = study_name(cfg)
    tracking_uri = paths.tracking_uri(cfg.search.tracking_uri)
    with Runner(paths, placement, plan.fit, keep_ranks=True,
                writer=ArtifactWriter.started(tracking_uri, placement.device)) as runner:
        runner.data(cfg)  # checked by the launcher; loaded here while the stores open
        storage = open_storage(paths.storage_url(cfg.search.storage))
        tracker = Tracker(tracking_uri, name, paths.artifacts)
        runner.use_tracker(tracker)
        study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(cfg),
                                  pruner=make_pruner(cfg))
        ledger = TrialLedger(study, storage, tracker, plan.parent_id)
        return work(SearchContext.open(cfg, ledger, runner, plan.deadline))
