"""One worker's loop: ask, train, tell, until the study has enough trials; and the clean-up of trials
that dead workers (killed processes, lost machines) left RUNNING."""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from unet_opt import progress, runtime
from unet_opt.parallel.processes import is_dead_here
from unet_opt.study.context import SearchContext
from unet_opt.study.objective import run_trial
from unet_opt.study.storage import DEAD_WORKER, GRACE_SECONDS, count_finished, count_running
from unet_opt.tracking.tracker import Tracker

log = logging.getLogger(__name__)

MAX_FAILURES_IN_A_ROW = 5


@dataclass
class Outcome:
    """How one worker's loop ended."""

    failed_out: bool = False
    stopped_reason: str = ""


def work(ctx: SearchContext) -> Outcome:
    """Ask, train, tell, until finished plus running trials (of every worker and machine) reach the target.
    Trials that fail do not count, so the last worker standing replaces them."""
    outcome, failures, target, said_waiting = Outcome(), 0, ctx.cfg.search.trials, False
    with progress.bar(target, "trials", "trial", initial=min(count_finished(ctx.study), target)) as trials:
        while True:
            runtime.raise_pending_stop()
            close_stale_trials(ctx.study, ctx.storage, ctx.tracker)
            finished, running = count_finished(ctx.study), count_running(ctx.study)
            trials.update(min(finished, target) - trials.n)  # other workers' and machines' trials too
            if finished + running >= target:
                pending = unclaimed(ctx.study)
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


def close_stale_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, tracker: Tracker) -> None:
    """Trials of dead workers end FAIL here and in MLflow: at once for a dead process on this machine,
    after the grace period without a heartbeat for any other."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        if is_dead_here(t.user_attrs.get("worker")) or is_never_claimed(t):
            storage.set_trial_user_attr(t._trial_id, "fail_reason", DEAD_WORKER)  # before: finished trials are frozen
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    optuna.storages.fail_stale_trials(study)  # the heartbeat rule; Optuna records no reason for these
    for t in running:
        if storage.get_trial(t._trial_id).state == TrialState.FAIL:
            if "mlflow_run_id" in t.user_attrs:
                tracker.end_if_running(t.user_attrs["mlflow_run_id"], "FAILED",
                                       {"optuna.state": "FAIL", "optuna.state_reason": DEAD_WORKER})
                tracker.name_by_state(t.user_attrs["mlflow_run_id"], t.number, "fail")
            log.warning("trial #%d was left running by a dead worker; marked FAIL", t.number)


def is_never_claimed(trial: optuna.trial.FrozenTrial) -> bool:
    """A RUNNING trial that no worker claimed within the grace period: its process was killed between
    asking Optuna for it and recording itself as its worker, so no heartbeat will ever come from it."""
    age = datetime.datetime.now() - (trial.datetime_start or datetime.datetime.now())
    return "worker" not in trial.user_attrs and age.total_seconds() > GRACE_SECONDS


def unclaimed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials with no worker yet: just asked for by a live worker, or left by a killed one (closed
    once the grace period is over). Whether the target is reached waits for them to be one or the other."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if "worker" not in t.user_attrs]
