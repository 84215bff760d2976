"""A trial's life in both stores, written here and nowhere else: asked for and claimed, its MLflow run
opened, finished (COMPLETE or PRUNED, with its value), failed (with its reason: an error, `interrupted`,
a dead worker), sent back to the queue; and, when a command opens a study, each ended trial's MLflow run
brought in line with it. Optuna decides (its state counts the trials), MLflow follows.

The words for a trial's state are `states.shown_state`'s, here as in the terminal, the study's note,
`report` and `studies`.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from unet_opt import runtime
from unet_opt.parallel.processes import is_dead_here, worker_id
from unet_opt.study.states import DEAD_WORKER, FINISHED, INTERRUPTED, epochs_reported, reason_of, shown_state
from unet_opt.study.storage import GRACE_SECONDS
from unet_opt.tracking.tracker import Tracker

log = logging.getLogger(__name__)

STATE_TAG, REASON_TAG = "optuna.state", "optuna.state_reason"
MLFLOW_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "FINISHED", TrialState.FAIL: "FAILED"}


def mlflow_status(trial: FrozenTrial) -> str:
    """FINISHED for a complete or pruned trial, KILLED for an interrupted one, FAILED otherwise."""
    return "KILLED" if shown_state(trial) == INTERRUPTED else MLFLOW_STATUS.get(trial.state, "FAILED")


def is_surplus(study: optuna.Study, number: int, target: int) -> bool:
    """Trial `number` is not needed when the trials numbered before it, finished or running, already reach
    `target`. Counting by number settles a race of two workers that both saw room for one more trial."""
    ahead = [t for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)) if t.number < number]
    return len(ahead) >= target


def is_never_claimed(trial: FrozenTrial) -> bool:
    """A RUNNING trial that no worker claimed within the grace period: its process was killed between
    asking Optuna for it and recording itself as its worker, so no heartbeat will ever come from it."""
    age = datetime.datetime.now() - (trial.datetime_start or datetime.datetime.now())
    return "worker" not in trial.user_attrs and age.total_seconds() > GRACE_SECONDS


@dataclass(frozen=True)
class Outcome:
    """How a trial's training ended: its state, its value (COMPLETE only), why, and its epochs."""

    state: TrialState
    reason: str
    value: float | None = None
    best_epoch: int = 0
    epochs_run: int = 0


