"""The trial ledger on its own: a trial's life in an Optuna study and its MLflow runs, with no training."""

import socket

import optuna
import pytest
from optuna.trial import TrialState

from unet_opt.study.ledger import Outcome, TrialLedger
from unet_opt.study.states import DEAD_WORKER, INTERRUPTED, shown_state
from unet_opt.study.storage import open_storage
from unet_opt.tracking.tracker import Tracker


@pytest.fixture
def ledger(tmp_path) -> TrialLedger:
    storage = open_storage(f"sqlite:///{tmp_path}/studies.db")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    tracker = Tracker(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "s", tmp_path / "mlruns" / "artifacts")
    parent = tracker.open_parent(None, "s")
    return TrialLedger(study, storage, tracker, parent)


def run_of(ledger: TrialLedger, trial):
    return ledger.tracker.client.get_run(ledger.storage.get_trial(trial._trial_id).user_attrs["mlflow_run_id"])


def test_a_complete_trial_is_told_to_optuna_and_its_run_follows(ledger):
    trial = ledger.ask(target=3)
    run_id = ledger.open_run(trial, {"train.lr": 0.01}, {"seed": 1})
    run = ledger.tracker.client.get_run(run_id)
    # the run is the trial's: named, under the study's parent, RUNNING while the trial is
    assert run.info.run_name == "trial-0000" and run.data.tags["optuna.state"] == "RUNNING"
    assert run.data.tags["mlflow.parentRunId"] == ledger.parent_id and run.data.tags["optuna.trial"] == "0"
    ledger.finish(trial, Outcome(TrialState.COMPLETE, "max_epochs", 0.8, best_epoch=2, epochs_run=3),
                  {"best_val_dice": 0.8, "best_epoch": 2})
    frozen = ledger.storage.get_trial(trial._trial_id)
    assert frozen.state == TrialState.COMPLETE and frozen.value == 0.8
    assert frozen.user_attrs["stop_reason"] == "max_epochs" and frozen.user_attrs["epochs_run"] == 3
    run = run_of(ledger, trial)
    assert run.info.status == "FINISHED" and run.info.run_name == "trial-0000"
    assert run.data.tags["optuna.state"] == "COMPLETE" and run.data.metrics["best_val_dice"] == 0.8


@pytest.mark.parametrize("state, reason, name, status", [
    (TrialState.PRUNED, "pruned after epoch 1: bracket rung", "trial-0000 (pruned)", "FINISHED"),
    (TrialState.FAIL, "RuntimeError: boom", "trial-0000 (fail)", "FAILED"),
    (TrialState.FAIL, INTERRUPTED, "trial-0000 (interrupted)", "KILLED"),
])
def test_a_trial_that_did_not_complete_says_so_in_its_run_s_name_and_status(ledger, state, reason, name, status):
    trial = ledger.ask(target=3)
    ledger.open_run(trial, {}, {})
    ledger.finish(trial, Outcome(state, reason, epochs_run=1), {})
    frozen = ledger.storage.get_trial(trial._trial_id)
    assert frozen.state == state and shown_state(frozen) == name.split("(")[1].rstrip(")")
    run = run_of(ledger, trial)
    assert (run.info.run_name, run.info.status) == (name, status)
    assert run.data.tags["optuna.state"] == state.name and run.data.tags["optuna.state_reason"] == reason


def test_a_trial_one_too_many_goes_back_to_the_queue(ledger):
    first = ledger.ask(target=1)
    assert first is not None
    assert ledger.ask(target=1) is None  # trial 1 is not needed while trial 0 runs
    assert [t.state for t in ledger.study.trials] == [TrialState.RUNNING, TrialState.WAITING]


def test_a_dead_worker_s_trial_ends_fail_in_both_stores(ledger):
    trial = ledger.ask(target=2)
    ledger.open_run(trial, {}, {})
    ledger.storage.set_trial_user_attr(trial._trial_id, "worker", "elsewhere:1")  # not this machine's
    ledger.close_stale()  # a worker of another machine is judged by its heartbeat: it has one
    assert ledger.storage.get_trial(trial._trial_id).state == TrialState.RUNNING
    ledger.storage.set_trial_user_attr(trial._trial_id, "worker", f"{socket.gethostname()}:999999")
    ledger.close_stale()  # a process of this machine that is gone
    frozen = ledger.storage.get_trial(trial._trial_id)
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["fail_reason"] == DEAD_WORKER
    run = run_of(ledger, trial)
    assert (run.info.status, run.info.run_name) == ("FAILED", "trial-0000 (fail)")


def test_a_run_left_running_after_its_trial_ended_is_brought_in_line(ledger):
    trial = ledger.ask(target=2)
    ledger.open_run(trial, {}, {})
    ledger.study.tell(trial, 0.5)  # as if the process died between Optuna's tell and MLflow's end of run
    assert run_of(ledger, trial).info.status == "RUNNING"
    ledger.mirror_ended()
    run = run_of(ledger, trial)
    assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
