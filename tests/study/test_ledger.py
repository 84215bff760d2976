"""The trial ledger on its own: a trial's life in an Optuna study and its MLflow runs, with no training."""

import os
import signal
import socket
import time

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from unet_opt import runtime
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
    for epoch, best_so_far in ((1, 0.2), (2, 0.4), (3, 0.4)):  # it trained 3 epochs, its best the 2nd
        trial.report(best_so_far, epoch)
    ledger.storage.set_trial_user_attr(trial._trial_id, "worker", "elsewhere:1")  # not this machine's
    ledger.close_stale()  # a worker of another machine is judged by its heartbeat: it has one
    assert ledger.storage.get_trial(trial._trial_id).state == TrialState.RUNNING
    ledger.storage.set_trial_user_attr(trial._trial_id, "worker", f"{socket.gethostname()}:999999")
    ledger.close_stale()  # a process of this machine that is gone
    frozen = ledger.storage.get_trial(trial._trial_id)
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["fail_reason"] == DEAD_WORKER
    assert (frozen.user_attrs["best_epoch"], frozen.user_attrs["epochs_run"]) == (2, 3)  # `report`'s "ran"
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


@pytest.mark.parametrize("then", ["recorded at once", "process killed"])
def test_a_run_that_its_trial_never_learnt_of_ends_as_the_trial_did(ledger, monkeypatch, caplog, then):
    """A stop between the trial's run being made and the trial's link to it (`open_run`): the trial ended
    `interrupted` but its run stayed RUNNING for good, though each later command said it had closed it (the
    whole-suite kill test hit this at one of its moments). Recorded at once, as a stop is, it ends with its
    trial, without a warning; left by a killed process, the next command ends it."""
    trial = ledger.ask(target=3)
    link = optuna.Trial.set_user_attr

    def stopped_before_the_link(self, key, value):
        if key == "mlflow_run_id":
            raise KeyboardInterrupt
        link(self, key, value)

    monkeypatch.setattr(optuna.Trial, "set_user_attr", stopped_before_the_link)
    with pytest.raises(KeyboardInterrupt) as stop:
        ledger.open_run(trial, {}, {})
    if then == "recorded at once":
        ledger.interrupted(trial, stop.value)  # as `run_trial` records it
    else:  # the trial was closed as its worker died, its run left as it was: what the next command finds
        ledger.storage.set_trial_user_attr(trial._trial_id, "fail_reason", INTERRUPTED)
        ledger.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        ledger.mirror_ended()
    assert "mlflow_run_id" not in ledger.storage.get_trial(trial._trial_id).user_attrs
    assert ("left RUNNING" in caplog.text) == (then == "process killed")
    [run] = ledger.tracker.client.search_runs([ledger.tracker.experiment_id], "tags.`optuna.trial` = '0'")
    assert (run.info.status, run.info.run_name) == ("KILLED", "trial-0000 (interrupted)")
    assert run.data.tags["optuna.state_reason"] == INTERRUPTED