class TrialLedger:
    """The trials of one study, in its Optuna storage and its MLflow experiment (under `parent_id`)."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage, tracker: Tracker,
                 parent_id: str = ""):
        self.study, self.storage, self.tracker, self.parent_id = study, storage, tracker, parent_id

    def ask(self, target: int) -> optuna.Trial | None:
        """A new trial, claimed by this process (its worker id: a killed worker's trial is then found by its
        pid on this machine, and by its missing heartbeat from any other); None when it turned out to be one
        too many (another worker asked at the same moment): it goes back to Optuna's queue as WAITING, to be
        the first trial that a later, larger --trials runs."""
        trial = None
        try:
            with runtime.stops_held():  # a stop inside `ask` would leave its new trial RUNNING, known to no one
                trial = self.study.ask()
            if is_surplus(self.study, trial.number, target):
                self.storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
                return None
            trial.set_user_attr("worker", worker_id())
        except KeyboardInterrupt as stop:  # asked for but not claimed yet: no other worker would ever close it
            if trial is not None:
                self.interrupted(trial, stop)
            raise
        return trial

    def open_run(self, trial: optuna.Trial, params: dict[str, Any], tags: dict[str, Any]) -> str:
        """The trial's MLflow run, `trial-0007`, under the study's parent run, linked from the trial."""
        run_id = self.tracker.start_run(f"trial-{trial.number:04d}", params, {
            "mlflow.parentRunId": self.parent_id, "optuna.study": self.study.study_name, "optuna.trial": trial.number,
            STATE_TAG: "RUNNING", **tags})
        trial.set_user_attr("mlflow_run_id", run_id)
        return run_id

    def finish(self, trial: optuna.Trial, outcome: Outcome, run_metrics: dict[str, float]) -> None:
        """Record how the trial ended: in Optuna first (it decides the count), then in its MLflow run, whose
        `run_metrics` (`best_<metric>`, `best_epoch`: the trial's value as a column of the runs table) are
        logged at its best epoch. A FAIL goes through `fail`."""
        if outcome.state == TrialState.FAIL:
            self.fail(trial, outcome.reason, (outcome.best_epoch, outcome.epochs_run))
            return
        for key, value in (("stop_reason", outcome.reason), ("best_epoch", outcome.best_epoch),
                           ("epochs_run", outcome.epochs_run)):
            trial.set_user_attr(key, value)
        self.study.tell(trial, outcome.value if outcome.state == TrialState.COMPLETE else None, state=outcome.state)
        run_id = trial.user_attrs["mlflow_run_id"]
        if run_metrics:
            self.tracker.log_metrics(run_id, run_metrics, step=outcome.best_epoch)
        self.mirror(self.storage.get_trial(trial._trial_id))

    def fail(self, trial: optuna.Trial | FrozenTrial, reason: str, epochs: tuple[int, int] = (0, 0)) -> None:
        """The trial FAIL with its reason, in Optuna if it is still running there, then in its MLflow run
        (KILLED when `reason` is `interrupted`). `epochs`: (best epoch, epochs run), when it trained."""
        trial_id = trial._trial_id
        frozen = self.storage.get_trial(trial_id)
        if frozen.state == TrialState.RUNNING:  # finished trials are frozen
            self.storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            # where the training could not say (stopped or killed mid-epoch): what the trial reported
            for key, value in zip(("best_epoch", "epochs_run"), epochs if epochs[1] else epochs_reported(frozen)):
                self.storage.set_trial_user_attr(trial_id, key, value)
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        self.mirror(self.storage.get_trial(trial_id))

    def interrupted(self, trial: optuna.Trial, stop: KeyboardInterrupt, epochs: tuple[int, int] = (0, 0)) -> None:
        """`fail` as `interrupted` by `stop`, once what the stop cut is let go (see `release_after`)."""
        self.release_after(stop)
        self.fail(trial, INTERRUPTED, epochs)

    def release_after(self, stop: KeyboardInterrupt) -> None:
        """Before the stores are written after a stop: the storage transaction that it cut is let go
        (`runtime.release_what_a_stop_cut`), and this thread's storage session with it, which the stop may
        have left inside one. Without this, a stop at a trial's start could hang the process for 60 s."""
        runtime.release_what_a_stop_cut(stop)
        if isinstance(self.storage, optuna.storages.RDBStorage):
            self.storage.scoped_session.remove()

    def mirror(self, trial: FrozenTrial, run_id: str = "") -> None:
        """The MLflow run of an ended trial made to say what Optuna says: its state and reason as tags, its
        name (`trial-0007 (pruned)`, `(fail)`, `(interrupted)`: told apart from complete trials in the runs
        table as it opens) and its status. A run that is gone (deleted by its user) is left alone. The run is
        `run_id`, else the one the trial names, else the one found by its tags: a stop or a kill between the
        run's making and the trial's link to it (`open_run`) leaves a run that the trial does not name."""
        if not trial.state.is_finished():
            return
        run_id = run_id or trial.user_attrs.get("mlflow_run_id") or self.unnamed_run_of(trial)
        if not run_id:
            return
        name = f"trial-{trial.number:04d} ({shown_state(trial)})" if trial.state != TrialState.COMPLETE else ""
        self.tracker.end_if_running(run_id, mlflow_status(trial),
                                    {STATE_TAG: trial.state.name, REASON_TAG: reason_of(trial)}, name)

    def unnamed_run_of(self, trial: FrozenTrial) -> str:
        """The RUNNING run of this study tagged with the trial's number (made, but never linked to it); ""."""
        runs = [r for r in self.tracker.running_runs(trial.number)
                if r.data.tags.get("optuna.study") == self.study.study_name]
        return runs[0].info.run_id if runs else ""

    def close_stale(self) -> None:
        """Trials of dead workers end FAIL here and in MLflow: at once for a dead process on this machine,
        after the grace period without a heartbeat for any other."""
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for t in running:
            if is_dead_here(t.user_attrs.get("worker")) or is_never_claimed(t):
                self.fail(t, DEAD_WORKER)
        optuna.storages.fail_stale_trials(self.study)  # the heartbeat rule; Optuna records no reason for these
        for t in running:
            ended = self.storage.get_trial(t._trial_id)
            if ended.state == TrialState.FAIL:
                self.mirror(ended)
                log.warning("trial #%d was left running by a dead worker; marked fail", t.number)

    def mirror_ended(self) -> None:
        """Trial runs still RUNNING in MLflow whose trial has ended in Optuna end as the trial did: a process
        killed between Optuna's `tell` and MLflow's end of run left MLflow behind."""
        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        for run in self.tracker.running_runs():
            tags = run.data.tags
            if tags.get("optuna.study") != self.study.study_name or not tags.get("optuna.trial", "").isdigit():
                continue
            trial = trials.get(int(tags["optuna.trial"]))
            if trial is None or not trial.state.is_finished():
                continue
            self.mirror(trial, run.info.run_id)
            log.warning("trial #%d's MLflow run was left RUNNING after the trial ended %s; closed", trial.number,
                        shown_state(trial))

    def unclaimed(self) -> list[FrozenTrial]:
        """RUNNING trials with no worker yet: just asked for by a live worker, or left by a killed one (closed
        once the grace period is over). Whether the target is reached waits for them to be one or the other."""
        return [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if "worker" not in t.user_attrs]
