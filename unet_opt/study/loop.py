"""One worker's loop: ask, train, tell, until the study has enough trials, closing on the way the trials
that dead workers (killed processes, lost machines) left RUNNING."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from optuna.trial import TrialState

from unet_opt import progress, runtime
from unet_opt.study.context import SearchContext
from unet_opt.study.objective import run_trial
from unet_opt.study.storage import GRACE_SECONDS, count_finished, count_running

log = logging.getLogger(__name__)

MAX_FAILURES_IN_A_ROW = 5


@dataclass
class WorkerEnd:
    """How one worker's loop ended."""

    failed_out: bool = False
    stopped_reason: str = ""


def work(ctx: SearchContext) -> WorkerEnd:
    """Ask, train, tell, until finished plus running trials (of every worker and machine) reach the target.
    Trials that fail do not count, so the last worker standing replaces them."""
    outcome, failures, target, said_waiting = WorkerEnd(), 0, ctx.cfg.search.trials, False
    # the ETA from the average trial of this command: pruned ones (short) and complete ones (long) in the mix
    # they come in, not the last trial's length alone, which swings tenfold between a pruned and a complete one
    with progress.bar(target, "trials", "trial", initial=min(count_finished(ctx.study), target),
                      smoothing=0) as trials:
        while True:
            runtime.raise_pending_stop()
            ctx.ledger.close_stale()
            finished, running = count_finished(ctx.study), count_running(ctx.study)
            trials.update(min(finished, target) - trials.n)  # other workers' and machines' trials too
            if finished + running >= target:
                pending = ctx.ledger.unclaimed()
                if finished + running - len(pending) >= target:
                    return outcome
                if not said_waiting:  # a trial only just asked for, or one that a killed process never claimed
                    log.info("waiting for trial #%d to be claimed by its worker (at most %d s)", pending[0].number,
                             GRACE_SECONDS)
                said_waiting = True
                time.sleep(1)
                continue
            if time.time() > ctx.deadline:
                outcome.stopped_reason = f"timeout of {ctx.cfg.search.timeout:g} s reached"
                return outcome
            state = run_trial(ctx, finished + running + 1)
            if state is None:  # one too many: the check above ends the loop, or asks again if a trial failed
                continue
            failures = failures + 1 if state == TrialState.FAIL else 0
            if failures >= MAX_FAILURES_IN_A_ROW:
                outcome.failed_out = True
                outcome.stopped_reason = f"{failures} trials in a row failed; see their fail_reason"
                return outcome