@pytest.mark.parametrize("store", ["optuna", "mlflow"])
def test_a_stop_that_cut_a_store_s_read_does_not_lock_the_trial_s_record(tmp_path, ledger, store):
    """A stop raised just after one of a store's SELECTs, inside its transaction (a Ctrl-C at a trial's
    start, or as an epoch's metrics are logged): the stopped frames kept the transaction open, and SQLite's
    lock made the trial's record in that store wait out the timeout (60 s for the study storage in the
    product, 1 s here; 20 s for MLflow's), then fail."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/studies.db",
                                         engine_kwargs={"connect_args": {"timeout": 1}})
    # the fixture's stores, the study storage opened with a 1-s lock timeout
    ledger = TrialLedger(optuna.load_study(study_name="s", storage=storage), storage, ledger.tracker, ledger.parent_id)
    trial = ledger.ask(target=3)
    run_id = ledger.open_run(trial, {}, {})
    engine = storage.engine if store == "optuna" else ledger.tracker.client._tracking_client.store.engine
    armed = [True]

    def stop_after_a_select(conn, cursor, statement, *args):
        if armed[0] and statement.lstrip().upper().startswith("SELECT"):
            armed[0] = False
            raise KeyboardInterrupt()

    sqlalchemy.event.listen(engine, "after_cursor_execute", stop_after_a_select)
    with pytest.raises(KeyboardInterrupt):
        try:
            if store == "optuna":
                trial.set_user_attr("worker", "w")
            else:
                ledger.tracker.log_metrics(run_id, {"val_dice": 0.5}, step=1)
        except KeyboardInterrupt as stop:
            ledger.interrupted(trial, stop)
            raise
    assert not armed[0]
    frozen = storage.get_trial(trial._trial_id)
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["fail_reason"] == INTERRUPTED
    run = run_of(ledger, trial)
    assert (run.info.status, run.info.run_name) == ("KILLED", "trial-0000 (interrupted)")


def test_a_stop_while_optuna_creates_the_trial_leaves_it_recorded_interrupted(ledger, monkeypatch):
    """A real Ctrl-C that arrives inside `study.ask`, once the trial exists but before `ask` returns it: it
    was left RUNNING, known to no process, until a later command closed it as dead after 30 s."""
    create = ledger.study._storage.create_new_trial

    def create_then_stop(*args, **kwargs):
        trial_id = create(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the handler runs here, inside `ask`, unless held
        return trial_id

    monkeypatch.setattr(ledger.study._storage, "create_new_trial", create_then_stop)
    # the CLI's handlers, set here even where SIGINT is ignored (a shell's background job, as CI may run the suite)
    before = {sig: signal.signal(sig, runtime.on_stop_signal) for sig in runtime.STOP_SIGNALS}
    try:
        with pytest.raises(KeyboardInterrupt):
            ledger.ask(target=3)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        runtime.stop_signal = None
    [trial] = ledger.study.get_trials(deepcopy=False)
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == INTERRUPTED


@pytest.mark.parametrize("dies_in", ["set_tags", "rename", "end"])
def test_a_process_killed_while_a_trial_s_run_ends_leaves_it_for_the_next_command_to_end(ledger, monkeypatch,
                                                                                         dies_in):
    """The run's end is its last write: killed after it (a second Ctrl-C), the run was KILLED under its plain
    name for good, since only RUNNING runs are brought in line later."""
    trial = ledger.ask(target=3)
    ledger.open_run(trial, {}, {})

    def killed(*args, **kwargs):
        raise SystemExit(-9)

    with monkeypatch.context() as patched:
        patched.setattr(ledger.tracker, dies_in, killed)
        with pytest.raises(SystemExit):
            ledger.fail(trial, INTERRUPTED)
    ledger.mirror_ended()  # what the next command does
    run = run_of(ledger, trial)
    assert (run.info.status, run.info.run_name) == ("KILLED", "trial-0000 (interrupted)")
    assert run.data.tags["optuna.state_reason"] == INTERRUPTED


def test_what_a_stop_cut_is_let_go_once_however_many_handlers_it_is_raised_through(monkeypatch):
    # a stop in training is caught by the trial's handler, its caller's, then the search's: one collection
    collected = []
    monkeypatch.setattr(runtime.gc, "collect", lambda: collected.append(1))
    try:
        raise KeyboardInterrupt()
    except KeyboardInterrupt as stop:
        for _ in range(3):
            runtime.release_what_a_stop_cut(stop)
    assert collected == [1]


def test_a_trial_stopped_mid_epoch_or_running_shows_the_epochs_it_reported(ledger):
    """Found by a review: `report` said "ran 0" for a trial stopped in its 9th epoch, and nothing for a
    running one: its training returned nothing to count, but the trial reported each epoch to Optuna."""
    from unet_opt.study.summary import trial_record

    trial = ledger.ask(target=2)
    ledger.open_run(trial, {}, {})
    for epoch, best_so_far in ((1, 0.1), (2, 0.3), (3, 0.3)):
        trial.report(best_so_far, epoch)
    shown = trial_record(ledger.storage.get_trial(trial._trial_id))
    assert (shown["state"], shown["best_epoch"], shown["epochs_run"]) == ("running", 2, 3)
    ledger.interrupted(trial, KeyboardInterrupt())  # in its 4th epoch: the training returned no result
    shown = trial_record(ledger.storage.get_trial(trial._trial_id))
    assert (shown["state"], shown["best_epoch"], shown["epochs_run"]) == ("interrupted", 2, 3)
